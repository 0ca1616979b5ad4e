"""Values, commands and the rules that turn a command into planned stock changes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from shared_lib.domain.errors import InvalidOrderState, InvalidRequest
from shared_lib.domain.trace import TraceContext

CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
SKU_MAX = 64
WAREHOUSE_MAX = 32
ORDER_ID_MAX = 64
MAX_LINES = 500
MAX_QTY = 1_000_000_000
TEXT_MAX = {"reason": 200, "reference": 100, "customer": 100, "name": 200, "unit": 16}
# Characters free text may not hold: C0 and C1 controls (NUL, escapes, new lines) and the
# bidirectional marks, overrides and isolates that reorder what a reader sees (U+202E).
UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def unsafe_character(value: str) -> str | None:
    """The first character free text may not hold, as U+XXXX; None when there is none."""
    found = UNSAFE_TEXT.search(value)
    return f"U+{ord(found.group()):04X}" if found else None


def utcnow() -> datetime:
    """Naive UTC: what every store column holds."""
    return datetime.now(UTC).replace(tzinfo=None)


def check_code(field_name: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(field_name, "must be a non-empty string")
    if len(value) > max_len or not CODE_PATTERN.fullmatch(value):
        raise InvalidRequest(
            field_name, f"must be 1..{max_len} characters of letters, digits and . _ : -"
        )
    return value


def check_text(field_name: str, value: Any, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(field_name, "is required")
        return None
    limit = TEXT_MAX[field_name.rsplit(".", 1)[-1]]
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRequest(field_name, f"must be a string of at most {limit} characters")
    return value


def check_quantity(field_name: str, value: Any, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_QTY:
        raise InvalidRequest(field_name, f"must be an integer from {low} to {MAX_QTY}")
    return value


class Movement(StrEnum):
    RECEIVE = "receive"
    ISSUE = "issue"
    RESERVE = "reserve"
    RELEASE = "release"
    SHIP = "ship"
    ADJUST = "adjust"
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"
    EXPIRE = "expire"


class OrderStatus(StrEnum):
    RESERVED = "reserved"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    qty: int

    def as_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "qty": self.qty}


def parse_lines(raw: Any, field_name: str = "lines") -> tuple[Line, ...]:
    """Validate request lines; repeated SKUs are merged and lines sorted (the lock order)."""
    if not isinstance(raw, list | tuple) or not raw:
        raise InvalidRequest(field_name, "must be a non-empty list of {sku, qty}")
    if len(raw) > MAX_LINES:
        raise InvalidRequest(field_name, f"must have at most {MAX_LINES} lines")
    merged: dict[str, int] = {}
    for i, item in enumerate(raw):
        if isinstance(item, Line):
            item = item.as_dict()
        if not isinstance(item, Mapping):
            raise InvalidRequest(f"{field_name}[{i}]", "must be an object {sku, qty}")
        sku = check_code(f"{field_name}[{i}].sku", item.get("sku"), SKU_MAX)
        qty = check_quantity(f"{field_name}[{i}].qty", item.get("qty"))
        merged[sku] = merged.get(sku, 0) + qty
        if merged[sku] > MAX_QTY:
            raise InvalidRequest(f"{field_name}[{i}].qty", f"total for {sku} exceeds {MAX_QTY}")
    return tuple(Line(sku, qty) for sku, qty in sorted(merged.items()))


@dataclass(frozen=True, slots=True)
class Level:
    sku: str
    warehouse: str
    on_hand: int
    reserved: int
    version: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def as_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "warehouse": self.warehouse,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One planned change of a (sku, warehouse) balance; the store applies it conditionally."""

    warehouse: str
    sku: str
    movement: Movement
    d_on_hand: int
    d_reserved: int
    expect_on_hand: int | None = None

    @property
    def d_available(self) -> int:
        return self.d_on_hand - self.d_reserved

    def admits(self, level: Level) -> bool:
        """True when applying this change keeps every balance invariant."""
        on_hand = level.on_hand + self.d_on_hand
        reserved = level.reserved + self.d_reserved
        if self.expect_on_hand is not None and level.on_hand != self.expect_on_hand:
            return False
        return on_hand >= 0 and reserved >= 0 and on_hand - reserved >= 0

    def applied_to(self, level: Level) -> Level:
        return Level(
            level.sku,
            level.warehouse,
            level.on_hand + self.d_on_hand,
            level.reserved + self.d_reserved,
            level.version + 1,
        )


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    unit: str = "pcs"
    reorder_point: int = 0
    track_inventory: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Warehouse:
    code: str
    name: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Order:
    order_id: str
    warehouse: str
    status: OrderStatus
    lines: tuple[Line, ...]
    hold_until: datetime
    customer: str | None = None

    def moved_to(self, status: OrderStatus) -> Order:
        if self.status is not OrderStatus.RESERVED:
            raise InvalidOrderState(self.order_id, self.status.value, _VERB[status])
        return Order(
            self.order_id, self.warehouse, status, self.lines, self.hold_until, self.customer
        )

    def changes(self, movement: Movement) -> list[Change]:
        d_on_hand = -1 if movement is Movement.SHIP else 0
        return [
            Change(self.warehouse, line.sku, movement, d_on_hand * line.qty, -line.qty)
            for line in self.lines
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "warehouse": self.warehouse,
            "status": self.status.value,
            "customer": self.customer,
            "lines": [line.as_dict() for line in self.lines],
            "hold_until": self.hold_until.isoformat(timespec="seconds") + "Z",
        }


