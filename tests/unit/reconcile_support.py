"""The reconcile test harness on in-memory fakes: a catalog with stock in two warehouses, a
fixed clock, the fake run records and reports, and reading reports and events back."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

import pytest

from shared_lib import topics
from shared_lib.domain.model import Line, Product, ReceiveStock, RequestMeta, Warehouse
from shared_lib.services import Deps, receive_stock
from shared_lib.services.cache import rebuild_warehouse
from shared_lib.services.reconcile import reconcile
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
