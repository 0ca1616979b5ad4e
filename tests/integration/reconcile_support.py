"""The reconcile test harness on the real stores: a seeded catalog with stock in two
warehouses, the SQL run records, local reports, and reading levels and runs back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.reports import LocalReports
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_reconcile import SqlReconcileStore
from shared_lib.domain.model import Line, ReceiveStock, RequestMeta
from shared_lib.services import Deps, receive_stock
from shared_lib.services.cache import rebuild_all
from shared_lib.services.reconcile import ReportStore, reconcile
from tests.conftest import seed_catalog

SKUS = ("A", "B", "C", "D")


@pytest.fixture
def deps(engine: sa.Engine, tx: SqlTransactions, gate: RedisGate) -> Deps:
    seed_catalog(engine, dict.fromkeys(SKUS, 0), ("W1", "W2"))
    rebuild_all(tx, gate)
    deps = Deps(tx=tx, gate=gate, source="/psi/reconcile")
    receive(deps, "W1", "in-1", A=10, B=5, C=7, D=1)
    receive(deps, "W2", "in-2", A=3, B=4)
    return deps


@pytest.fixture
def records(engine: sa.Engine) -> SqlReconcileStore:
    return SqlReconcileStore(engine)


@pytest.fixture
def reports(tmp_path: Path) -> LocalReports:
    return LocalReports(tmp_path / "reports")


def receive(deps: Deps, warehouse: str, key: str, **qty: int) -> None:
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    receive_stock(deps, ReceiveStock(warehouse, lines), RequestMeta(key, "test"))


def run(
    deps: Deps,
    records: SqlReconcileStore,
    gate: RedisGate | None,
    reports: ReportStore,
    key: str = "nightly",
    **options: Any,
) -> dict[str, Any]:
    return reconcile(deps, records, gate, reports, run_key=key, **options)


def run_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t.reconciliation_runs)))


def db_level(engine: sa.Engine, warehouse: str, sku: str) -> tuple[int, int, int]:
    s = t.stock_levels
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(s.c.on_hand, s.c.reserved, s.c.version).where(
                s.c.warehouse == warehouse, s.c.sku == sku
            )
        ).one()
    return int(row.on_hand), int(row.reserved), int(row.version)


def gate_level(gate: RedisGate, warehouse: str, sku: str) -> tuple[int, int, int]:
    cached = gate.read(warehouse, [sku])[sku]
    return cached.on_hand, cached.reserved, cached.version


def meta(key: str) -> RequestMeta:
    return RequestMeta(key, "test")
