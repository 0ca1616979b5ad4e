"""Reconcile on in-memory fakes: drift kinds, compare-and-set repair, hold expiry, one run
per key, the report and the completion event."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from psi_local.events_schema import validate_event
from shared_lib import topics
from shared_lib.adapters.outbox import backoff_seconds
from shared_lib.adapters.reports import LocalReports, S3Reports, reports_from_settings
from shared_lib.config import load_settings
from shared_lib.domain import trace
from shared_lib.domain.errors import InvalidRequest, RequestInProgress
from shared_lib.domain.model import (
    Level,
    Line,
    OrderStatus,
    PlaceOrder,
    Product,
    ReceiveStock,
    RequestMeta,
    Warehouse,
)
from shared_lib.services import Deps, place_order, receive_stock
from shared_lib.services.cache import rebuild_warehouse
from shared_lib.services.reconcile import (
    FAILED,
    FINISHED,
    RESULT_KEYS,
    RunRecord,
    reconcile,
)
from shared_lib.services.reconcile.ahead import ReadAhead
from shared_lib.services.reconcile.drift import DRIFT_COLUMNS, Drift, DriftLog
from tests.fakes import FakeTransactions
from tests.fakes_reconcile import Clock, FakeReconcileStore, MemoryReports, ReconcileMemoryGate

START = datetime(2025, 1, 2, 3, 4, 5)


@pytest.fixture
def tx() -> FakeTransactions:
    tx = FakeTransactions()
    for sku in ("A", "B", "C"):
        tx.state.products[sku] = Product(sku, f"product {sku}")
    for code in ("W1", "W2"):
        tx.state.warehouses[code] = Warehouse(code, code)
    return tx


@pytest.fixture
def gate(tx: FakeTransactions) -> ReconcileMemoryGate:
    gate = ReconcileMemoryGate()
    for wh in ("W1", "W2"):
        rebuild_warehouse(tx, gate, wh)
    return gate


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def deps(tx: FakeTransactions, gate: ReconcileMemoryGate, clock: Clock) -> Deps:
    deps = Deps(tx=tx, gate=gate, clock=clock, source="/psi/reconcile")
    receive(deps, "W1", "in-1", A=10, B=5, C=7)
    receive(deps, "W2", "in-2", A=3)
    return deps


@pytest.fixture
def records(tx: FakeTransactions) -> FakeReconcileStore:
    return FakeReconcileStore(tx)


@pytest.fixture
def reports() -> MemoryReports:
    return MemoryReports()


def receive(deps: Deps, warehouse: str, key: str, **qty: int) -> None:
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    receive_stock(deps, ReceiveStock(warehouse, lines), RequestMeta(key, "test"))


def run(
    deps: Deps,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate | None,
    reports: MemoryReports,
    key: str = "nightly-2025-01-02",
    **options: Any,
) -> dict[str, Any]:
    return reconcile(deps, records, gate, reports, run_key=key, **options)


def report_of(
    reports: MemoryReports, result: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    json_bytes, csv_bytes, _ = reports.reports[result["run_id"]]
    return json.loads(json_bytes), list(csv.DictReader(io.StringIO(csv_bytes.decode())))


def fake_tx(deps: Deps) -> FakeTransactions:
    assert isinstance(deps.tx, FakeTransactions)
    return deps.tx


def completed_events(tx: FakeTransactions) -> list[tuple[str, str, dict[str, Any]]]:
    return [e for e in tx.state.outbox if e[0] == topics.RECONCILE_COMPLETED]


def assert_gate_equals_database(tx: FakeTransactions, gate: ReconcileMemoryGate) -> None:
    for (wh, sku), level in tx.state.levels.items():
        cached = gate.read(wh, [sku])[sku]
        assert (cached.on_hand, cached.reserved, cached.version) == (
            level.on_hand,
            level.reserved,
            level.version,
        ), (wh, sku)


def test_stores_in_step_find_no_drift_and_emit_a_valid_event(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    result = run(deps, records, gate, reports)

    assert tuple(result) == RESULT_KEYS
    assert result["checked"] == 4
    assert (result["drift_found"], result["drift_repaired"], result["expired_holds"]) == (0, 0, 0)
    assert result["report_uri"] == f"memory://reports/{result['run_id']}.json"
    ((topic, key, event),) = completed_events(fake_tx(deps))
    assert (topic, key) == (topics.RECONCILE_COMPLETED, "nightly-2025-01-02")
    validate_event(topics.RECONCILE_COMPLETED, event)
    assert event["data"] == result and event["subject"] == result["run_id"]
    summary, rows = report_of(reports, result)
    assert summary["checked"] == 4 and summary["drift"] == [] and rows == []
    assert summary["gate"] == "checked" and summary["repair"] is True
    assert reports.reports[result["run_id"]][2] == START
    assert records.runs["nightly-2025-01-02"].status == FINISHED


def test_gate_drift_is_found_and_repaired_from_the_database(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    gate.levels[("W1", "A")]["oh"] = 99  # changed value, same version
    del gate.levels[("W1", "B")]  # lost key
    gate.levels[("W2", "A")].update(oh=1, v=0)  # stale version
    gate.levels[("W1", "GHOST")] = {"oh": 4, "rs": 0, "v": 3, "hd": 0}  # no database row

    result = run(deps, records, gate, reports)

    assert (result["drift_found"], result["drift_repaired"]) == (4, 3)
    summary, rows = report_of(reports, result)
    assert Counter((r["kind"], r["repaired"]) for r in summary["drift"]) == {
        ("gate_mismatch", True): 2,
        ("gate_missing", True): 1,
        ("gate_orphan", False): 1,
    }
    mismatch = next(r for r in summary["drift"] if r["sku"] == "A" and r["warehouse"] == "W1")
    assert (mismatch["gate_on_hand"], mismatch["db_on_hand"]) == (99, 10)
    assert [r["kind"] for r in rows] == [r["kind"] for r in summary["drift"]]
    assert rows[0]["repaired"] in ("True", "False")
    del gate.levels[("W1", "GHOST")]
    assert_gate_equals_database(fake_tx(deps), gate)


def test_without_repair_drift_is_only_reported(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    gate.levels[("W1", "A")]["oh"] = 99
    del gate.levels[("W1", "B")]

    result = run(deps, records, gate, reports, repair=False)

    assert (result["drift_found"], result["drift_repaired"]) == (2, 0)
    assert gate.levels[("W1", "A")]["oh"] == 99 and ("W1", "B") not in gate.levels
    assert gate.repairs == 0


def test_a_ledger_mismatch_is_reported_and_never_repaired(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    bad = tx.state.levels[("W1", "C")]
    tx.state.levels[("W1", "C")] = Level("C", "W1", 8, 0, bad.version)  # no ledger row says so

    result = run(deps, records, gate, reports)

    summary, _ = report_of(reports, result)
    ledger = [r for r in summary["drift"] if r["kind"] == "ledger_mismatch"]
    assert ledger == [
        {
            "kind": "ledger_mismatch",
            "warehouse": "W1",
            "sku": "C",
            "db_on_hand": 8,
            "db_reserved": 0,
            "db_version": bad.version,
            "gate_on_hand": None,
            "gate_reserved": None,
            "gate_version": None,
            "ledger_on_hand": 7,
            "ledger_reserved": 0,
            "gate_held": None,
            "expected_held": None,
            "repaired": False,
        }
    ]
    assert tx.state.levels[("W1", "C")].on_hand == 8  # the record is left for a person
    # the gate follows the system of record even so
    assert (result["drift_found"], result["drift_repaired"]) == (2, 1)
    assert gate.read("W1", ["C"])["C"].on_hand == 8


def test_a_settle_racing_the_repair_counts_as_repaired_when_the_gate_then_matches(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    gate.levels[("W1", "A")]["oh"] = 99

    def traffic() -> None:
        gate.before_repair = None
        receive(deps, "W1", "racing", A=1)  # commits and settles a newer version

    gate.before_repair = traffic

    result = run(deps, records, gate, reports)

    assert (result["drift_found"], result["drift_repaired"]) == (1, 1)
    assert gate.repairs == 0  # the compare-and-set missed: traffic put the right value there
    assert gate.read("W1", ["A"])["A"].on_hand == 11 == tx.state.levels[("W1", "A")].on_hand


def test_a_gate_that_keeps_moving_away_is_reported_unrepaired(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    gate.levels[("W1", "A")]["oh"] = 99

    def corrupt() -> None:
        gate.levels[("W1", "A")]["v"] += 100

    gate.before_repair = corrupt

    result = run(deps, records, gate, reports)

    assert (result["drift_found"], result["drift_repaired"]) == (1, 0)
    summary, _ = report_of(reports, result)
    assert summary["drift"][0]["repaired"] is False


def test_stale_holds_are_expired_and_released_in_both_stores(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 4),), hold_seconds=60), RequestMeta("o1"))
    place_order(deps, PlaceOrder("o2", "W1", (Line("A", 2),), hold_seconds=3600), RequestMeta("o2"))

    result = run(deps, records, gate, reports, now=START + timedelta(minutes=2))

    assert result["expired_holds"] == 1
    assert tx.state.orders["o1"].status is OrderStatus.EXPIRED
    assert tx.state.orders["o2"].status is OrderStatus.RESERVED
    assert tx.state.levels[("W1", "A")].reserved == 2
    assert "expire:o1" in tx.state.records
    assert_gate_equals_database(tx, gate)
    assert gate.available("W1", "A") == 8
    again = run(deps, records, gate, reports, key="later", now=START + timedelta(minutes=3))
    assert again["expired_holds"] == 0


def test_an_aware_now_is_taken_as_utc(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 4),), hold_seconds=60), RequestMeta("o1"))
    aware = (START + timedelta(minutes=2)).replace(tzinfo=UTC)
    assert run(deps, records, gate, reports, now=aware)["expired_holds"] == 1


def test_the_same_run_key_runs_once_and_answers_the_same(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    gate.levels[("W1", "A")]["oh"] = 99
    first = run(deps, records, gate, reports)
    gate.levels[("W1", "A")]["oh"] = 42

    second = run(deps, records, gate, reports)

    assert second == first and first["drift_repaired"] == 1
    assert gate.levels[("W1", "A")]["oh"] == 42  # no second run
    assert len(completed_events(tx)) == 1 and len(reports.reports) == 1


def test_a_running_key_is_in_progress_until_it_goes_stale(
    deps: Deps,
    clock: Clock,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    records.claim("k", "other-replica", True, START, START - timedelta(minutes=30))

    with pytest.raises(RequestInProgress):
        run(deps, records, gate, reports, key="k")
    clock.now = START + timedelta(minutes=31)
    result = run(deps, records, gate, reports, key="k")

    assert result["run_id"] != "other-replica"
    assert records.runs["k"].status == FINISHED


def test_a_failed_run_is_recorded_and_retried_by_the_next_delivery(
    deps: Deps,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any) -> list[Any]:
        raise RuntimeError("database went away")

    with monkeypatch.context() as patch:
        patch.setattr(records, "balances_page", broken)
        with pytest.raises(RuntimeError):
            run(deps, records, gate, reports, key="k")
    failed = records.runs["k"]
    assert failed.status == FAILED and "database went away" in (failed.error or "")

    result = run(deps, records, gate, reports, key="k")

    assert result["checked"] == 4 and result["run_id"] != failed.run_id


def test_a_run_taken_over_meanwhile_answers_with_the_winner(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    winner: dict[str, Any] = {}

    def taken_over() -> None:
        records.before_finish = None
        records.runs["k"] = RunRecord(
            "winner", "k", FINISHED, True, START, START, checked=4, report_uri="memory://w"
        )
        winner.update(records.runs["k"].result())

    records.before_finish = taken_over

    assert run(deps, records, gate, reports, key="k") == winner
    assert completed_events(fake_tx(deps)) == []


def test_without_a_gate_the_ledger_and_the_holds_are_still_checked(
    deps: Deps, tx: FakeTransactions, records: FakeReconcileStore, reports: MemoryReports
) -> None:
    deps.gate = None
    place_order(deps, PlaceOrder("o1", "W1", (Line("B", 1),), hold_seconds=1), RequestMeta("o1"))
    tx.state.levels[("W1", "C")] = Level("C", "W1", 1, 0, 9)

    result = run(deps, records, None, reports, now=START + timedelta(seconds=5))

    assert (result["checked"], result["drift_found"], result["expired_holds"]) == (4, 1, 1)
    summary, _ = report_of(reports, result)
    assert summary["gate"] == "disabled"
    assert summary["drift"][0]["kind"] == "ledger_mismatch"


def test_an_unreachable_gate_is_skipped_and_said_so(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    gate.levels[("W1", "A")]["oh"] = 99
    gate.reachable = False

    result = run(deps, records, gate, reports)

    summary, _ = report_of(reports, result)
    assert summary["gate"] == "unreachable" and result["drift_found"] == 0


def test_balances_stream_in_pages_and_progress_is_reported(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    seen: list[tuple[int, int | None]] = []

    result = run(
        deps, records, gate, reports, batch_size=2, on_progress=lambda d, t: seen.append((d, t))
    )

    assert result["checked"] == 4
    assert seen == [(0, 4), (2, 4), (3, 4), (4, 4)]
    assert records.pages == 5  # W1: 2 + 1 + empty, W2: 1 + empty


def test_orphans_in_every_chunk_and_warehouse_are_reported_alongside_the_scan(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    ghosts = [("W1", "GHOST1"), ("W1", "GHOST2"), ("W2", "GHOST3")]
    for key in ghosts:
        gate.levels[key] = {"oh": 4, "rs": 0, "v": 3, "hd": 0}
    gate.levels[("W2", "A")]["oh"] = 99

    result = run(deps, records, gate, reports, batch_size=1)

    assert (result["checked"], result["drift_found"], result["drift_repaired"]) == (4, 4, 1)
    summary, _ = report_of(reports, result)
    orphans = [(r["warehouse"], r["sku"]) for r in summary["drift"] if r["kind"] == "gate_orphan"]
    assert sorted(orphans) == ghosts


def test_a_store_failing_mid_scan_fails_the_run_and_stops_its_workers(
    deps: Deps,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_read = gate.read
    reads = 0

    def flaky_read(warehouse: str, skus: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise RuntimeError("redis went away")
        return real_read(warehouse, skus)

    def broken_skus(warehouse: str) -> Any:
        raise RuntimeError("scan failed")
        yield

    with monkeypatch.context() as patch:
        patch.setattr(gate, "read", flaky_read)
        with pytest.raises(RuntimeError, match="redis went away"):
            run(deps, records, gate, reports, key="read", batch_size=1)
        patch.setattr(gate, "read", real_read)
        patch.setattr(gate, "skus", broken_skus)
        with pytest.raises(RuntimeError, match="scan failed"):
            run(deps, records, gate, reports, key="scan", batch_size=1)

    assert records.runs["read"].status == records.runs["scan"].status == FAILED
    assert not [t for t in threading.enumerate() if t.name == "reconcile-ahead"]


def test_read_ahead_stays_bounded_and_stops_when_closed() -> None:
    produced = 0

    def endless() -> Iterator[int]:
        nonlocal produced
        while True:
            produced += 1
            yield produced

    with contextlib.closing(ReadAhead(endless(), depth=2)) as ahead:
        assert [next(ahead) for _ in range(5)] == [1, 2, 3, 4, 5]
    # at most the 5 taken, the 2 queued and the 1 being put when it was closed
    assert produced <= 8
    assert list(ahead) == [] and list(ahead.available()) == []


def test_a_warehouse_off_the_fast_path_is_rebuilt(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    gate.invalidate("W2")
    del gate.levels[("W2", "A")]

    reported = run(deps, records, gate, reports, key="look", repair=False)
    assert (reported["drift_found"], reported["drift_repaired"]) == (1, 0)
    assert not gate.is_ready("W2")

    result = run(deps, records, gate, reports, key="fix")

    # rebuilding a gate is upkeep, not a stock difference: no drift row, its own counter
    summary, _ = report_of(reports, result)
    assert summary["drift"] == [] and result["drift_found"] == 0
    assert result["gates_rebuilt"] == summary["gates_rebuilt"] == 1
    assert gate.is_ready("W2")
    assert_gate_equals_database(tx, gate)


def test_a_report_that_cannot_be_written_leaves_the_uri_empty(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    reports.fail_with = OSError("bucket gone")

    result = run(deps, records, gate, reports)

    assert result["report_uri"] is None
    assert "bucket gone" in (records.runs["nightly-2025-01-02"].error or "")
    ((_, _, event),) = completed_events(tx)
    validate_event(topics.RECONCILE_COMPLETED, event)


def test_redrive_is_counted_and_called_again_for_the_completion_event(
    deps: Deps, records: FakeReconcileStore, gate: ReconcileMemoryGate, reports: MemoryReports
) -> None:
    calls: list[int] = []

    def redrive() -> int:
        calls.append(len(completed_events(fake_tx(deps))))
        return 7

    result = run(deps, records, gate, reports, redrive=redrive)

    assert result["outbox_redriven"] == 7
    assert calls == [0, 1]  # once in the run, once after the completion event was written


@pytest.mark.parametrize("key", ["", "x" * 101])
def test_the_run_key_is_validated(
    deps: Deps,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
    key: str,
) -> None:
    with pytest.raises(InvalidRequest):
        run(deps, records, gate, reports, key=key)


# -- report stores and backoff ----------------------------------------------------------


def test_local_reports_are_written_by_date_and_run(tmp_path: Path) -> None:
    store = LocalReports(tmp_path / "reports")
    drift = DriftLog()
    drift.add(Drift("gate_orphan", "W1", "A", gate_on_hand=3))

    uri = store.put("run-1", {"a": 1}, drift, at=START)

    target = tmp_path / "reports" / "reconcile" / "2025-01-02" / "run-1.json"
    assert uri == target.resolve().as_uri()
    document = json.loads(target.read_bytes())
    assert document["a"] == 1
    assert [(d["kind"], d["sku"], d["gate_on_hand"]) for d in document["drift"]] == [
        ("gate_orphan", "A", 3)
    ]
    table = target.with_suffix(".csv").read_text().splitlines()
    assert table[0].split(",") == list(DRIFT_COLUMNS)
    assert table[1].startswith("gate_orphan,W1,A,")
    assert sorted(p.name for p in target.parent.iterdir()) == ["run-1.csv", "run-1.json"]


def test_reports_from_settings_picks_s3_when_a_bucket_is_set(tmp_path: Path) -> None:
    s3 = reports_from_settings(
        load_settings(s3_bucket="psi-reports", s3_endpoint="http://127.0.0.1:9000")
    )
    assert isinstance(s3, S3Reports)
    assert (s3.bucket, s3.endpoint_url) == ("psi-reports", "http://127.0.0.1:9000")
    local = reports_from_settings(load_settings(s3_bucket=None, data_dir=tmp_path))
    assert isinstance(local, LocalReports) and local.directory == tmp_path / "reports"


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempts, full in ((1, 1.0), (2, 2.0), (4, 8.0), (20, 300.0)):
        for _ in range(50):
            assert full / 2 <= backoff_seconds(attempts, base=1.0, cap=300.0) <= full


def test_a_traced_run_carries_its_trace_on_every_event_it_causes(
    deps: Deps,
    tx: FakeTransactions,
    records: FakeReconcileStore,
    gate: ReconcileMemoryGate,
    reports: MemoryReports,
) -> None:
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 4),), hold_seconds=60), RequestMeta("o1"))
    caller = trace.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert caller is not None
    span = caller.child()
    before = len(tx.state.outbox)

    run(deps, records, gate, reports, now=START + timedelta(minutes=2), trace=span)

    caused = tx.state.outbox[before:]
    assert {topic for topic, _, _ in caused} >= {
        topics.ORDER_EXPIRED,
        topics.RECONCILE_COMPLETED,
    }
    assert all(event["traceparent"] == span.traceparent for _, _, event in caused)
    for topic, _, event in caused:
        validate_event(topic, event)
