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
import contextvars
import csv
import io
import json
import logging
import queue
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from shared_lib import topics
from shared_lib.domain import events
from shared_lib.domain.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RequestInProgress,
    RunKeyConflict,
)
from shared_lib.domain.model import ExpireOrder, Level, RequestMeta
from shared_lib.services.cache import rebuild_warehouse
from shared_lib.services.guard import Deps
from shared_lib.services.orders import expire_order
from shared_lib.services.ports import MaintainedGate

log = logging.getLogger(__name__)

RUN_KEY_MAX = 100
ERROR_MAX = 500
BATCH = 5000
CONFIRM_ATTEMPTS = 3
SPOOL_BYTES = 4 * 1024 * 1024
ACTOR = "reconcile"

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
GATE_MISSING = "gate_missing"
GATE_MISMATCH = "gate_mismatch"
GATE_NOT_READY = "gate_not_ready"
GATE_HELD = "gate_held_mismatch"
GATE_ORPHAN = "gate_orphan"
LEDGER_MISMATCH = "ledger_mismatch"

RESULT_KEYS = (
    "run_id",
    "run_key",
    "checked",
    "drift_found",
    "drift_repaired",
    "expired_holds",
    "outbox_redriven",
    "gates_rebuilt",
    "report_uri",
)

Progress = Callable[[int, int | None], None]
T = TypeVar("T")


# ---- what the reconcile needs from the stores ------------------------------------------


@dataclass(frozen=True)
class Balance:
    """A database balance and the sum of its ledger, read in one snapshot."""

    level: Level
    ledger_on_hand: int
    ledger_reserved: int

    @property
    def consistent(self) -> bool:
        return (self.level.on_hand, self.level.reserved) == (
            self.ledger_on_hand,
            self.ledger_reserved,
        )


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    run_key: str
    status: str
    repair: bool
    started_at: datetime
    finished_at: datetime | None = None
    checked: int = 0
    drift_found: int = 0
    drift_repaired: int = 0
    expired_holds: int = 0
    outbox_redriven: int = 0
    gates_rebuilt: int = 0
    report_uri: str | None = None
    error: str | None = None
    claimed: bool = False

    def result(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in RESULT_KEYS}


class StoredAnswer(dict[str, Any]):
    """The answer of a run key that finished earlier: nothing ran now (a replay)."""


@dataclass(frozen=True)
class ExpiredHold:
    order_id: str
    hold_until: datetime


class ReconcileStore(Protocol):
    """The reconcile's view of the system of record (each call is its own transaction)."""

    def claim(
        self, run_key: str, run_id: str, repair: bool, now: datetime, stale_before: datetime
    ) -> RunRecord:
        """Record a new run, or take over a failed or stale one (``claimed`` True); else
        return the existing run (``claimed`` False)."""
        ...

    def run(self, run_key: str) -> RunRecord | None: ...

    def finish(
        self,
        run_id: str,
        counts: Mapping[str, int],
        report_uri: str | None,
        error: str | None,
        event: dict[str, Any],
        key: str,
        now: datetime,
    ) -> bool:
        """Mark the run finished and add its event to the outbox, in one transaction;
        False when the run is no longer this one's (taken over meanwhile)."""
        ...

    def fail(self, run_id: str, error: str, now: datetime) -> None: ...

    def count_levels(self) -> int: ...
    def warehouse_codes(self) -> list[str]: ...
    def balances_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Balance]:
        """Balances after ``after_sku`` in sku order, each with its ledger sum."""
        ...

    def levels(self, warehouse: str, skus: Sequence[str]) -> dict[str, Level]: ...
    def existing_skus(self, warehouse: str, skus: Sequence[str]) -> set[str]: ...
    def expired_holds(
        self, now: datetime, after: ExpiredHold | None, limit: int
    ) -> list[ExpiredHold]:
        """Orders still ``reserved`` whose hold ended before ``now``, oldest first."""
        ...


