"""Read side: what users look at after they changed something (served from the replica).

Lists are keyset pages: ``{"items": [...], "next_cursor": str | None}``. A cursor is opaque
to callers (base64url of the last key of the page) and only ever continues a list forward.
Filters narrow a list; a filter that names nothing yields an empty list, not an error.
A filter whose value has a form (a code, a status, a time) refuses a value of another form
(422 naming the parameter); an empty code or text filter is no filter.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

from shared_lib.domain.errors import InvalidRequest
from shared_lib.domain.model import TEXT_MAX, OrderStatus, check_code, unsafe_character
from shared_lib.services.guard import Deps
from shared_lib.services.ports import (
    MovementFilter,
    OrderFilter,
    OrderRecord,
    ReadModel,
    StockStore,
    TimeRange,
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
Item = TypeVar("Item")
ANY_TIME = TimeRange()
# RFC 3339, section 5.6 `date-time`: "T" and "Z" may be lower case; the offset is required
RFC_3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def order_view(deps: Deps, order_id: str) -> dict[str, Any] | None:
    order = deps.reads.run(lambda store: store.order(order_id))
    return order.as_dict() if order is not None else None


def orders_list(
    deps: Deps,
    page: Page,
    *,
    status: OrderStatus | None = None,
    warehouse: str | None = None,
    customer: str | None = None,
    created: TimeRange = ANY_TIME,
) -> dict[str, Any]:
    """Orders, newest first, each as order_view shows it. The key is (created_at, order_id):
    a group commit places a whole batch at one instant."""
    where = OrderFilter(status, warehouse, customer, created)
    after = _after_order(page.cursor)

    def key(record: OrderRecord) -> tuple[str, str]:
        return record.created_at.isoformat(timespec="microseconds"), record.order.order_id

    return _page(
        deps,
        lambda store, n: store.orders_page(where, after, n),
        page,
        lambda record: record.order.as_dict(),
        key,
    )


# ---- query parameters -----------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Page:
        """`?limit=&cursor=`: limit 1..1000 (default 100, when it is absent; an empty one is
        not an integer); 422 names the bad parameter."""
        raw = query.get("limit")
        limit = DEFAULT_LIMIT
        if raw is not None:
            try:
                limit = int(raw)
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_LIMIT:
                raise InvalidRequest("limit", f"must be an integer from 1 to {MAX_LIMIT}")
        return cls(limit, query.get("cursor") or None)


def code_filter(query: Mapping[str, str], name: str, max_len: int) -> str | None:
    """An optional sku/warehouse filter: absent or empty means no filter."""
    raw = query.get(name)
    return check_code(name, raw, max_len) if raw else None


def status_filter(query: Mapping[str, str]) -> OrderStatus | None:
    """`?status=`: one of the order statuses (an empty value is not one)."""
    raw = query.get("status")
    if raw is None:
        return None
    try:
        return OrderStatus(raw)
    except ValueError:
        names = ", ".join(status.value for status in OrderStatus)
        raise InvalidRequest("status", f"must be one of {names}") from None


def text_filter(query: Mapping[str, str], name: str) -> str | None:
    """An optional customer/reference filter (an exact value): absent or empty means none."""
    raw = query.get(name)
    if not raw:
        return None
    limit = TEXT_MAX[name]
    if len(raw) > limit or unsafe_character(raw):
        raise InvalidRequest(name, f"must be at most {limit} characters, no control characters")
    return raw


def time_range(query: Mapping[str, str], start: str, end: str) -> TimeRange:
    """`?<start>=&<end>=`: RFC 3339 times, start inclusive and end exclusive; start < end."""
    low, high = _instant(query, start), _instant(query, end)
    if low is not None and high is not None and low[1] >= high[1]:
        raise InvalidRequest(end, f"must be later than {start}")
    return TimeRange(low[0] if low else None, high[0] if high else None)


def _instant(query: Mapping[str, str], name: str) -> tuple[datetime, tuple[datetime, str]] | None:
    """An RFC 3339 time as the stores keep it (naive UTC, microseconds), and the exact time
    to compare bounds by. Digits beyond the microsecond round up: a stored time is then below
    the bound exactly when it was below the given one, inclusive start and exclusive end."""
    raw = query.get(name)
    if raw is None:
        return None
    found = RFC_3339.fullmatch(raw)
    try:
        if found is None:
            raise ValueError(raw)
        year, month, day, hour, minute, second, fraction, sign, off_h, off_m = found.groups()
        offset = timedelta()
        if sign is not None:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError(raw)
            offset = (1 if sign == "+" else -1) * timedelta(hours=int(off_h), minutes=int(off_m))
        digits = fraction or ""
        beyond = digits[6:].rstrip("0")
        moment = datetime(
            *map(int, (year, month, day, hour, minute, second)), tzinfo=timezone(offset)
        )
        utc = (moment + timedelta(microseconds=int(digits[:6].ljust(6, "0")))).astimezone(UTC)
        exact = utc.replace(tzinfo=None)
        return exact + timedelta(microseconds=1 if beyond else 0), (exact, beyond)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            name, "must be an RFC 3339 time with its offset, e.g. 2026-11-30T08:00:00Z"
        ) from None


def encode_cursor(*key: str | int) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *types: type) -> tuple[Any, ...] | None:
    """The key a cursor carries, checked against the expected types; 422 on anything else."""
    if cursor is None:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        key = None
    valid = (
        isinstance(key, list)
        and len(key) == len(types)
        and all(type(k) is t for k, t in zip(key, types, strict=True))
    )
    if not valid:
        raise InvalidRequest("cursor", "is not a cursor this list handed out")
    return tuple(key)


def _after_pair(cursor: str | None) -> tuple[str, str] | None:
    key = decode_cursor(cursor, str, str)
    return (key[0], key[1]) if key else None


def _after_order(cursor: str | None) -> tuple[datetime, str] | None:
    key = decode_cursor(cursor, str, str)
    if key is None:
        return None
    try:
        at = datetime.fromisoformat(key[0])
    except ValueError:
        at = None
    if at is None or at.tzinfo is not None:
        raise InvalidRequest("cursor", "is not a cursor this list handed out")
    return at, key[1]


def _page(
    deps: Deps,
    fetch: Callable[[ReadModel, int], Sequence[Item]],
    page: Page,
    show: Callable[[Item], dict[str, Any]],
    key: Callable[[Item], tuple[str | int, ...]],
) -> dict[str, Any]:
    """One more row than asked tells whether another page exists."""
    rows = deps.reads.run(lambda store: list(fetch(store, page.limit + 1)))
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    return {
        "items": [show(row) for row in rows],
        "next_cursor": encode_cursor(*key(rows[-1])) if more else None,
    }


# ---- catalog ----------------------------------------------------------------------------


def product_view(deps: Deps, sku: str) -> dict[str, Any] | None:
    product = deps.reads.run(lambda store: store.product(sku))
    return product.as_dict() if product is not None else None


def products_list(deps: Deps, page: Page) -> dict[str, Any]:
    after = decode_cursor(page.cursor, str)
    after_sku = after[0] if after else None
    return _page(
        deps,
        lambda store, n: store.products_page(after_sku, n),
        page,
        lambda p: p.as_dict(),
        lambda p: (p.sku,),
    )


def warehouse_view(deps: Deps, code: str) -> dict[str, Any] | None:
    warehouse = deps.reads.run(lambda store: store.warehouse(code))
    return warehouse.as_dict() if warehouse is not None else None


def warehouses_list(deps: Deps, page: Page) -> dict[str, Any]:
    after = decode_cursor(page.cursor, str)
    after_code = after[0] if after else None
    return _page(
        deps,
        lambda store, n: store.warehouses_page(after_code, n),
        page,
        lambda w: w.as_dict(),
        lambda w: (w.code,),
    )


# ---- stock ------------------------------------------------------------------------------


def levels_list(
    deps: Deps, page: Page, *, warehouse: str | None = None, sku: str | None = None
) -> dict[str, Any]:
    """Balances by (warehouse, sku), optionally of one warehouse and/or one sku."""
    after = _after_pair(page.cursor)
    return _page(
        deps,
        lambda store, n: store.levels_where(warehouse, sku, after, n),
        page,
        lambda lv: lv.as_dict(),
        lambda lv: (lv.warehouse, lv.sku),
    )


def sku_levels(deps: Deps, sku: str) -> dict[str, Any] | None:
    """One product's balance in every warehouse and in total; None for an unknown sku."""

    def read(store: StockStore) -> list[Any] | None:
        if store.product(sku) is None:
            return None
        levels, after = [], None
        while page := store.levels_where(None, sku, after, MAX_LIMIT):
            levels.extend(page)
            after = (page[-1].warehouse, page[-1].sku)
        return levels

    levels = deps.reads.run(read)
    if levels is None:
        return None
    on_hand = sum(lv.on_hand for lv in levels)
    reserved = sum(lv.reserved for lv in levels)
    return {
        "sku": sku,
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "levels": [lv.as_dict() for lv in levels],
    }


def low_stock_list(deps: Deps, page: Page, *, warehouse: str | None = None) -> dict[str, Any]:
    """Balances at or below their product's reorder point (tracked products only)."""
    after = _after_pair(page.cursor)
    return _page(
        deps,
        lambda store, n: store.low_stock_page(warehouse, after, n),
        page,
        lambda row: {**row[0].as_dict(), "reorder_point": row[1]},
        lambda row: (row[0].warehouse, row[0].sku),
    )


def movements_list(
    deps: Deps,
    page: Page,
    *,
    sku: str | None = None,
    warehouse: str | None = None,
    reference: str | None = None,
    created: TimeRange = ANY_TIME,
) -> dict[str, Any]:
    """Ledger rows, newest first (the ledger's order: by id)."""
    where = MovementFilter(sku, warehouse, reference, created)
    before = decode_cursor(page.cursor, int)
    before_id = before[0] if before else None
    return _page(
        deps,
        lambda store, n: store.movements_page(where, before_id, n),
        page,
        lambda m: m.as_dict(),
        lambda m: (m.id,),
    )
