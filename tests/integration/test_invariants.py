"""The invariant checks the tests, the fault tests and the bench share: each rule finds what
breaks it, on the real stores."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from psi_local.invariants import balance_findings, gate_findings
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain.model import Line, ReceiveStock, RequestMeta
from shared_lib.services import Deps, receive_stock
from shared_lib.services.cache import rebuild_all
from tests.conftest import seed_catalog

pytestmark = pytest.mark.integration


@pytest.fixture
def stocked(engine: sa.Engine, tx: SqlTransactions, gate: RedisGate) -> sa.Engine:
    seed_catalog(engine, {"A": 0, "B": 0}, ("W1",))
    deps = Deps(tx=tx, gate=gate)
    command = ReceiveStock("W1", (Line("A", 5), Line("B", 3)))
    receive_stock(deps, command, RequestMeta("inv-1"))
    rebuild_all(tx, gate)
    return engine


def test_a_consistent_system_has_no_findings(stocked: sa.Engine, gate: RedisGate) -> None:
    balances = balance_findings(stocked)
    cached = gate_findings(stocked, gate, settled=True)
    assert (balances.checked, balances.ok) == (2, True), balances.sample
    assert (cached.checked, cached.ok) == (2, True), cached.sample


def test_each_broken_balance_rule_is_found(stocked: sa.Engine) -> None:
    s = t.stock_levels
    with stocked.begin() as conn:
        # a balance the ledger does not add up to (a negative one the schema itself refuses)
        conn.execute(sa.update(s).where(s.c.sku == "A").values(on_hand=6))
    found = balance_findings(stocked)
    assert found.broken == {"ledger": 1}, found.sample
    assert found.sample == ["W1/A: balance (6, 0) != ledger (5, 0)"]


def test_each_broken_gate_rule_is_found(stocked: sa.Engine, gate: RedisGate) -> None:
    tag = gate.tag("W1")
    gate.client.hset(f"{tag}:lvl:A", "oh", 99)  # a level the database does not have
    gate.client.hset(f"{tag}:lvl:B", "hd", 2)  # units held by no registered hold
    found = gate_findings(stocked, gate, settled=True)
    assert found.broken == {"mismatch": 1, "held": 1}, found.sample
    gate.client.delete(f"{tag}:ready")
    assert gate_findings(stocked, gate, settled=True).broken["not_ready"] == 1