class GateReading(Protocol):
    @property
    def on_hand(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def version(self) -> int: ...


class ReconcileGate(MaintainedGate, Protocol):
    """What reconcile needs from the gate beyond rebuilds (``RedisGate`` has it all)."""

    def ping(self) -> bool: ...
    def read(self, warehouse: str, skus: Iterable[str]) -> Mapping[str, GateReading]: ...
    def skus(self, warehouse: str) -> Iterator[str]: ...
    def repair(self, warehouse: str, fixes: Sequence[tuple[int | None, Level]]) -> int:
        """Overwrite levels whose gate version is still the one seen; returns how many."""
        ...

    def held_drift(
        self, warehouse: str, skus: Sequence[str], *, repair: bool
    ) -> list[tuple[str, int, int]]:
        """(sku, held, expected) where a level's held count is not the holds that exist."""
        ...


class ReportStore(Protocol):
    def put(
        self, run_id: str, json_bytes: bytes, csv_bytes: bytes, *, at: datetime | None = None
    ) -> str:
        """Store both renderings of a run's report; returns the URI of the JSON one."""
        ...


# ---- drift rows and the report -------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    kind: str
    warehouse: str
    sku: str | None = None
    db_on_hand: int | None = None
    db_reserved: int | None = None
    db_version: int | None = None
    gate_on_hand: int | None = None
    gate_reserved: int | None = None
    gate_version: int | None = None
    ledger_on_hand: int | None = None
    ledger_reserved: int | None = None
    gate_held: int | None = None
    expected_held: int | None = None
    repaired: bool = False


DRIFT_COLUMNS = tuple(f.name for f in fields(Drift))


def _with_db(drift: Drift, level: Level | None) -> Drift:
    if level is None:
        return drift
    return replace(
        drift, db_on_hand=level.on_hand, db_reserved=level.reserved, db_version=level.version
    )


def _with_gate(drift: Drift, cached: GateReading | None) -> Drift:
    if cached is None:
        return drift
    return replace(
        drift,
        gate_on_hand=cached.on_hand,
        gate_reserved=cached.reserved,
        gate_version=cached.version,
    )


class DriftLog:
    """Drift rows spooled to a temporary file (memory only while small)."""

    def __init__(self) -> None:
        # closed by close(): the log outlives any one block
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_BYTES, mode="w+", newline=""
        )
        self.found = 0
        self.repaired = 0
        self.gates_rebuilt = 0  # warehouses brought back on the fast path: upkeep, not drift

    def add(self, drift: Drift) -> None:
        self.found += 1
        self.repaired += int(drift.repaired)
        self._file.write(json.dumps(asdict(drift), separators=(",", ":")) + "\n")

    def add_all(self, rows: Iterable[Drift]) -> None:
        for drift in rows:
            self.add(drift)

    def rows(self) -> Iterator[dict[str, Any]]:
        self._file.seek(0)
        for line in self._file:
            yield json.loads(line)

    def close(self) -> None:
        self._file.close()


def render_report(summary: Mapping[str, Any], drift: DriftLog) -> tuple[bytes, bytes]:
    """The report as JSON (summary + every drift row) and CSV (one line per drift row)."""
    out = io.StringIO()
    out.write("{\n")
    for name, value in summary.items():
        out.write(f"  {json.dumps(name)}: {json.dumps(value, default=str)},\n")
    out.write('  "drift": [')
    for i, row in enumerate(drift.rows()):
        out.write(("," if i else "") + "\n    " + json.dumps(row, separators=(",", ":")))
    out.write("\n  ]\n}\n" if drift.found else "]\n}\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=DRIFT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(drift.rows())
    return out.getvalue().encode("utf-8"), table.getvalue().encode("utf-8")


# ---- the use case --------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Run (or answer for) the reconcile of ``run_key``.

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
        return _run(deps, records, gate, reports, run, as_of, redrive, on_progress, batch_size)
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
) -> dict[str, Any]:
    gate_state = "disabled"
    if gate is not None:
        gate_state = "checked" if gate.ping() else "unreachable"
    live_gate = gate if gate_state == "checked" else None
    drift = DriftLog()
    try:
        expired = expire_holds(deps, records, as_of, batch_size)
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
    event = events.cloud_event(topics.RECONCILE_COMPLETED, deps.source, run.run_id, data, finished)
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
    json_bytes, csv_bytes = render_report(summary, drift)
    try:
        return reports.put(run.run_id, json_bytes, csv_bytes, at=run.started_at), None
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


def expire_holds(deps: Deps, records: ReconcileStore, as_of: datetime, batch_size: int) -> int:
    """Expire every order still reserved after its hold deadline; returns how many."""
    expired, after = 0, None
    while True:
        page = records.expired_holds(as_of, after, batch_size)
        if not page:
            return expired
        for hold in page:
            meta = RequestMeta(idempotency_key=f"expire:{hold.order_id}", actor=ACTOR)
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
    with contextlib.closing(_Ahead(orphan_search)) as orphans:
        for warehouse in warehouses:
            compare = gate if warehouse in compared else None
            pages = _Ahead(_balance_pages(records, warehouse, batch_size))
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
            drift.add(_ledger_drift(balance))
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


_DONE = object()


