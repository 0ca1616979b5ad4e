"""The order path every stock-changing use case follows (try / persist / compensate / settle).

1. Try: the gate holds every line that takes stock, all or none, under the request's key.
2. Persist: one transaction writes balances (conditional: never below zero), ledger,
   order rows, outbox events and the idempotency record.
3. Compensate: if 2 fails, the gate drops the hold.
4. Settle: the gate drops the hold and takes the durable levels (versioned, so late or
   repeated settles never go backwards). A crash before 4 heals when the hold's deadline
   passes; levels that never reached the gate are repaired by the next settle, rebuild or
   reconcile.

The gate only admits; the database decides. When the gate is absent, unreachable or not
yet rebuilt, the same transaction still refuses any change that would break an invariant
(degraded mode), so correctness never depends on the gate.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared_lib import topics
from shared_lib.domain import events
from shared_lib.domain.errors import (
    CountMismatch,
    IdempotencyConflict,
    InsufficientStock,
    RequestInProgress,
    Shortfall,
    StoreUnavailable,
    UnknownSku,
    UnknownWarehouse,
)
from shared_lib.domain.model import (
    Change,
    Command,
    Level,
    Line,
    Order,
    Product,
    RequestMeta,
    crosses_reorder_point,
    holds_of,
    utcnow,
)
from shared_lib.services.ports import (
    AlreadyRecorded,
    Catalog,
    GateAnswer,
    HoldResult,
    IdempotencyRecords,
    MovementNote,
    OrderJournal,
    StockGate,
    StockLedger,
    StockStore,
    Transactions,
)

log = logging.getLogger(__name__)


@dataclass
class Deps:
    """Everything a use case needs, built once per process by bootstrap (fakes in unit tests)."""

    tx: Transactions
    gate: StockGate | None = None
    source: str = "/psi/shared-lib"
    clock: Callable[[], datetime] = utcnow
    order_hold_seconds: int = 900
    gate_hold_ms: int = 30_000
    on_gate_not_ready: Callable[[str], None] = lambda warehouse: None
    read_tx: Transactions | None = None
    # group commit of orders (services.group_commit); None: every order commits alone
    journal: OrderJournal | None = None
    journal_batch: int = 500
    journal_wait_s: float = 10.0
    journal_lead_ms: int = 5_000
    # told the size of every batch written and whether it had to be written order by order
    on_flush: Callable[[int, bool], None] = lambda size, one_by_one: None

    @property
    def reads(self) -> Transactions:
        return self.read_tx or self.tx


@dataclass
class Outcome:
    body: dict[str, Any]
    replayed: bool = False
    degraded: bool = False
    levels: list[Level] = field(default_factory=list, repr=False)


def request_id(idempotency_key: str) -> str:
    """Gate-side name of a request: fixed length and free of hash-tag braces."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def derived_id(prefix: str, idempotency_key: str) -> str:
    """A stable id for a new document, so a replay without an id names the same document."""
    return f"{prefix}-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]}"


Work = Callable[[StockStore], tuple[dict[str, Any], list[Level]]]


def guarded_write(
    deps: Deps,
    command: Command,
    meta: RequestMeta,
    work: Work,
    *,
    holds: dict[str, tuple[Line, ...]] | None = None,
    degraded: bool = False,
) -> Outcome:
    """`degraded`: the caller already found the gate unable to hold (no holds are taken)."""
    key, fingerprint = meta.idempotency_key, command.fingerprint()
    req = request_id(key)
    held: list[str] = []
    degraded = degraded or deps.gate is None
    if deps.gate is not None:
        for warehouse, lines in (holds or {}).items():
            answer = _try_hold(deps, deps.gate, warehouse, req, fingerprint, lines, key)
            if answer is GateAnswer.UNKNOWN:
                answer = resolve_unknown(deps, warehouse, key, req, fingerprint)
            if answer is GateAnswer.HELD:
                held.append(warehouse)
            elif answer is GateAnswer.DUPLICATE:
                return replay(deps, key, fingerprint, req, held)
            else:
                degraded = True

    try:
        body, levels, replayed = run_recorded(
            deps, key, fingerprint, command.kind, work, legacy_key=meta.legacy_key
        )
    except StoreUnavailable:
        # the commit may have happened: the markers stay, flagged, so that the retry (a 503
        # says: retry with the same key) asks the database instead of the stock left
        _release(deps, held, req, unknown=fingerprint)
        raise
    except BaseException:
        _release(deps, held, req)
        raise
    if replayed:
        _release(deps, held, req)
        return Outcome(body, replayed=True)
    _settle(deps, levels, req, fingerprint, held)
    return Outcome(body, degraded=degraded, levels=levels)


