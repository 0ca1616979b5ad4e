"""The order path on the real stores (MariaDB and SQLite, real Redis): races, idempotency,
compensation and degraded mode, with the invariants checked after each."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import sqlalchemy as sa

from psi_local.invariants import balance_findings, gate_findings
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.redis_journal import RedisJournal
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain.errors import IdempotencyConflict, InsufficientStock, StoreUnavailable
from shared_lib.domain.model import (
    CancelOrder,
    Line,
    PlaceOrder,
    ReceiveStock,
    RequestMeta,
    ShipOrder,
)
from shared_lib.services import Deps, cancel_order, place_order, receive_stock, ship_order
from shared_lib.services.cache import GateRebuilder, rebuild_all
from tests.conftest import seed_catalog
from tests.support import wait_until

BUYERS = 200
UNITS = 100


@pytest.fixture(params=["one_by_one", "group_commit"])
def deps(
    request: pytest.FixtureRequest, engine: sa.Engine, tx: SqlTransactions, gate: RedisGate
) -> Deps:
    """Orders commit one by one, or in batches through the gate's journal."""
    seed_catalog(engine, {"HOT": 0, "A": 0, "B": 0}, ("W1",))
    rebuild_all(tx, gate)
    return Deps(
        tx=tx, gate=gate, journal=RedisJournal(gate) if request.param == "group_commit" else None
    )


def meta(key: str) -> RequestMeta:
    return RequestMeta(idempotency_key=key, actor="test")


def receive(deps: Deps, key: str, **qty: int) -> None:
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    receive_stock(deps, ReceiveStock("W1", lines), meta(key))


def db_level(engine: sa.Engine, sku: str) -> tuple[int, int]:
    s = t.stock_levels
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(s.c.on_hand, s.c.reserved).where(s.c.sku == sku, s.c.warehouse == "W1")
        ).one()
    return int(row.on_hand), int(row.reserved)


def assert_invariants(engine: sa.Engine, gate: RedisGate | None = None) -> None:
    """available >= 0 everywhere; balance == ledger sum; gate == database when settled."""
    balances = balance_findings(engine)
    assert balances.ok, balances.sample
    if gate is not None:
        cached = gate_findings(engine, gate, settled=True)
        assert cached.ok, cached.sample


def race(deps: Deps, buyers: int = BUYERS) -> Counter[str]:
    start = threading.Barrier(min(buyers, 50))

    def buy(i: int) -> str:
        if i < 50:
            start.wait(timeout=30)
        try:
            place_order(deps, PlaceOrder(f"o{i}", "W1", (Line("HOT", 1),)), meta(f"buy-{i}"))
            return "ok"
        except InsufficientStock:
            return "short"

    with ThreadPoolExecutor(max_workers=50) as pool:
        return Counter(pool.map(buy, range(buyers)))


def test_200_buyers_for_100_units_exactly_100_win(deps: Deps, engine: sa.Engine, gate: RedisGate):
    receive(deps, "stock", HOT=UNITS)
    outcome = race(deps)
    assert outcome == {"ok": UNITS, "short": BUYERS - UNITS}
    assert db_level(engine, "HOT") == (UNITS, UNITS)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.orders)).scalar() == UNITS
    assert_invariants(engine, gate)


def test_degraded_mode_race_never_oversells(engine: sa.Engine, tx: SqlTransactions, private_redis):
    seed_catalog(engine, {"HOT": 0}, ("W1",))
    gate = RedisGate(redis.Redis(port=private_redis.port, socket_timeout=0.3), prefix="deg")
    rebuild_all(tx, gate)
    deps = Deps(tx=tx, gate=gate)
    receive(deps, "stock", HOT=UNITS)
    private_redis.stop()
    outcome = race(deps)
    assert outcome == {"ok": UNITS, "short": BUYERS - UNITS}
    assert db_level(engine, "HOT") == (UNITS, UNITS)
    assert_invariants(engine)

    # back on Redis only after a rebuild from the database
    private_redis.start()
    rebuilder = GateRebuilder(tx, gate)
    deps.on_gate_not_ready = rebuilder.request
    gate._down_until = 0.0
    with pytest.raises(InsufficientStock):
        place_order(deps, PlaceOrder("late", "W1", (Line("HOT", 1),)), meta("late"))
    wait_until(lambda: gate.is_ready("W1"), timeout=10, what="gate rebuilt")
    assert_invariants(engine, gate)


def test_multi_line_order_with_one_short_line_reserves_nothing(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    receive(deps, "stock", A=10, B=2)
    with pytest.raises(InsufficientStock) as err:
        place_order(deps, PlaceOrder("o1", "W1", (Line("A", 5), Line("B", 3))), meta("o1"))
    assert err.value.details["shortfalls"] == [{"sku": "B", "requested": 3, "available": 2}]
    assert db_level(engine, "A") == (10, 0) and db_level(engine, "B") == (2, 0)
    assert gate.read("W1", ["A"])["A"].available == 10
    assert_invariants(engine, gate)


def test_the_same_key_three_times_one_effect_same_answer(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    receive(deps, "stock", A=10)
    command = PlaceOrder("o1", "W1", (Line("A", 3),))
    answers = [place_order(deps, command, meta("same")) for _ in range(3)]
    assert answers[0].body == answers[1].body == answers[2].body
    assert [a.replayed for a in answers] == [False, True, True]
    assert db_level(engine, "A") == (10, 3)
    with pytest.raises(IdempotencyConflict):
        place_order(deps, PlaceOrder("o1", "W1", (Line("A", 4),)), meta("same"))
    assert db_level(engine, "A") == (10, 3)
    assert_invariants(engine, gate)


def test_database_failure_after_the_redis_hold_releases_it(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    receive(deps, "stock", A=10)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_orders BEFORE INSERT ON orders "
                "BEGIN SELECT RAISE(ABORT, 'orders table refuses writes'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_orders BEFORE INSERT ON orders FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'orders table refuses writes'"
            )
    # one by one the database's error reaches the caller; a batch answers 503 (retry)
    refused = StoreUnavailable if deps.journal else sa.exc.DBAPIError
    with pytest.raises(refused):
        place_order(deps, PlaceOrder("o1", "W1", (Line("A", 4),)), meta("o1"))
    cached = gate.read("W1", ["A"])["A"]
    assert cached.held == 0 and cached.available == 10
    assert db_level(engine, "A") == (10, 0)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fail_orders")
    out = place_order(deps, PlaceOrder("o1", "W1", (Line("A", 4),)), meta("o1"))
    assert out.body["status"] == "reserved"
    assert_invariants(engine, gate)


def test_order_lifecycle_keeps_the_stores_in_step(deps: Deps, engine: sa.Engine, gate: RedisGate):
    receive(deps, "stock", A=10, B=10)
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 2), Line("B", 1))), meta("o1"))
    place_order(deps, PlaceOrder("o2", "W1", (Line("A", 3),)), meta("o2"))
    ship_order(deps, ShipOrder("o1"), meta("s1"))
    cancel_order(deps, CancelOrder("o2"), meta("c2"))
    assert db_level(engine, "A") == (8, 0) and db_level(engine, "B") == (9, 0)
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(t.orders.c.order_id, t.orders.c.status)).all())
        topics = Counter(conn.execute(sa.select(t.outbox.c.topic)).scalars())
    assert statuses == {"o1": "shipped", "o2": "cancelled"}
    assert topics["psi.order.created"] == 2 and topics["psi.order.shipped"] == 1
    assert topics["psi.order.cancelled"] == 1
    assert_invariants(engine, gate)