class _Ahead(Iterator[T]):
    """``items`` produced by a worker thread at most ``depth`` ahead of the consumer, so
    the stores' round trips overlap the consumer's work while memory stays bounded.

    The producer's error is raised to the consumer, in order. ``close`` (always: use
    ``contextlib.closing``) stops the producer at its next item and waits for it.
    """

    def __init__(self, items: Iterator[T], depth: int = 2) -> None:
        self._ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._finished = False
        context = contextvars.copy_context()
        self._worker = threading.Thread(
            target=context.run, args=(self._produce, items), name="reconcile-ahead", daemon=True
        )
        self._worker.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                self._ready.put((item, None))
                if self._stop.is_set():
                    return
            self._ready.put((_DONE, None))
        except BaseException as exc:
            self._ready.put((_DONE, exc))

    def _take(self, item: Any, error: BaseException | None) -> T:
        if item is _DONE:
            self._finished = True
            if error is not None:
                raise error
            raise StopIteration
        return cast(T, item)

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        return self._take(*self._ready.get())

    def available(self) -> Iterator[T]:
        """The items produced so far, without waiting for more."""
        while not self._finished:
            try:
                ready = self._ready.get_nowait()
            except queue.Empty:
                return
            try:
                yield self._take(*ready)
            except StopIteration:
                return

    def close(self) -> None:
        # the producer checks `stop` after every put, so once the queue is emptied it makes
        # at most one more put, which cannot block
        self._finished = True
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._ready.get_nowait()
        self._worker.join()


def _ledger_drift(balance: Balance) -> Drift:
    level = balance.level
    row = Drift(
        LEDGER_MISMATCH,
        level.warehouse,
        level.sku,
        ledger_on_hand=balance.ledger_on_hand,
        ledger_reserved=balance.ledger_reserved,
    )
    return _with_db(row, level)


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


def _same(cached: GateReading | None, level: Level | None) -> bool:
    if cached is None or level is None:
        return cached is None and level is None
    return (cached.on_hand, cached.reserved, cached.version) == (
        level.on_hand,
        level.reserved,
        level.version,
    )


def compare_gate(
    records: ReconcileStore,
    gate: ReconcileGate,
    warehouse: str,
    page: Sequence[Balance],
    repair: bool,
) -> list[Drift]:
    """Drift between the gate and one page of balances, confirmed and (optionally) repaired."""
    seen = gate.read(warehouse, [b.level.sku for b in page])
    suspects: list[str] = []
    for balance in page:
        level = balance.level
        cached = seen.get(level.sku)
        if (
            cached is None
            or cached.version != level.version
            or cached.on_hand != level.on_hand
            or cached.reserved != level.reserved
        ):
            suspects.append(level.sku)
    if not suspects:
        return []
    # gate first, database second: a database row older than the gate reading is impossible
    cached = gate.read(warehouse, suspects)
    levels = records.levels(warehouse, suspects)
    found: dict[str, Drift] = {}
    for sku in suspects:
        level = levels.get(sku)
        if level is None or _same(cached.get(sku), level):
            continue  # a settle landed between the reads
        kind = GATE_MISSING if cached.get(sku) is None else GATE_MISMATCH
        found[sku] = _with_gate(_with_db(Drift(kind, warehouse, sku), level), cached.get(sku))
    if repair and found:
        for sku in _repair(records, gate, warehouse, found, levels, cached):
            found[sku] = replace(found[sku], repaired=True)
    return list(found.values())


def _repair(
    records: ReconcileStore,
    gate: ReconcileGate,
    warehouse: str,
    found: Mapping[str, Drift],
    levels: Mapping[str, Level],
    cached: Mapping[str, GateReading],
) -> set[str]:
    """Compare-and-set the gate from the database; a row counts as repaired once a re-read
    shows gate == database, whoever (this repair or a newer settle) put it there."""
    repaired: set[str] = set()
    pending = {sku: (_version(cached.get(sku)), levels[sku]) for sku in found}
    for _ in range(CONFIRM_ATTEMPTS):
        gate.repair(warehouse, list(pending.values()))
        skus = list(pending)
        after = gate.read(warehouse, skus)
        fresh = records.levels(warehouse, skus)
        for sku in skus:
            if _same(after.get(sku), fresh.get(sku)):
                repaired.add(sku)
                del pending[sku]
            elif sku in fresh:
                pending[sku] = (_version(after.get(sku)), fresh[sku])
            else:
                del pending[sku]
        if not pending:
            break
    return repaired


def _version(cached: GateReading | None) -> int | None:
    return None if cached is None else cached.version


def find_orphans(
    records: ReconcileStore, gate: ReconcileGate, warehouse: str, skus: Sequence[str]
) -> Iterator[Drift]:
    """Those of ``skus`` (gate levels) with no database balance (reported, never removed)."""
    missing = sorted(set(skus) - records.existing_skus(warehouse, skus))
    if not missing:
        return
    cached = gate.read(warehouse, missing)
    for sku in missing:
        yield _with_gate(Drift(GATE_ORPHAN, warehouse, sku), cached.get(sku))


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


__all__ = [
    "Balance",
    "Drift",
    "ExpiredHold",
    "ReconcileGate",
    "ReconcileStore",
    "ReportStore",
    "RunRecord",
    "compare_gate",
    "expire_holds",
    "reconcile",
    "render_report",
]