def run_recorded(
    deps: Deps,
    key: str,
    fingerprint: str,
    kind: str,
    work: Work,
    *,
    legacy_key: str | None = None,
) -> tuple[dict[str, Any], list[Level], bool]:
    """Run `work` in one transaction with its idempotency record; a key already recorded
    answers with the first answer instead (replayed=True). A delivery also finds its first
    answer under ``legacy_key`` (its bare event id, as releases before 0.2 recorded it)
    when that record is of the same request: another source's event with the same id
    has another fingerprint and is not taken for it."""

    def transaction(store: StockStore) -> tuple[dict[str, Any], list[Level], bool]:
        prior = store.recall(key)
        if prior is not None:
            if prior[0] != fingerprint:
                raise IdempotencyConflict(key)
            return prior[1], [], True
        legacy = store.recall(legacy_key) if legacy_key else None
        if legacy is not None and legacy[0] == fingerprint:
            return legacy[1], [], True
        body, levels = work(store)
        store.remember(key, fingerprint, kind, body)
        return body, levels, False

    try:
        return deps.tx.run(transaction)
    except AlreadyRecorded:
        # a concurrent transaction recorded it first: this run answers with its answer
        return deps.tx.run(transaction)


def answer_once(
    deps: Deps,
    key: str,
    fingerprint: str,
    kind: str,
    produce: Callable[[], tuple[dict[str, Any], bool]],
) -> Outcome:
    """The Idempotency-Key contract for work that commits on its own, in many transactions
    (a reconcile run): a key already recorded answers with its first answer, or 409 for
    another request; otherwise ``produce`` runs (it says whether its answer is itself a
    stored one) and its answer is recorded under the key."""

    def recorded(store: IdempotencyRecords) -> tuple[str, dict[str, Any]] | None:
        return store.recall(key)

    def record(store: IdempotencyRecords) -> tuple[str, dict[str, Any]] | None:
        prior = store.recall(key)
        if prior is None:
            store.remember(key, fingerprint, kind, body)
        return prior

    prior = deps.tx.run(recorded)
    if prior is None:
        body, replayed = produce()
        prior = deps.tx.run(record)
        if prior is None:
            return Outcome(body, replayed=replayed)
    if prior[0] != fingerprint:
        raise IdempotencyConflict(key)
    return Outcome(prior[1], replayed=True)


def _try_hold(
    deps: Deps,
    gate: StockGate,
    warehouse: str,
    req: str,
    fingerprint: str,
    lines: tuple[Line, ...],
    key: str,
) -> GateAnswer:
    result = gate.try_hold(warehouse, req, fingerprint, lines, deps.gate_hold_ms)
    return admit(deps, warehouse, result, key)


def admit(deps: Deps, warehouse: str, result: HoldResult, key: str) -> GateAnswer:
    """The gate's answer for one warehouse; raises for a conflicting or short request."""
    if result.answer is GateAnswer.CONFLICT:
        raise IdempotencyConflict(key)
    if result.answer is GateAnswer.SHORT:
        _raise_short(deps, warehouse, result.shortfalls, result.unknown_skus)
    if result.answer is GateAnswer.NOT_READY:
        deps.on_gate_not_ready(warehouse)
    return result.answer


def _raise_short(
    deps: Deps, warehouse: str, shortfalls: list[Shortfall], unknown: list[str]
) -> None:
    """A short answer costs no database statement unless the gate has never seen a SKU."""
    if unknown:

        def lookup(store: Catalog) -> None:
            if store.warehouse(warehouse) is None:
                raise UnknownWarehouse(warehouse)
            known = store.products(unknown)
            for sku in unknown:
                if sku not in known:
                    raise UnknownSku(sku)

        deps.reads.run(lookup)
    raise InsufficientStock(warehouse, shortfalls)


def replay(deps: Deps, key: str, fingerprint: str, req: str, held: list[str]) -> Outcome:
    _release(deps, held, req)
    prior = deps.tx.run(lambda store: store.recall(key))
    if prior is None:
        raise RequestInProgress(key)
    if prior[0] != fingerprint:
        raise IdempotencyConflict(key)
    return Outcome(prior[1], replayed=True)


def _release(
    deps: Deps, warehouses: Iterable[str], req: str, *, unknown: str | None = None
) -> None:
    if deps.gate is None:
        return
    for warehouse in warehouses:
        deps.gate.cancel_hold(warehouse, req, unknown=unknown)


def resolve_unknown(deps: Deps, warehouse: str, key: str, req: str, fingerprint: str) -> GateAnswer:
    """An earlier attempt of this request may have committed: the database knows. Recorded:
    a replay (DUPLICATE). Not recorded: it never committed, so the flagged marker goes and
    this attempt runs on the database's guard alone (NOT_READY: degraded, no hold)."""
    if deps.tx.run(lambda store: store.recall(key)) is not None:
        return GateAnswer.DUPLICATE
    assert deps.gate is not None
    deps.gate.forget_unknown(warehouse, req, fingerprint)
    return GateAnswer.NOT_READY


