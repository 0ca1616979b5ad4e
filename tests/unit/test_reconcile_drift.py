"""Reconcile's drift checks on in-memory fakes: drift kinds, compare-and-set repair, runs
without or with an unreachable gate, balances in pages read ahead, and a failing store."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from psi_local.events_schema import validate_event
from shared_lib import topics
from shared_lib.domain.model import Level, Line, PlaceOrder, RequestMeta
from shared_lib.services import Deps, place_order
from shared_lib.services.reconcile import FAILED, FINISHED, RESULT_KEYS
from shared_lib.services.reconcile.ahead import ReadAhead
from tests.fakes import FakeTransactions
from tests.fakes_reconcile import FakeReconcileStore, MemoryReports, ReconcileMemoryGate
from tests.unit.reconcile_support import (
    START,
    assert_gate_equals_database,
    clock,
    completed_events,
    deps,
    fake_tx,
    gate,
    receive,
    records,
    report_of,
    reports,
    run,
    tx,
)

# the fixtures, found by pytest in this module
__all__ = ["clock", "deps", "gate", "records", "reports", "tx"]


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
