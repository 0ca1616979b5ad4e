"""In-memory implementations of the ports, for unit tests of the services (no mocks)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from shared_lib.adapters.kafka import Headers, PublishError
from shared_lib.domain.errors import Shortfall
from shared_lib.domain.model import (
    Change,
    Level,
    Line,
    Order,
    OrderStatus,
    Product,
    Warehouse,
    utcnow,
)
from shared_lib.services.ports import (
    AlreadyRecorded,
    GateAnswer,
    HoldResult,
    MovementNote,
    StockStore,
)
from tests.fakes_read import FakeReadModel

T = TypeVar("T")


@dataclass
class State:
    products: dict[str, Product] = field(default_factory=dict)
    warehouses: dict[str, Warehouse] = field(default_factory=dict)
    levels: dict[tuple[str, str], Level] = field(default_factory=dict)
    movements: list[dict[str, Any]] = field(default_factory=list)
    orders: dict[str, Order] = field(default_factory=dict)
    order_placed_at: dict[str, datetime] = field(default_factory=dict)
    outbox: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    records: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    recorded_at: dict[str, datetime] = field(default_factory=dict)


class FakeRecords:
    """services.ports.IdempotencyRecords over the shared State."""

    s: State

    def recall(self, key: str) -> tuple[str, dict[str, Any]] | None:
        return self.s.records.get(key)

    def remember(self, key: str, fingerprint: str, kind: str, response: dict[str, Any]) -> None:
        if key in self.s.records:
            raise AlreadyRecorded(key)
        self.s.records[key] = (fingerprint, copy.deepcopy(response))
        self.s.recorded_at[key] = utcnow()

    def recall_many(self, keys: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        return {k: self.s.records[k] for k in keys if k in self.s.records}

    def remember_many(self, records: Sequence[tuple[str, str, str, dict[str, Any]]]) -> None:
        for record in records:
            self.remember(*record)


class FakeCatalog:
    """services.ports.Catalog over the shared State."""

    s: State

    def product(self, sku: str) -> Product | None:
        return self.s.products.get(sku)

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        return {s: self.s.products[s] for s in skus if s in self.s.products}

    def warehouse(self, code: str) -> Warehouse | None:
        return self.s.warehouses.get(code)

    def locked_product(self, sku: str) -> Product | None:
        return self.product(sku)  # one thread at a time: nothing to lock

    def locked_warehouse(self, code: str) -> Warehouse | None:
        return self.warehouse(code)

    def upsert_product(self, product: Product) -> bool:
        created = product.sku not in self.s.products
        self.s.products[product.sku] = product
        return created

    def upsert_warehouse(self, warehouse: Warehouse) -> bool:
        created = warehouse.code not in self.s.warehouses
        self.s.warehouses[warehouse.code] = warehouse
        return created

    def product_in_use(self, sku: str) -> bool:
        held = any(lv.on_hand or lv.reserved for (_, s), lv in self.s.levels.items() if s == sku)
        history = any(m["sku"] == sku for m in self.s.movements)
        ordered = any(ln.sku == sku for o in self.s.orders.values() for ln in o.lines)
        return held or history or ordered

    def delete_product(self, sku: str) -> bool:
        if self.product_in_use(sku) or sku not in self.s.products:
            return False
        self.s.levels = {k: lv for k, lv in self.s.levels.items() if k[1] != sku}
        del self.s.products[sku]
        return True


class FakeLedger:
    """services.ports.StockLedger over the shared State."""

    s: State

    def level(self, warehouse: str, sku: str) -> Level | None:
        return self.s.levels.get((warehouse, sku))

    def apply(self, change: Change) -> Level | None:
        current = self.s.levels.get((change.warehouse, change.sku))
        if current is None or not change.admits(current):
            return None
        after = change.applied_to(current)
        self.s.levels[(change.warehouse, change.sku)] = after
        return after

    def create_level(self, warehouse: str, sku: str) -> None:
        self.s.levels.setdefault((warehouse, sku), Level(sku, warehouse, 0, 0, 0))

    def recent_requests(
        self, warehouse: str, since: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[tuple[str, str, datetime]]:
        touched = {m["idempotency_key"] for m in self.s.movements if m["warehouse"] == warehouse}
        found = sorted(
            (at, k)
            for k, at in self.s.recorded_at.items()
            if at >= since and k in touched and (after is None or (at, k) > after)
        )
        return [(k, self.s.records[k][0], at) for at, k in found[:limit]]

    def levels_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Level]:
        rows = sorted(
            (lv for (wh, _), lv in self.s.levels.items() if wh == warehouse),
            key=lambda lv: lv.sku,
        )
        return [lv for lv in rows if after_sku is None or lv.sku > after_sku][:limit]

    def warehouse_codes(self) -> list[str]:
        return sorted(self.s.warehouses)

    def append_movement(self, change: Change, after: Level, note: MovementNote) -> int:
        self.s.movements.append(
            {
                "kind": change.movement.value,
                "warehouse": change.warehouse,
                "sku": change.sku,
                "delta_on_hand": change.d_on_hand,
                "delta_reserved": change.d_reserved,
                "on_hand_after": after.on_hand,
                "idempotency_key": note.meta.idempotency_key,
                "id": len(self.s.movements) + 1,
                "reserved_after": after.reserved,
                "reason": note.reason,
                "reference": note.reference,
                "order_id": note.order_id,
                "actor": note.meta.actor,
                "created_at": note.at,
            }
        )
        return len(self.s.movements)

    def append_movements(self, rows: Sequence[tuple[Change, Level, MovementNote]]) -> list[int]:
        return [self.append_movement(*row) for row in rows]

    def add_order(self, order: Order, at: datetime) -> None:
        if order.order_id in self.s.orders:
            raise AlreadyRecorded(order.order_id)
        self.s.orders[order.order_id] = order
        self.s.order_placed_at[order.order_id] = at

    def add_orders(self, orders: Sequence[tuple[Order, datetime]]) -> None:
        for order, at in orders:
            self.add_order(order, at)

    def existing_orders(self, order_ids: Sequence[str]) -> set[str]:
        return {o for o in order_ids if o in self.s.orders}

    def order(self, order_id: str, *, lock: bool = False) -> Order | None:
        return self.s.orders.get(order_id)

    def set_order_status(self, order_id: str, status: OrderStatus, at: datetime) -> None:
        order = self.s.orders[order_id]
        self.s.orders[order_id] = Order(
            order.order_id, order.warehouse, status, order.lines, order.hold_until, order.customer
        )

    def add_event(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self.s.outbox.append((topic, key, event))

    def add_events(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        self.s.outbox.extend(events)


class FakeStore(FakeRecords, FakeCatalog, FakeLedger, FakeReadModel):
    """services.ports.StockStore: every role over one State."""

    def __init__(self, state: State) -> None:
        self.s = state


class FakeTransactions:
    """Each run works on a copy of the state; the copy replaces the state only on success.
    `fail_next` makes the next commit fail, as a lost database would; `lose_answer_next`
    commits the next run and then raises, as a commit whose acknowledgement was lost."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state or State()
        self.commits = 0
        self.fail_next: Exception | None = None
        self.lose_answer_next: Exception | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[StockStore], T]) -> T:
        with self._lock:
            draft = copy.deepcopy(self.state)
            result = work(FakeStore(draft))
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            self.state = draft
            self.commits += 1
            if self.lose_answer_next is not None:
                exc, self.lose_answer_next = self.lose_answer_next, None
                raise exc
            return result


