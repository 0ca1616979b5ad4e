"""Read side: what users look at after they changed something (served from the replica).

Lists are keyset pages: ``{"items": [...], "next_cursor": str | None}``. A cursor is opaque
to callers (base64url of the last key of the page) and only ever continues a list forward.
Filters narrow a list; a filter that names nothing yields an empty list, not an error.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shared_lib.domain.errors import InvalidRequest
from shared_lib.domain.model import check_code
from shared_lib.services.guard import Deps
from shared_lib.services.ports import ReadModel, StockStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
Item = TypeVar("Item")


def order_view(deps: Deps, order_id: str) -> dict[str, Any] | None:
    order = deps.reads.run(lambda store: store.order(order_id))
    return order.as_dict() if order is not None else None


# ---- query parameters -----------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Page:
        """`?limit=&cursor=`: limit 1..1000 (default 100); 422 names the bad parameter."""
        raw = query.get("limit")
        limit = DEFAULT_LIMIT
        if raw not in (None, ""):
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
    deps: Deps, page: Page, *, sku: str | None = None, warehouse: str | None = None
) -> dict[str, Any]:
    """Ledger rows, newest first."""
    before = decode_cursor(page.cursor, int)
    before_id = before[0] if before else None
    return _page(
        deps,
        lambda store, n: store.movements_page(sku, warehouse, before_id, n),
        page,
        lambda m: m.as_dict(),
        lambda m: (m.id,),
    )
