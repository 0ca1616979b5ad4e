"""What the services need from the stores. Adapters implement these; unit tests use fakes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from shared_lib.domain.errors import Shortfall
from shared_lib.domain.model import (
    Change,
    Level,
    Line,
    Order,
    OrderStatus,
    Product,
    RequestMeta,
    Warehouse,
)

T = TypeVar("T")


class AlreadyRecorded(Exception):
    """Another transaction recorded the same idempotency key first."""


class JournalUnavailable(Exception):
    """The order journal (Redis) could not be reached while a request was waiting on it."""


@dataclass(frozen=True)
class MovementRecord:
    id: int
    kind: str
    sku: str
    warehouse: str
    delta_on_hand: int
    delta_reserved: int
    on_hand_after: int
    reserved_after: int
    reason: str | None
    reference: str | None
    order_id: str | None
    actor: str | None
    idempotency_key: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["created_at"] = self.created_at.isoformat(timespec="milliseconds") + "Z"
        return out


@dataclass(frozen=True)
class TimeRange:
    """A window on a created-at column, in naive UTC: `start` inclusive, `end` exclusive;
    None leaves that side open."""

    start: datetime | None = None
    end: datetime | None = None

    def holds(self, at: datetime) -> bool:
        return (self.start is None or at >= self.start) and (self.end is None or at < self.end)


@dataclass(frozen=True)
class MovementFilter:
    """Which ledger rows a list shows; every given field must match (exact values)."""

    sku: str | None = None
    warehouse: str | None = None
    reference: str | None = None
    created: TimeRange = TimeRange()


@dataclass(frozen=True)
class OrderFilter:
    """Which orders a list shows; every given field must match (exact values)."""

    status: OrderStatus | None = None
    warehouse: str | None = None
    customer: str | None = None
    created: TimeRange = TimeRange()


@dataclass(frozen=True)
class OrderRecord:
    """An order and when it was placed: lists show the order's view (as one order is shown)
    and continue after the last (created_at, order_id)."""

    order: Order
    created_at: datetime


@dataclass(frozen=True)
class MovementNote:
    """Why a movement happened: written on every ledger row of one request."""

    meta: RequestMeta
    at: datetime
    reason: str | None = None
    reference: str | None = None
    order_id: str | None = None


class IdempotencyRecords(Protocol):
    """Every request's first answer, under its key (one record per key)."""

    def recall(self, key: str) -> tuple[str, dict[str, Any]] | None: ...
    def remember(self, key: str, fingerprint: str, kind: str, response: dict[str, Any]) -> None: ...
    # a group commit's batch at once
    def recall_many(self, keys: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]: ...
    def remember_many(self, records: Sequence[tuple[str, str, str, dict[str, Any]]]) -> None: ...


class Catalog(Protocol):
    """Products and warehouses; upserts answer True when the row was created."""

    def product(self, sku: str) -> Product | None: ...
    def products(self, skus: Iterable[str]) -> dict[str, Product]: ...
    def warehouse(self, code: str) -> Warehouse | None: ...
    # the latest committed row, locked until the transaction ends (a check-then-write
    # such as If-Match must not race a concurrent writer)
    def locked_product(self, sku: str) -> Product | None: ...
    def locked_warehouse(self, code: str) -> Warehouse | None: ...
    def upsert_product(self, product: Product) -> bool: ...
    def upsert_warehouse(self, warehouse: Warehouse) -> bool: ...
    def product_in_use(self, sku: str) -> bool: ...
    def delete_product(self, sku: str) -> bool: ...