_VERB = {
    OrderStatus.SHIPPED: "ship",
    OrderStatus.CANCELLED: "cancel",
    OrderStatus.EXPIRED: "expire",
    OrderStatus.RESERVED: "reserve",
}


@dataclass(frozen=True)
class RequestMeta:
    """Who asked and under which idempotency key; not part of the request's fingerprint."""

    idempotency_key: str
    actor: str | None = None
    # a delivery recorded by an earlier release under its bare event id (see run_recorded)
    legacy_key: str | None = None
    # the span of the request in its trace: what the events it causes carry
    trace: TraceContext | None = None


# ---- commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    kind: ClassVar[str] = "command"

    def fingerprint(self) -> str:
        """sha256 of the command as canonical JSON (what `dataclasses.asdict` gives, built
        without its deep copies: this runs on every attempt of a flash sale)."""
        body = json.dumps(
            {"kind": self.kind, **_plain(self)}, sort_keys=True, default=str, separators=(",", ":")
        )
        return hashlib.sha256(body.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ReceiveStock(Command):
    warehouse: str
    lines: tuple[Line, ...]
    reason: str | None = None
    reference: str | None = None
    kind: ClassVar[str] = "receive"

    def changes(self) -> list[Change]:
        return [Change(self.warehouse, ln.sku, Movement.RECEIVE, ln.qty, 0) for ln in self.lines]


@dataclass(frozen=True)
class IssueStock(Command):
    warehouse: str
    lines: tuple[Line, ...]
    reason: str
    reference: str | None = None
    kind: ClassVar[str] = "issue"

    def changes(self) -> list[Change]:
        return [Change(self.warehouse, ln.sku, Movement.ISSUE, -ln.qty, 0) for ln in self.lines]


@dataclass(frozen=True)
class PlaceOrder(Command):
    order_id: str
    warehouse: str
    lines: tuple[Line, ...]
    customer: str | None = None
    hold_seconds: int | None = None
    kind: ClassVar[str] = "place_order"

    def changes(self) -> list[Change]:
        return [Change(self.warehouse, ln.sku, Movement.RESERVE, 0, ln.qty) for ln in self.lines]


@dataclass(frozen=True)
class CancelOrder(Command):
    order_id: str
    kind: ClassVar[str] = "cancel_order"


@dataclass(frozen=True)
class ShipOrder(Command):
    order_id: str
    reference: str | None = None
    kind: ClassVar[str] = "ship_order"


@dataclass(frozen=True)
class ExpireOrder(Command):
    order_id: str
    kind: ClassVar[str] = "expire_order"


@dataclass(frozen=True)
class RunReconcile(Command):
    """The reconcile of one run key; its Idempotency-Key names this request."""

    run_key: str
    repair: bool = True
    kind: ClassVar[str] = "reconcile"


@dataclass(frozen=True)
class AdjustStock(Command):
    """Cycle count: set on_hand to what was counted, optionally only if it still is `expected`."""

    warehouse: str
    sku: str
    counted: int
    expected: int | None = None
    reason: str = "cycle count"
    kind: ClassVar[str] = "adjust"


@dataclass(frozen=True)
class TransferStock(Command):
    source: str
    destination: str
    lines: tuple[Line, ...]
    reason: str | None = None
    reference: str | None = None
    kind: ClassVar[str] = "transfer"

    def changes(self) -> list[Change]:
        out = [Change(self.source, ln.sku, Movement.TRANSFER_OUT, -ln.qty, 0) for ln in self.lines]
        into = [
            Change(self.destination, ln.sku, Movement.TRANSFER_IN, ln.qty, 0) for ln in self.lines
        ]
        return out + into


def holds_of(changes: Iterable[Change]) -> dict[str, tuple[Line, ...]]:
    """What each warehouse must hold in the gate before the durable write: the lines
    whose available quantity goes down (stock that leaves never exceeds what exists)."""
    per_wh: dict[str, dict[str, int]] = {}
    for ch in changes:
        if ch.d_available < 0 and ch.expect_on_hand is None:
            skus = per_wh.setdefault(ch.warehouse, {})
            skus[ch.sku] = skus.get(ch.sku, 0) - ch.d_available
    return {wh: tuple(Line(s, q) for s, q in sorted(skus.items())) for wh, skus in per_wh.items()}


def crosses_reorder_point(before: Level, after: Level, reorder_point: int) -> bool:
    return before.available > reorder_point >= after.available
