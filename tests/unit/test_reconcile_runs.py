"""Reconcile runs on in-memory fakes: hold expiry, one run per key, failed and taken-over
runs, the report and the completion event, the trace; the report stores and the backoff."""

from __future__ import annotations

import json
from datetime import UTC, timedelta
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
from shared_lib.domain.model import Line, OrderStatus, PlaceOrder, RequestMeta
from shared_lib.services import Deps, place_order
from shared_lib.services.reconcile import FAILED, FINISHED, RunRecord
from shared_lib.services.reconcile.drift import DRIFT_COLUMNS, Drift, DriftLog
from tests.fakes import FakeTransactions
from tests.fakes_reconcile import Clock, FakeReconcileStore, MemoryReports, ReconcileMemoryGate
from tests.unit.reconcile_support import (
    START,
    assert_gate_equals_database,
    clock,
    completed_events,
    deps,
    fake_tx,
    gate,
    records,
    reports,
    run,
    tx,
)

# the fixtures, found by pytest in this module
__all__ = ["clock", "deps", "gate", "records", "reports", "tx"]


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
