"""Group commit of orders: one database transaction for a whole batch of held orders.

Written one by one, every order of a flash sale is a transaction that updates the same hot
balance row; that row's lock serialises them, and the database tops out at a few hundred
orders a second however many clients there are. Here:

1. The order is held in the gate (all lines or none, exactly as in guarded_write) and, in
   the same Redis call, appended to its warehouse's journal. A request that finds nobody
   leading the warehouse's flushes becomes the leader.
2. The leader takes the journal's oldest entries (at most `journal_batch`) and writes them
   in ONE transaction: one conditional balance update per SKU with the batch's total, and
   the orders, lines, ledger rows, outbox events and idempotency records as multi-row
   inserts. After the commit it answers every waiting request through Redis, drops their
   holds, settles the durable levels and passes the lead to the oldest waiting entry.
3. Everyone else waits for its answer, which is only sent after the commit: a 201 is
   always durable, exactly as on the one-by-one path.

The database still guards every invariant. When a batch does not fit (the gate was ahead
of the database) or the database refuses it, the batch rolls back and each entry runs
alone through the one-by-one transaction, so exactly the orders that fit commit. Entries a
dead leader already committed answer with their recorded answer. A request whose Redis
goes away while it waits runs the one-by-one transaction itself: the idempotency record
makes that and a late batch one effect.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from shared_lib import topics
from shared_lib.config import HOLD_MARGIN_MS
from shared_lib.domain import events, trace
from shared_lib.domain.errors import (
    IdempotencyConflict,
    OrderExists,
    PsiError,
    StoreUnavailable,
    UnknownSku,
    UnknownWarehouse,
    restore,
)
from shared_lib.domain.model import (
    Change,
    Level,
    Line,
    Movement,
    Order,
    OrderStatus,
    PlaceOrder,
    RequestMeta,
)
from shared_lib.services.guard import (
    Deps,
    Outcome,
    Work,
    admit,
    order_body,
    replay,
    request_id,
    resolve_unknown,
    run_recorded,
    stock_events,
)
from shared_lib.services.ports import (
    GateAnswer,
    JournalAnswer,
    JournalUnavailable,
    MovementNote,
    OrderJournal,
    StockStore,
)

log = logging.getLogger(__name__)

LEAD = "lead"
# how long a waiter blocks before it checks whether the leader is still alive
WAIT_SLICE_S = 0.2


@dataclass(frozen=True)
class Pending:
    """One held order in the journal, with everything its transaction needs."""

    order: Order
    meta: RequestMeta
    fingerprint: str
    at: datetime

    @cached_property
    def request(self) -> str:
        return request_id(self.meta.idempotency_key)

    def encode(self) -> str:
        return json.dumps(
            {
                "id": self.order.order_id,
                "customer": self.order.customer,
                "lines": [[ln.sku, ln.qty] for ln in self.order.lines],
                "hold_until": self.order.hold_until.isoformat(),
                "key": self.meta.idempotency_key,
                "actor": self.meta.actor,
                "fingerprint": self.fingerprint,
                "at": self.at.isoformat(),
                "trace": _trace_of(self.meta),
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, warehouse: str, text: str) -> Pending:
        data = json.loads(text)
        order = Order(
            data["id"],
            warehouse,
            OrderStatus.RESERVED,
            tuple(Line(sku, int(qty)) for sku, qty in data["lines"]),
            datetime.fromisoformat(data["hold_until"]),
            data["customer"],
        )
        # each entry keeps its own request's span: a batch holds many requests' events
        traced = data.get("trace")  # absent in entries of earlier releases
        span = trace.parse(*traced) if traced else None
        meta = RequestMeta(data["key"], actor=data["actor"], trace=span)
        return cls(order, meta, data["fingerprint"], datetime.fromisoformat(data["at"]))


def _trace_of(meta: RequestMeta) -> tuple[str, str | None] | None:
    return (meta.trace.traceparent, meta.trace.tracestate) if meta.trace else None


@dataclass(frozen=True)
class Result:
    """One entry's answer: a body (committed, now or earlier) or an error (nothing written,
    or - StoreUnavailable - maybe written: the database did not say)."""

    body: dict[str, Any] | None = None
    error: PsiError | None = None
    replayed: bool = False

    def reply(self) -> str:
        if self.error is not None:
            return json.dumps({"error": self.error.as_dict()}, separators=(",", ":"))
        return json.dumps({"body": self.body, "replayed": self.replayed}, separators=(",", ":"))


WorkOf = Callable[[Pending], Work]


def place(deps: Deps, journal: OrderJournal, pending: Pending, work_of: WorkOf) -> Outcome | None:
    """Hold, journal and wait for the group commit. None: the gate could not hold the
    order (not ready, unreachable), and the caller takes the one-by-one path, degraded."""
    order, key = pending.order, pending.meta.idempotency_key
    req, entry = pending.request, pending.encode()
    held = journal.enqueue(
        order.warehouse,
        req,
        pending.fingerprint,
        order.lines,
        deps.gate_hold_ms,
        entry,
        deps.journal_lead_ms,
    )
    answer = admit(deps, order.warehouse, held, key)
    if answer is GateAnswer.UNKNOWN:
        answer = resolve_unknown(deps, order.warehouse, key, req, pending.fingerprint)
    if answer is GateAnswer.DUPLICATE:
        return replay(deps, key, pending.fingerprint, req, [])
    if answer is not GateAnswer.HELD:
        return None
    try:
        reply = _wait(deps, journal, pending, entry, held.lead, work_of)
    except JournalUnavailable:
        log.warning("order journal unreachable while waiting; writing %s alone", order.order_id)
        return None
    data = json.loads(reply)
    if "error" in data:
        raise restore(data["error"])
    return Outcome(data["body"], replayed=bool(data.get("replayed")))


def _wait(
    deps: Deps,
    journal: OrderJournal,
    pending: Pending,
    entry: str,
    lead: bool,
    work_of: WorkOf,
) -> str:
    warehouse, req = pending.order.warehouse, pending.request
    deadline = time.monotonic() + deps.journal_wait_s
    extended = False
    while True:
        if lead:
            answers = flush(deps, journal, warehouse, req, work_of)
            if answers is not None and req in answers:
                return answers[req]
            if answers == {}:
                # nothing left to write, yet no answer: unless one is just arriving, the
                # entry was lost with Redis's data (a flush): settle it one by one
                reply = journal.next_reply(warehouse, req, WAIT_SLICE_S)
                if reply is None or reply == LEAD:
                    raise JournalUnavailable("the journal no longer holds this request")
                return reply
            lead = False  # answered for others, or fenced off: the next leader answers
        left = deadline - time.monotonic()
        if left <= 0:
            if journal.withdraw(warehouse, req, entry):
                raise StoreUnavailable("database")  # nothing of it was written
            if extended:
                # a leader took it and is stuck in its write, which may still commit: the
                # outcome is unknown, and a retry with the same key will learn it (writing it
                # one by one now could answer 409 for an order the leader commits later)
                raise StoreUnavailable("database")
            deadline, extended = time.monotonic() + deps.journal_wait_s, True
            continue
        reply = journal.next_reply(warehouse, req, min(WAIT_SLICE_S, left))
        if reply is None:
            # nobody answered in time: if the leader died, its lead expired and one of the
            # waiters takes over (the dead leader's batch is taken again, idempotently)
            lead = journal.claim(warehouse, req, deps.journal_lead_ms)
        elif reply == LEAD:
            lead = True
        else:
            return reply


def flush(
    deps: Deps, journal: OrderJournal, warehouse: str, owner: str, work_of: WorkOf
) -> dict[str, str] | None:
    """Write the next batch as the leader `owner`; the replies by request id, or None when
    the leader was fenced off meanwhile (another leads now, and answers for the batch)."""
    taken = journal.take(warehouse, owner, deps.journal_batch, deps.journal_lead_ms)
    if taken is None:
        return {}
    texts = taken.entries
    pendings: list[Pending] = []
    results: dict[str, Result] = {}
    late: list[Pending] = []
    for text in texts:
        req, _, payload = text.partition(" ")
        try:
            pending = Pending.decode(warehouse, payload)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable journal entry %s dropped: %s", req, exc)
            results[req] = Result(error=StoreUnavailable("order journal"))
            continue
        # an entry whose hold is (nearly) over may have been given up by its waiter and its
        # units returned by the gate: it must not commit behind everyone's back. Its hold is
        # judged by the gate's own clock, and must outlast the write (a late entry is
        # answered 503, and its retry learns the outcome)
        left = taken.hold_left_ms.get(req, -1)
        (late if left < HOLD_MARGIN_MS else pendings).append(pending)
    results.update(_late(deps, late))
    found, levels = persist(deps, warehouse, pendings, work_of)
    results.update(found)
    fingerprints = {p.request: p.fingerprint for p in (*pendings, *late)}
    answers = [_answer(req, r, fingerprints.get(req)) for req, r in results.items()]
    if not journal.complete(warehouse, owner, taken, answers, levels, deps.journal_lead_ms):
        log.warning("flush leader %s was fenced off; its batch is answered by the next", owner)
        return None
    return {a.request_id: a.reply for a in answers}


def _answer(req: str, result: Result, fingerprint: str | None) -> JournalAnswer:
    """A committed order keeps its marker; one whose write may have committed (the database
    was unreachable) keeps it flagged, so its retry asks the database; a refused one loses
    it."""
    if result.body is not None:
        return JournalAnswer(req, fingerprint, result.reply())
    unknown = isinstance(result.error, StoreUnavailable) and fingerprint is not None
    return JournalAnswer(req, fingerprint if unknown else None, result.reply(), unknown=unknown)


def _late(deps: Deps, late: Sequence[Pending]) -> dict[str, Result]:
    """Late entries: the idempotency record decides first (a dead leader's batch that did
    commit is answered with its answers); the others are not written now."""
    if not late:
        return {}
    recorded = deps.tx.run(lambda store: store.recall_many([p.meta.idempotency_key for p in late]))
    results: dict[str, Result] = {}
    for p in late:
        prior = recorded.get(p.meta.idempotency_key)
        if prior is not None and prior[0] == p.fingerprint:
            results[p.request] = Result(prior[1], replayed=True)
        else:
            log.warning("journal entry of order %s outlived its hold", p.order.order_id)
            results[p.request] = Result(error=StoreUnavailable("database"))
    return results


def persist(
    deps: Deps, warehouse: str, pendings: Sequence[Pending], work_of: WorkOf
) -> tuple[dict[str, Result], list[Level]]:
    """The batch in one transaction; one by one if the batch as a whole is refused."""
    if not pendings:
        return {}, []
    try:
        written = deps.tx.run(lambda store: _batch(deps, store, warehouse, pendings))
    except StoreUnavailable as exc:
        return {p.request: Result(error=exc) for p in pendings}, []
    except Exception as exc:  # every refusal is settled entry by entry
        log.info("batch of %d orders refused (%s); writing them one by one", len(pendings), exc)
    else:
        deps.on_flush(len(pendings), False)
        return written
    deps.on_flush(len(pendings), True)
    results: dict[str, Result] = {}
    newest: dict[str, Level] = {}
    for p in pendings:
        try:
            body, levels, replayed = run_recorded(
                deps, p.meta.idempotency_key, p.fingerprint, PlaceOrder.kind, work_of(p)
            )
        except PsiError as exc:
            results[p.request] = Result(error=exc)
            continue
        except Exception:
            log.exception("order %s refused by the database", p.order.order_id)
            results[p.request] = Result(error=StoreUnavailable("database"))
            continue
        results[p.request] = Result(body, replayed=replayed)
        for level in levels:
            if level.sku not in newest or newest[level.sku].version < level.version:
                newest[level.sku] = level
    return results, list(newest.values())


class _DoesNotFit(Exception):
    """The batch's total for a SKU is more than the database has available."""