class StockLedger(Protocol):
    """Balances, the ledger of their changes, orders, and the events that go out with them.
    apply() writes only when the change keeps every invariant, else returns None."""

    def level(self, warehouse: str, sku: str) -> Level | None: ...
    def apply(self, change: Change) -> Level | None: ...
    def create_level(self, warehouse: str, sku: str) -> None: ...
    def levels_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Level]: ...
    def recent_requests(
        self, warehouse: str, since: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[tuple[str, str, datetime]]: ...
    def warehouse_codes(self) -> list[str]: ...
    def append_movement(self, change: Change, after: Level, note: MovementNote) -> int: ...
    def append_movements(self, rows: Sequence[tuple[Change, Level, MovementNote]]) -> list[int]: ...
    def add_order(self, order: Order, at: datetime) -> None: ...
    def add_orders(self, orders: Sequence[tuple[Order, datetime]]) -> None: ...
    def existing_orders(self, order_ids: Sequence[str]) -> set[str]: ...
    def order(self, order_id: str, *, lock: bool = False) -> Order | None: ...
    def set_order_status(self, order_id: str, status: OrderStatus, at: datetime) -> None: ...
    def add_event(self, topic: str, key: str, event: dict[str, Any]) -> None: ...
    def add_events(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None: ...


class ReadModel(Protocol):
    """The read side (cosmicpython's views): keyset pages, `after` is the last key of the
    previous page."""

    def products_page(self, after_sku: str | None, limit: int) -> list[Product]: ...
    def warehouses_page(self, after_code: str | None, limit: int) -> list[Warehouse]: ...
    def levels_where(
        self,
        warehouse: str | None,
        sku: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[Level]: ...
    def low_stock_page(
        self, warehouse: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[Level, int]]: ...
    def movements_page(
        self, where: MovementFilter, before_id: int | None, limit: int
    ) -> list[MovementRecord]: ...
    def orders_page(
        self, where: OrderFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[OrderRecord]:
        """Newest first: (created_at, order_id) descending, `after` the last of the previous
        page; each order with its lines."""
        ...


class StockStore(IdempotencyRecords, Catalog, StockLedger, ReadModel, Protocol):
    """One transaction on the system of record, in all its roles."""


class Transactions(Protocol):
    def run(self, work: Callable[[StockStore], T]) -> T:
        """Run `work` in one transaction and commit; retried whole on transient errors."""
        ...


class GateAnswer(StrEnum):
    HELD = "held"
    SHORT = "short"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    NOT_READY = "not_ready"
    UNAVAILABLE = "unavailable"
    # the request's first attempt may have committed (its answer was lost): ask the database
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class HoldResult:
    answer: GateAnswer
    shortfalls: list[Shortfall] = field(default_factory=list)
    unknown_skus: list[str] = field(default_factory=list)
    lead: bool = False  # journaled requests: the caller leads the next flush


@dataclass(frozen=True)
class JournalAnswer:
    """What a flush tells one waiting request; `fingerprint` when it was committed, or
    when it may have been (`unknown`: the database did not say; its marker stays, flagged)."""

    request_id: str
    fingerprint: str | None
    reply: str
    unknown: bool = False


@dataclass(frozen=True)
class Taken:
    """A batch the flush leader took: its fencing token, the entries, and what is left of
    each entry's hold (ms by the gate's clock, by request id; below 0: nothing)."""

    token: int
    entries: list[str]
    hold_left_ms: dict[str, int] = field(default_factory=dict)


class StockGate(Protocol):
    """The admission gate in front of the system of record (Redis in production)."""

    def try_hold(
        self,
        warehouse: str,
        request_id: str,
        fingerprint: str,
        lines: Sequence[Line],
        hold_ms: int,
    ) -> HoldResult: ...

    def cancel_hold(
        self, warehouse: str, request_id: str, *, unknown: str | None = None
    ) -> None: ...
    def forget_unknown(self, warehouse: str, request_id: str, fingerprint: str) -> None: ...

    def settle(
        self,
        warehouse: str,
        request_id: str | None,
        levels: Sequence[Level],
        *,
        fingerprint: str | None = None,
    ) -> None:
        """Drop the request's hold, remember the request (when a fingerprint is given) and
        record the durable levels (newer versions win)."""
        ...


class OrderJournal(Protocol):
    """Group commit of held orders (services.group_commit): waiting requests queue in the journal
    and one of them, the leader, writes a whole batch in one database transaction."""

    def enqueue(
        self,
        warehouse: str,
        request_id: str,
        fingerprint: str,
        lines: Sequence[Line],
        hold_ms: int,
        entry: str,
        lead_ms: int,
    ) -> HoldResult: ...

    def take(self, warehouse: str, owner: str, limit: int, lead_ms: int) -> Taken | None: ...

    def complete(
        self,
        warehouse: str,
        owner: str,
        taken: Taken,
        answers: Sequence[JournalAnswer],
        levels: Sequence[Level],
        lead_ms: int,
    ) -> bool:
        """False: the leader was fenced off (another leads, or took the batch since), and
        nothing was changed."""
        ...

    def next_reply(self, warehouse: str, request_id: str, timeout: float) -> str | None: ...
    def claim(self, warehouse: str, request_id: str, lead_ms: int) -> bool: ...
    def withdraw(self, warehouse: str, request_id: str, entry: str) -> bool: ...


class MaintainedGate(StockGate, Protocol):
    """What rebuild and reconcile need beyond the order path."""

    def generation(self, warehouse: str) -> str: ...
    def invalidate(self, warehouse: str) -> None: ...
    def load(self, warehouse: str, levels: Sequence[Level]) -> None: ...

    marker_ttl: int  # seconds a request's marker is kept

    def restore_markers(
        self, warehouse: str, markers: Sequence[tuple[str, str, datetime]]
    ) -> None: ...
    def mark_ready(self, warehouse: str, generation: str) -> bool: ...
    def is_ready(self, warehouse: str) -> bool: ...
    def not_ready(self, warehouses: Sequence[str]) -> list[str]: ...
    def server_replaced(self) -> bool: ...
    def ping(self) -> bool: ...
    def acquire_rebuild(self, warehouse: str, owner: str, ttl_ms: int = 60_000) -> bool: ...
    def release_rebuild(self, warehouse: str, owner: str) -> None: ...