def _settle(
    deps: Deps, levels: Sequence[Level], req: str, fingerprint: str, held: list[str]
) -> None:
    """Every warehouse the request touched remembers it, so a replay is answered by the
    first answer even when the first attempt ran in degraded mode."""
    if deps.gate is None:
        return
    per_warehouse: dict[str, list[Level]] = {wh: [] for wh in held}
    for level in levels:
        per_warehouse.setdefault(level.warehouse, []).append(level)
    for warehouse, group in per_warehouse.items():
        deps.gate.settle(warehouse, req, group, fingerprint=fingerprint)


def check_catalog(store: Catalog, changes: Sequence[Change]) -> dict[str, Product]:
    """Every warehouse and product the changes name exists; their products by sku."""
    for warehouse in sorted({c.warehouse for c in changes}):
        if store.warehouse(warehouse) is None:
            raise UnknownWarehouse(warehouse)
    products = store.products({c.sku for c in changes})
    for change in changes:
        if change.sku not in products:
            raise UnknownSku(change.sku)
    return products


def apply_changes(
    store: StockStore,
    changes: Sequence[Change],
    note: MovementNote,
    source: str,
    *,
    products: dict[str, Product] | None = None,
) -> list[Level]:
    """Apply planned changes in lock order; all succeed or the transaction is abandoned.
    `products`: the catalog already checked by the caller (check_catalog)."""
    ordered = sorted(changes, key=lambda c: (c.warehouse, c.sku, c.movement.value))
    if products is None:
        products = check_catalog(store, ordered)
    shortfalls: dict[str, list[Shortfall]] = {}
    levels: list[Level] = []
    for change in ordered:
        after = store.apply(change)
        if after is None:
            current = store.level(change.warehouse, change.sku)
            if current is None and change.d_on_hand >= 0 and change.d_reserved >= 0:
                store.create_level(change.warehouse, change.sku)
                after = store.apply(change)
            elif (
                current is not None
                and change.expect_on_hand is not None
                and (current.on_hand != change.expect_on_hand)
            ):
                raise CountMismatch(
                    change.sku, change.warehouse, change.expect_on_hand, current.on_hand
                )
        if after is None:
            available = current.available if current is not None else 0
            shortfalls.setdefault(change.warehouse, []).append(
                Shortfall(change.sku, -change.d_available, max(available, 0))
            )
            continue
        levels.append(after)
        _record(store, change, after, note, source, products[change.sku].reorder_point)
    for warehouse, short in shortfalls.items():
        raise InsufficientStock(warehouse, short)
    return levels


def _record(
    store: StockLedger,
    change: Change,
    after: Level,
    note: MovementNote,
    source: str,
    reorder_point: int,
) -> None:
    movement_id = store.append_movement(change, after, note)
    for topic, key, event in stock_events(change, after, movement_id, note, source, reorder_point):
        store.add_event(topic, key, event)


def stock_events(
    change: Change,
    after: Level,
    movement_id: int,
    note: MovementNote,
    source: str,
    reorder_point: int,
) -> list[tuple[str, str, dict[str, Any]]]:
    """stock.changed for one applied change, and stock.low when it crosses the reorder point."""
    data = events.stock_changed_data(
        change.movement,
        after,
        change.d_on_hand,
        change.d_reserved,
        movement_id=movement_id,
        reason=note.reason,
        reference=note.reference,
        order_id=note.order_id,
        idempotency_key=note.meta.idempotency_key,
    )
    out = [
        (
            topics.STOCK_CHANGED,
            after.sku,
            events.cloud_event(
                topics.STOCK_CHANGED, source, after.sku, data, note.at, note.meta.trace
            ),
        )
    ]
    before = Level(
        after.sku,
        after.warehouse,
        after.on_hand - change.d_on_hand,
        after.reserved - change.d_reserved,
    )
    if crosses_reorder_point(before, after, reorder_point):
        low = events.stock_low_data(after, reorder_point)
        out.append(
            (
                topics.STOCK_LOW,
                after.sku,
                events.cloud_event(
                    topics.STOCK_LOW, source, after.sku, low, note.at, note.meta.trace
                ),
            )
        )
    return out


def levels_body(levels: Iterable[Level]) -> list[dict[str, Any]]:
    return [level.as_dict() for level in sorted(levels, key=lambda v: (v.warehouse, v.sku))]


def order_body(order: Order, levels: Iterable[Level]) -> dict[str, Any]:
    return {**order.as_dict(), "levels": levels_body(levels)}


__all__ = ["Deps", "Outcome", "apply_changes", "guarded_write", "holds_of", "levels_body"]
