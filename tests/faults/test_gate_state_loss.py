"""The Redis gate losing its state (FLUSHALL, a restart) at the worst moment, made
deterministic on a PRIVATE redis-server, on MariaDB and SQLite.

1. A flush that lands while a warehouse is being rebuilt must not leave the gate marked
   ready with levels missing: the gate answers ``short`` for a missing level, so orders for
   stock the database has would be refused (409 insufficient_stock) until a reconcile.
   (Found by this suite; fixed in ``RedisGate.generation`` / ``_MARK_READY``.)
2. A replay of a request that took stock, after the gate lost the request's marker and the
   warehouse was rebuilt, answers the first answer, and the same key with another body is a
   reuse (409 idempotency_key_reused), not a shortage: the rebuild restores the markers of
   the requests the database recorded (``cache.restore_markers``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import sqlalchemy as sa

from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain.errors import IdempotencyConflict
from shared_lib.domain.model import IssueStock, Line, PlaceOrder, ReceiveStock, RequestMeta
from shared_lib.services import Deps, cache, issue_stock, place_order, receive_stock
from shared_lib.services.cache import GateRebuilder, rebuild_all, rebuild_warehouse
from shared_lib.services.ports import StockStore
from tests.conftest import PrivateRedis, seed_catalog
from tests.support import TcpProxy, wait_until

T = TypeVar("T")


class FlushAfterFirstPage:
    """Transactions that FLUSHALL the private Redis once the rebuild's first page was read
    and loaded, so the flush lands between the rebuild's loads."""

    def __init__(self, tx: SqlTransactions, client: redis.Redis) -> None:
        self.tx = tx
        self.client = client
        self.calls = 0

    def run(self, work: Callable[[StockStore], T]) -> T:
        self.calls += 1
        if self.calls == 2:  # page 1 is in Redis by now
            self.client.flushall()
        return self.tx.run(work)


@pytest.fixture
def gate_client(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    client = redis.Redis(port=private_redis.port, socket_timeout=2)
    yield client
    client.close()


def test_a_flush_during_a_rebuild_never_leaves_a_partial_gate_ready(
    engine: sa.Engine,
    tx: SqlTransactions,
    gate_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed_catalog(engine, {"A": 0, "B": 0, "C": 0}, ("W1",))
    lines = (Line("A", 5), Line("B", 5), Line("C", 5))
    receive_stock(Deps(tx=tx), ReceiveStock("W1", lines), RequestMeta("opening"))
    gate = RedisGate(gate_client, prefix="race")
    monkeypatch.setattr(cache, "PAGE", 1)

    rebuild_warehouse(FlushAfterFirstPage(tx, gate_client), gate, "W1")

    if gate.is_ready("W1"):
        assert set(gate.read("W1", ["A", "B", "C"])) == {"A", "B", "C"}, (
            "the gate was marked ready with levels lost in the flush"
        )
    # whatever state the gate is in, an order for stock the database has is accepted
    deps = Deps(tx=tx, gate=gate)
    out = place_order(deps, PlaceOrder("o1", "W1", (Line("A", 1),)), RequestMeta("o1"))
    assert out.body["status"] == "reserved"


def test_a_replay_after_the_gate_lost_its_state_answers_the_first_answer(
    engine: sa.Engine, tx: SqlTransactions, gate_client: redis.Redis
) -> None:
    seed_catalog(engine, {"A": 0}, ("W1",))
    gate = RedisGate(gate_client, prefix="amnesia")
    rebuild_all(tx, gate)
    deps = Deps(tx=tx, gate=gate)
    receive_stock(deps, ReceiveStock("W1", (Line("A", 8),)), RequestMeta("opening"))
    issue = IssueStock("W1", (Line("A", 5),), "scrap")
    first = issue_stock(deps, issue, RequestMeta("issue-1"))
    assert first.body["levels"][0]["available"] == 3

    gate_client.flushall()
    rebuild_all(tx, gate)
    # the stock is gone: only the marker can tell the replay from a new request
    issue_stock(deps, IssueStock("W1", (Line("A", 3),), "scrap"), RequestMeta("issue-2"))
    again = issue_stock(deps, issue, RequestMeta("issue-1"))

    assert again.replayed and again.body == first.body
    with pytest.raises(IdempotencyConflict):
        issue_stock(deps, IssueStock("W1", (Line("A", 1),), "other"), RequestMeta("issue-1"))


def test_a_failover_to_a_replica_that_missed_writes_is_noticed_and_healed(
    engine: sa.Engine, tx: SqlTransactions, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Redis fails over, behind the same address, to a replica that missed the last writes:
    its levels are old and a request's marker is gone. The healer notices the new server and
    rebuilds every warehouse: levels from the database, markers from its records."""
    (tmp_path / "replica").mkdir()
    replica = PrivateRedis(tmp_path / "replica")
    replica.start()
    try:
        replica_client = redis.Redis(port=replica.port, socket_timeout=2)
        replica_client.replicaof("127.0.0.1", private_redis.port)
        with TcpProxy("127.0.0.1", private_redis.port) as proxy:
            client = redis.Redis(port=proxy.port, socket_timeout=2)
            gate = RedisGate(client, prefix="failover")
            healer = GateRebuilder(tx, gate)
            seed_catalog(engine, {"A": 0}, ("W1",))
            deps = Deps(tx=tx, gate=gate)
            receive_stock(deps, ReceiveStock("W1", (Line("A", 8),)), RequestMeta("opening"))
            healer.heal()
            healer.join()
            assert gate.is_ready("W1")

            def caught_up() -> bool:
                master = client.info("replication")["master_repl_offset"]
                replicated = replica_client.info("replication").get("slave_repl_offset", -1)
                return replicated == master

            wait_until(caught_up, timeout=20, what="the replica to catch up")
            replica_client.replicaof("no", "one")  # cut off: the next writes miss it
            issue = IssueStock("W1", (Line("A", 5),), "scrap")
            first = issue_stock(deps, issue, RequestMeta("issue-1"))
            proxy.retarget("127.0.0.1", replica.port)  # the failover
            assert gate.read("W1", ["A"])["A"].available == 8  # old, but marked ready

            wait_until(
                lambda: healer.heal() == [] and gate.is_ready("W1"),
                timeout=10,
                what="the healer to rebuild W1",
            )
            healer.join()
            assert gate.read("W1", ["A"])["A"].available == 3
            again = issue_stock(deps, issue, RequestMeta("issue-1"))
            assert again.replayed and again.body == first.body
    finally:
        replica.stop()