def _batch(
    deps: Deps, store: StockStore, warehouse: str, pendings: Sequence[Pending]
) -> tuple[dict[str, Result], list[Level]]:
    results: dict[str, Result] = {}
    recorded = store.recall_many([p.meta.idempotency_key for p in pendings])
    taken = store.existing_orders([p.order.order_id for p in pendings])
    known_warehouse = store.warehouse(warehouse) is not None
    products = store.products({ln.sku for p in pendings for ln in p.order.lines})
    fresh: list[Pending] = []
    settled: dict[str, Level] = {}
    for p in pendings:
        prior = recorded.get(p.meta.idempotency_key)
        if prior is not None:
            same = prior[0] == p.fingerprint
            error = None if same else IdempotencyConflict(p.meta.idempotency_key)
            results[p.request] = Result(prior[1] if same else None, error, replayed=same)
            # committed by a leader that died before it settled: the gate takes the levels
            for ln in p.order.lines if same else ():
                level = settled.get(ln.sku) or store.level(warehouse, ln.sku)
                if level is not None:
                    settled[ln.sku] = level
            continue
        unknown = [ln.sku for ln in p.order.lines if ln.sku not in products]
        refusal: PsiError | None = None
        if not known_warehouse:
            refusal = UnknownWarehouse(warehouse)
        elif unknown:
            refusal = UnknownSku(unknown[0])
        elif p.order.order_id in taken:
            refusal = OrderExists(p.order.order_id)
        if refusal is not None:
            results[p.request] = Result(error=refusal)
            continue
        taken.add(p.order.order_id)
        fresh.append(p)
    if not fresh:
        return results, list(settled.values())

    totals: dict[str, int] = {}
    for p in fresh:
        for ln in p.order.lines:
            totals[ln.sku] = totals.get(ln.sku, 0) + ln.qty
    store.add_orders([(p.order, p.at) for p in fresh])
    # the contended balance rows: one update per SKU for the whole batch, locked last
    after: dict[str, Level] = {}
    for sku in sorted(totals):
        level = store.apply(Change(warehouse, sku, Movement.RESERVE, 0, totals[sku]))
        if level is None:
            raise _DoesNotFit(sku)
        after[sku] = level

    # the ledger tells the batch as the orders' sequence: running levels, one row per line
    reserved = {sku: after[sku].reserved - totals[sku] for sku in totals}
    rows: list[tuple[Change, Level, MovementNote]] = []
    for p in fresh:
        note = MovementNote(p.meta, p.at, "order", None, p.order.order_id)
        for ln in p.order.lines:
            reserved[ln.sku] += ln.qty
            top = after[ln.sku]
            level = Level(ln.sku, warehouse, top.on_hand, reserved[ln.sku], top.version)
            rows.append((Change(warehouse, ln.sku, Movement.RESERVE, 0, ln.qty), level, note))
    ids = iter(zip(rows, store.append_movements(rows), strict=True))

    outbox: list[tuple[str, str, dict[str, Any]]] = []
    records: list[tuple[str, str, str, dict[str, Any]]] = []
    for p in fresh:
        order = p.order
        created = events.cloud_event(
            topics.ORDER_CREATED,
            deps.source,
            order.order_id,
            events.order_data(order),
            p.at,
            p.meta.trace,
        )
        outbox.append((topics.ORDER_CREATED, order.order_id, created))
        levels = []
        for _ in order.lines:
            (change, level, note), movement_id = next(ids)
            point = products[change.sku].reorder_point
            outbox += stock_events(change, level, movement_id, note, deps.source, point)
            levels.append(level)
        body = order_body(order, levels)
        records.append((p.meta.idempotency_key, p.fingerprint, PlaceOrder.kind, body))
        results[p.request] = Result(body)
    store.add_events(outbox)
    store.remember_many(records)
    return results, list({**settled, **after}.values())