class MemoryGate:
    """The gate's semantics without Redis: holds, versioned settles, readiness."""

    def __init__(self) -> None:
        self.levels: dict[tuple[str, str], dict[str, int]] = {}
        self.holds: dict[tuple[str, str], dict[str, int]] = {}
        self.markers: dict[tuple[str, str], str] = {}
        self.marker_ttl = 86_400
        self.ready: set[str] = set()
        self.gen: dict[str, int] = {}
        self.reachable = True

    def try_hold(
        self,
        warehouse: str,
        request_id: str,
        fingerprint: str,
        lines: Sequence[Line],
        hold_ms: int,
    ) -> HoldResult:
        if not self.reachable:
            return HoldResult(GateAnswer.UNAVAILABLE)
        seen = self.markers.get((warehouse, request_id))
        if seen == "?" + fingerprint:
            return HoldResult(GateAnswer.UNKNOWN)
        if seen is not None:
            return HoldResult(GateAnswer.DUPLICATE if seen == fingerprint else GateAnswer.CONFLICT)
        if warehouse not in self.ready:
            return HoldResult(GateAnswer.NOT_READY)
        short, unknown = [], []
        for line in lines:
            lv = self.levels.get((warehouse, line.sku))
            available = lv["oh"] - lv["rs"] - lv["hd"] if lv else 0
            if available < line.qty:
                short.append(Shortfall(line.sku, line.qty, max(available, 0)))
                if lv is None:
                    unknown.append(line.sku)
        if short:
            return HoldResult(GateAnswer.SHORT, short, unknown)
        for line in lines:
            self.levels[(warehouse, line.sku)]["hd"] += line.qty
        self.holds[(warehouse, request_id)] = {ln.sku: ln.qty for ln in lines}
        self.markers[(warehouse, request_id)] = fingerprint
        return HoldResult(GateAnswer.HELD)

    def _drop(self, warehouse: str, request_id: str) -> None:
        for sku, qty in self.holds.pop((warehouse, request_id), {}).items():
            if (warehouse, sku) in self.levels:
                self.levels[(warehouse, sku)]["hd"] -= qty

    def cancel_hold(self, warehouse: str, request_id: str, *, unknown: str | None = None) -> None:
        if self.reachable:
            self._drop(warehouse, request_id)
            if unknown is None:
                self.markers.pop((warehouse, request_id), None)
            else:
                self.markers[(warehouse, request_id)] = "?" + unknown

    def forget_unknown(self, warehouse: str, request_id: str, fingerprint: str) -> None:
        if self.markers.get((warehouse, request_id)) == "?" + fingerprint:
            del self.markers[(warehouse, request_id)]

    def settle(
        self,
        warehouse: str,
        request_id: str | None,
        levels: Sequence[Level],
        *,
        fingerprint: str | None = None,
    ) -> None:
        if not self.reachable:
            return
        if request_id:
            self._drop(warehouse, request_id)
            if fingerprint:
                self.markers[(warehouse, request_id)] = fingerprint
        self.load(warehouse, levels)

    def load(self, warehouse: str, levels: Sequence[Level]) -> None:
        for lv in levels:
            cur = self.levels.setdefault((warehouse, lv.sku), {"oh": 0, "rs": 0, "v": -1, "hd": 0})
            if cur["v"] < lv.version:
                cur.update(oh=lv.on_hand, rs=lv.reserved, v=lv.version)

    def restore_markers(self, warehouse: str, markers: Sequence[tuple[str, str, datetime]]) -> None:
        for request_id, fingerprint, _ in markers:
            self.markers.setdefault((warehouse, request_id), fingerprint)

    def generation(self, warehouse: str) -> str:
        return str(self.gen.get(warehouse, 0))

    def invalidate(self, warehouse: str) -> None:
        self.gen[warehouse] = self.gen.get(warehouse, 0) + 1
        self.ready.discard(warehouse)

    def mark_ready(self, warehouse: str, generation: str) -> bool:
        if self.generation(warehouse) != generation:
            return False
        self.ready.add(warehouse)
        return True

    def is_ready(self, warehouse: str) -> bool:
        return warehouse in self.ready

    def not_ready(self, warehouses: Sequence[str]) -> list[str]:
        return [w for w in warehouses if w not in self.ready]

    def server_replaced(self) -> bool:
        return False

    def ping(self) -> bool:
        return self.reachable

    def acquire_rebuild(self, warehouse: str, owner: str, ttl_ms: int = 60_000) -> bool:
        return True

    def release_rebuild(self, warehouse: str, owner: str) -> None:
        return None

    def available(self, warehouse: str, sku: str) -> int:
        lv = self.levels[(warehouse, sku)]
        return lv["oh"] - lv["rs"] - lv["hd"]


# -- events


@dataclass(frozen=True)
class PublishedEvent:
    topic: str
    key: str
    value: bytes
    headers: Headers = field(default_factory=list)


class InMemoryPublisher:
    """Fake publisher for unit tests: records every publish, can be told to fail."""

    def __init__(self) -> None:
        self.events: list[PublishedEvent] = []
        self.closed = False
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Headers | None = None,
        timeout: float = 10.0,
    ) -> None:
        if self.closed:
            raise PublishError("publisher is closed")
        if self.fail_with is not None:
            raise PublishError(str(self.fail_with)) from self.fail_with
        if not isinstance(value, bytes | bytearray):
            raise TypeError("value must be bytes")
        with self._lock:
            self.events.append(PublishedEvent(topic, key, bytes(value), list(headers or [])))

    def close(self) -> None:
        self.closed = True

    def on_topic(self, topic: str) -> list[PublishedEvent]:
        with self._lock:
            return [e for e in self.events if e.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()
