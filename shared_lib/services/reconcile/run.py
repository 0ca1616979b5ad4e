"""Reconcile: compare the gate, the database balances and the ledger; repair what may be
repaired; expire stale holds; re-drive the outbox; write a report.

One effective run per run key: the run is recorded first (unique key), so a request
delivered many times, or to many replicas at once, runs once and answers the same. A run
left ``running`` for longer than ``stale_after`` (a crashed replica), or one that failed,
is taken over by the next delivery.

The scan streams every (warehouse, sku) balance in keyset pages, each read with its ledger
comparison in one database snapshot, and compares each page with the gate in one pipeline;
memory stays flat however many balances there are (a page or two read ahead, drift rows
spooled to a temporary file). A worker thread reads the next page while the current one is
compared, and another looks for orphans in the gate meanwhile: the work is mostly waiting
on the stores' round trips, which so overlap.

* ``gate_missing`` / ``gate_mismatch``: the gate differs from the database. Confirmed by
  re-reading both (gate first, so the database read is never the older one), then repaired
  from the database with a compare-and-set on the gate version seen: a settle that lands
  meanwhile wins, and the row counts as repaired only when the gate then equals the database.
* ``gate_not_ready``: the warehouse is off the fast path (flushed, invalidated, new) and this
  run did not bring it back (repair off, or another process is rebuilding it). One that the
  run rebuilds is not drift - nothing differed in stock - and counts in ``gates_rebuilt``.
* ``gate_held_mismatch``: a level's held count is not the sum of the holds that exist (a
  hold counted twice, or given back twice); repaired by setting it to that sum.
* ``gate_orphan``: a gate level with no database balance; reported only.
* ``ledger_mismatch``: the balance differs from the sum of its ledger. Never repaired: the
  record itself is inconsistent and needs a person.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shared_lib import topics
from shared_lib.domain import events
from shared_lib.domain.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RequestInProgress,
    RunKeyConflict,
)
from shared_lib.domain.model import ExpireOrder, RequestMeta
from shared_lib.domain.trace import TraceContext
from shared_lib.services.cache import rebuild_warehouse
from shared_lib.services.guard import Deps
from shared_lib.services.orders import expire_order
from shared_lib.services.reconcile.ahead import ReadAhead
from shared_lib.services.reconcile.drift import (
    GATE_HELD,
    GATE_NOT_READY,
    Drift,
    DriftLog,
    compare_gate,
    find_orphans,
    ledger_drift,
)
from shared_lib.services.reconcile.ports import (
    FINISHED,
    RESULT_KEYS,
    Balance,
    Progress,
    ReconcileGate,
    ReconcileStore,
    ReportStore,
    RunRecord,
    StoredAnswer,
)

log = logging.getLogger(__name__)

RUN_KEY_MAX = 100
ERROR_MAX = 500
BATCH = 5000
ACTOR = "reconcile"


def reconcile(
    deps: Deps,
    records: ReconcileStore,
    gate: ReconcileGate | None,
    reports: ReportStore | None,
    *,
    run_key: str,
    repair: bool = True,
    now: datetime | None = None,
    redrive: Callable[[], int] | None = None,
    on_progress: Progress | None = None,
    batch_size: int = BATCH,
    stale_after: timedelta = timedelta(minutes=30),
    trace: TraceContext | None = None,
) -> dict[str, Any]:
    """Run (or answer for) the reconcile of ``run_key``; its events carry ``trace``.

    ``now`` is the moment holds are judged against (default: the clock); run bookkeeping
    always uses ``deps.clock``. ``redrive`` re-sends the outbox (e.g. ``OutboxRelay.drain``)
    and returns how many events it sent. Raises ``RequestInProgress`` while another
    delivery of the same key is running.
    """
    if not isinstance(run_key, str) or not 1 <= len(run_key) <= RUN_KEY_MAX:
        raise InvalidRequest("run_key", f"must be a string of 1..{RUN_KEY_MAX} characters")
    as_of = _naive_utc(now or deps.clock())
    started = _naive_utc(deps.clock())
    run = records.claim(run_key, str(uuid.uuid4()), repair, started, started - stale_after)
    if not run.claimed:
        if run.status != FINISHED:
            raise RequestInProgress(run_key)
        if run.repair != repair:
            raise RunKeyConflict(run_key, run.repair)
        return StoredAnswer(run.result())
    try:
        return _run(
            deps, records, gate, reports, run, as_of, redrive, on_progress, batch_size, trace
        )
    except BaseException as exc:
        _record_failure(deps, records, run, exc)
        raise


def _run(
    deps: Deps,
    records: ReconcileStore,
    gate: ReconcileGate | None,
    reports: ReportStore | None,
    run: RunRecord,
    as_of: datetime,
    redrive: Callable[[], int] | None,
    on_progress: Progress | None,
    batch_size: int,
    trace: TraceContext | None,
) -> dict[str, Any]:
    gate_state = "disabled"
    if gate is not None:
        gate_state = "checked" if gate.ping() else "unreachable"
    live_gate = gate if gate_state == "checked" else None
    drift = DriftLog()
    try:
        expired = expire_holds(deps, records, as_of, batch_size, trace)
        checked = _scan(deps, records, live_gate, drift, run.repair, on_progress, batch_size)
        redriven = redrive() if redrive is not None else 0
        counts = {
            "checked": checked,
            "drift_found": drift.found,
            "drift_repaired": drift.repaired,
            "expired_holds": expired,
            "outbox_redriven": redriven,
            "gates_rebuilt": drift.gates_rebuilt,
        }
        finished = _naive_utc(deps.clock())
        summary = {
            "run_id": run.run_id,
            "run_key": run.run_key,
            "repair": run.repair,
            "started_at": events.iso(run.started_at),
            "finished_at": events.iso(finished),
            "holds_expired_before": events.iso(as_of),
            "gate": gate_state,
            **counts,
        }
        report_uri, error = _write_report(reports, run, summary, drift)
    finally:
        drift.close()
    data = {"run_id": run.run_id, "run_key": run.run_key, **counts, "report_uri": report_uri}
    event = events.cloud_event(
        topics.RECONCILE_COMPLETED, deps.source, run.run_id, data, finished, trace
    )
    if not records.finish(run.run_id, counts, report_uri, error, event, run.run_key, finished):
        # another delivery took the run over while this one worked: its answer is the answer
        current = records.run(run.run_key)
        if current is not None and current.status == FINISHED:
            return current.result()
        raise RequestInProgress(run.run_key)
    log.info("reconcile %s (%s) finished: %s", run.run_key, run.run_id, counts)
    if redrive is not None:
        _send_completion(redrive)
    return {key: data[key] for key in RESULT_KEYS}


def _send_completion(redrive: Callable[[], int]) -> None:
    # the completed event is in the outbox already; a failure here only delays it
    try:
        redrive()
    except Exception:
        log.exception("could not relay the reconcile completion event; the relay retries")


def _write_report(
    reports: ReportStore | None, run: RunRecord, summary: Mapping[str, Any], drift: DriftLog
) -> tuple[str | None, str | None]:
    if reports is None:
        return None, None
    try:
        return reports.put(run.run_id, summary, drift, at=run.started_at), None
    except Exception as exc:
        # the counts still go out; the run records why its report is missing
        log.exception("reconcile report of %s not written", run.run_id)
        return None, f"report not written: {type(exc).__name__}: {exc}"[:ERROR_MAX]


def _record_failure(
    deps: Deps, records: ReconcileStore, run: RunRecord, exc: BaseException
) -> None:
    try:
        records.fail(run.run_id, f"{type(exc).__name__}: {exc}"[:ERROR_MAX], deps.clock())
    except Exception:
        log.exception("could not record the failure of reconcile run %s", run.run_id)


def expire_holds(
    deps: Deps,
    records: ReconcileStore,
    as_of: datetime,
    batch_size: int,
    trace: TraceContext | None = None,
) -> int:
    """Expire every order still reserved after its hold deadline; returns how many."""
    expired, after = 0, None
    while True:
        page = records.expired_holds(as_of, after, batch_size)
        if not page:
            return expired
        for hold in page:
            meta = RequestMeta(idempotency_key=f"expire:{hold.order_id}", actor=ACTOR, trace=trace)
            try:
                outcome = expire_order(deps, ExpireOrder(hold.order_id), meta)
            except (Conflict, NotFound) as exc:
                # closed meanwhile or another sweeper has it; a bad balance shows as ledger drift
                log.warning("hold of %s not expired: %s", hold.order_id, exc)
                continue
            expired += not outcome.replayed
        after = page[-1]


def _scan(
    deps: Deps,
    records: ReconcileStore,
    gate: ReconcileGate | None,
    drift: DriftLog,
    repair: bool,
    on_progress: Progress | None,
    batch_size: int,
) -> int:
    total = records.count_levels() if on_progress is not None else None
    checked = 0
    if on_progress is not None:
        on_progress(0, total)
    warehouses = records.warehouse_codes()
    compared: set[str] = set()
    if gate is not None:
        compared = {w for w in warehouses if _gate_ready(deps, gate, w, drift, repair)}
    # the search for orphans needs nothing from the balances: it runs alongside them
    orphan_search = _orphans(records, gate, sorted(compared), batch_size)
    with contextlib.closing(ReadAhead(orphan_search)) as orphans:
        for warehouse in warehouses:
            compare = gate if warehouse in compared else None
            pages = ReadAhead(_balance_pages(records, warehouse, batch_size))
            with contextlib.closing(pages):
                for page in pages:
                    _check_page(records, compare, warehouse, page, drift, repair)
                    checked += len(page)
                    if on_progress is not None:
                        on_progress(checked, total)
                    for found in orphans.available():
                        drift.add_all(found)
        for found in orphans:
            drift.add_all(found)
    return checked


def _check_page(
    records: ReconcileStore,
    gate: ReconcileGate | None,
    warehouse: str,
    page: Sequence[Balance],
    drift: DriftLog,
    repair: bool,
) -> None:
    for balance in page:
        if not balance.consistent:
            drift.add(ledger_drift(balance))
    if gate is not None:
        drift.add_all(compare_gate(records, gate, warehouse, page, repair))
        skus = [balance.level.sku for balance in page]
        for sku, held, expected in gate.held_drift(warehouse, skus, repair=repair):
            drift.add(
                Drift(
                    GATE_HELD,
                    warehouse,
                    sku,
                    gate_held=held,
                    expected_held=expected,
                    repaired=repair,
                )
            )


def _balance_pages(
    records: ReconcileStore, warehouse: str, batch_size: int
) -> Iterator[list[Balance]]:
    """Every balance of the warehouse, a keyset page at a time."""
    after: str | None = None
    while page := records.balances_page(warehouse, after, batch_size):
        yield page
        after = page[-1].level.sku


def _orphans(
    records: ReconcileStore, gate: ReconcileGate | None, warehouses: list[str], batch_size: int
) -> Iterator[list[Drift]]:
    """The orphans of each warehouse, one (mostly empty) list per chunk of gate keys."""
    if gate is None:
        return
    for warehouse in warehouses:
        for chunk in _chunks(gate.skus(warehouse), batch_size):
            yield list(find_orphans(records, gate, warehouse, chunk))


def _gate_ready(
    deps: Deps, gate: ReconcileGate, warehouse: str, drift: DriftLog, repair: bool
) -> bool:
    """True when the warehouse's gate is in use (and so worth comparing); rebuilds it
    first when it is not and ``repair`` is on."""
    if gate.is_ready(warehouse):
        return True
    if repair and _rebuild(deps, gate, warehouse):
        drift.gates_rebuilt += 1  # the gate lost its data, or the warehouse is new
        return True
    drift.add(Drift(GATE_NOT_READY, warehouse))  # off the fast path, and it stays so
    return False


def _rebuild(deps: Deps, gate: ReconcileGate, warehouse: str) -> bool:
    owner = f"reconcile-{uuid.uuid4().hex}"
    if not gate.acquire_rebuild(warehouse, owner):
        return False  # another process is rebuilding it right now
    try:
        return any(rebuild_warehouse(deps.tx, gate, warehouse) is not None for _ in range(3))
    finally:
        gate.release_rebuild(warehouse, owner)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _naive_utc(moment: datetime) -> datetime:
    """Store columns and event times are naive UTC."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
