"""The Lua gate on the real Redis: all-or-nothing holds, versioned settles, NOSCRIPT, slots."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis
import sqlalchemy as sa
from redis.crc import key_slot

from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain.model import Level, Line
from shared_lib.services.ports import GateAnswer
from tests.support import wait_until


def ready(gate: RedisGate, wh: str, **stock: int) -> None:
    gate.load(wh, [Level(s, wh, q, 0, 1) for s, q in stock.items()])
    assert gate.mark_ready(wh, gate.generation(wh))


def available(gate: RedisGate, wh: str, sku: str) -> int:
    return gate.read(wh, [sku])[sku].available


def test_not_ready_until_rebuilt(gate: RedisGate):
    result = gate.try_hold("W1", "r1", "fp", [Line("A", 1)], 10_000)
    assert result.answer is GateAnswer.NOT_READY


def test_hold_is_all_or_nothing_and_reports_every_short_line(gate: RedisGate):
    ready(gate, "W1", A=5, B=1)
    lines = [Line("A", 2), Line("B", 3), Line("C", 1)]
    result = gate.try_hold("W1", "r1", "fp", lines, 10_000)
    assert result.answer is GateAnswer.SHORT
    assert [(s.sku, s.requested, s.available) for s in result.shortfalls] == [
        ("B", 3, 1),
        ("C", 1, 0),
    ]
    assert result.unknown_skus == ["C"]
    assert available(gate, "W1", "A") == 5 and available(gate, "W1", "B") == 1
    assert gate.client.exists(f"{gate.tag('W1')}:req:r1") == 0


def test_same_request_twice_holds_once_and_another_body_conflicts(gate: RedisGate):
    ready(gate, "W1", A=5)
    first = gate.try_hold("W1", "r1", "fp", [Line("A", 2)], 10_000)
    second = gate.try_hold("W1", "r1", "fp", [Line("A", 2)], 10_000)
    other = gate.try_hold("W1", "r1", "fp2", [Line("A", 1)], 10_000)
    assert (first.answer, second.answer, other.answer) == (
        GateAnswer.HELD,
        GateAnswer.DUPLICATE,
        GateAnswer.CONFLICT,
    )
    assert available(gate, "W1", "A") == 3


def test_settle_drops_the_hold_and_older_versions_never_win(gate: RedisGate):
    ready(gate, "W1", A=5)
    gate.try_hold("W1", "r1", "fp", [Line("A", 2)], 10_000)
    gate.settle("W1", "r1", [Level("A", "W1", 5, 2, 3)])
    level = gate.read("W1", ["A"])["A"]
    assert (level.on_hand, level.reserved, level.version, level.held) == (5, 2, 3, 0)
    gate.settle("W1", None, [Level("A", "W1", 5, 0, 2)])  # late, older
    gate.settle("W1", "r1", [Level("A", "W1", 5, 2, 3)])  # repeated
    level = gate.read("W1", ["A"])["A"]
    assert (level.on_hand, level.reserved, level.version, level.held) == (5, 2, 3, 0)
    # marker now lives for the idempotency window, so a replay is still recognised
    assert gate.try_hold("W1", "r1", "fp", [Line("A", 2)], 10_000).answer is GateAnswer.DUPLICATE


def test_cancel_hold_gives_the_units_back_and_forgets_the_request(gate: RedisGate):
    ready(gate, "W1", A=5)
    gate.try_hold("W1", "r1", "fp", [Line("A", 5)], 10_000)
    assert available(gate, "W1", "A") == 0
    gate.cancel_hold("W1", "r1")
    assert available(gate, "W1", "A") == 5
    assert gate.try_hold("W1", "r1", "fp", [Line("A", 5)], 10_000).answer is GateAnswer.HELD


def test_expired_hold_heals_a_crash_between_try_and_persist(gate: RedisGate):
    ready(gate, "W1", A=3)
    assert gate.try_hold("W1", "crashed", "fp", [Line("A", 3)], 150).answer is GateAnswer.HELD
    assert gate.try_hold("W1", "r2", "fp", [Line("A", 1)], 10_000).answer is GateAnswer.SHORT
    wait_until(
        lambda: gate.try_hold("W1", "r2", "fp", [Line("A", 1)], 10_000).answer is GateAnswer.HELD,
        timeout=5,
        what="expired hold to be returned",
    )
    assert available(gate, "W1", "A") == 2


def test_scripts_validate_before_writing(gate: RedisGate):
    ready(gate, "W1", A=5)
    tag = gate.tag("W1")
    keys = [f"{tag}:ready", f"{tag}:holds", f"{tag}:hold:r1", f"{tag}:req:r1", f"{tag}:lvl:A"]
    with pytest.raises(redis.ResponseError, match="bad quantity"):
        gate._try_hold(keys=keys, args=[tag, "r1", "fp", 1000, "A", -2])
    with pytest.raises(redis.ResponseError, match="bad number"):
        gate._settle(keys=keys[1:], args=[tag, "", 60, "", 1, "x", 2])
    assert available(gate, "W1", "A") == 5
    assert gate.client.exists(f"{tag}:req:r1") == 0


def test_scripts_survive_a_script_flush(gate: RedisGate):
    ready(gate, "W1", A=5)
    gate.client.script_flush()
    assert gate.try_hold("W1", "r1", "fp", [Line("A", 1)], 10_000).answer is GateAnswer.HELD


def test_every_key_of_a_request_is_in_one_cluster_slot(gate: RedisGate):
    tag = gate.tag("W1")
    keys = [f"{tag}:ready", f"{tag}:holds", f"{tag}:hold:r1", f"{tag}:req:r1"]
    keys += [gate.level_key("W1", sku) for sku in ("A", "B{x}", "zz:9")]
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_invalidate_takes_the_warehouse_off_the_fast_path(gate: RedisGate):
    ready(gate, "W1", A=5)
    generation = gate.generation("W1")
    gate.invalidate("W1")
    assert gate.try_hold("W1", "r1", "fp", [Line("A", 1)], 1000).answer is GateAnswer.NOT_READY
    assert not gate.mark_ready("W1", generation)
    assert gate.mark_ready("W1", gate.generation("W1"))


def test_repair_only_overwrites_what_was_compared(gate: RedisGate):
    ready(gate, "W1", A=5)
    assert gate.repair("W1", [(1, Level("A", "W1", 7, 0, 4))]) == 1
    assert gate.repair("W1", [(1, Level("A", "W1", 9, 0, 5))]) == 0
    assert gate.read("W1", ["A"])["A"].on_hand == 7


def test_unreachable_redis_answers_unavailable_without_raising(private_redis):
    gate = RedisGate(redis.Redis(port=private_redis.port, socket_timeout=0.3), prefix="p")
    ready(gate, "W1", A=5)
    private_redis.stop()
    assert gate.try_hold("W1", "r1", "fp", [Line("A", 1)], 1000).answer is GateAnswer.UNAVAILABLE
    gate.settle("W1", None, [Level("A", "W1", 4, 0, 2)])  # remembered as stale, no exception
    assert not gate.reachable


def test_a_retry_past_its_marker_but_before_the_sweep_holds_its_units_once(gate: RedisGate):
    """The sweep gives back 64 expired holds per call; a retry whose own expired hold was
    not among them must not count its units twice (they would stay held for good)."""
    ready(gate, "W1", A=1000)
    for i in range(64):
        assert gate.try_hold("W1", f"old{i}", "fp", [Line("A", 1)], 100).answer is GateAnswer.HELD
    # R's hold runs out after the others: the sweep reaches 64 older ones first
    assert gate.try_hold("W1", "R", "fp", [Line("A", 5)], 300).answer is GateAnswer.HELD
    wait_until(
        lambda: gate.client.exists(f"{gate.tag('W1')}:req:R") == 0,
        timeout=5,
        what="R's marker to run out",
    )
    assert gate.try_hold("W1", "R", "fp", [Line("A", 5)], 10_000).answer is GateAnswer.HELD
    assert gate.read("W1", ["A"])["A"].held == 5
    gate.cancel_hold("W1", "R")
    assert available(gate, "W1", "A") == 1000


def test_a_gate_that_lost_its_data_heals_without_waiting_for_an_order(
    engine: sa.Engine, tx: SqlTransactions, gate: RedisGate
):
    """Redis loses everything; no order arrives. The healer rebuilds every warehouse, with
    its levels and the replay markers of its recent requests, within seconds."""
    from shared_lib.domain.model import ReceiveStock, RequestMeta
    from shared_lib.services import Deps, receive_stock
    from shared_lib.services.cache import GateRebuilder, rebuild_all
    from shared_lib.services.guard import request_id
    from tests.conftest import seed_catalog

    seed_catalog(engine, {"A": 0}, ("W1", "W2"))
    rebuild_all(tx, gate)
    receive_stock(Deps(tx=tx, gate=gate), ReceiveStock("W2", (Line("A", 7),)), RequestMeta("r"))
    for key in gate.client.scan_iter(match=f"{{{gate.prefix}:*", count=1000):
        gate.client.delete(key)
    assert gate.not_ready(["W1", "W2"]) == ["W1", "W2"]
    healer = GateRebuilder(tx, gate)
    stop = healer.watch(0.05)
    try:
        wait_until(lambda: gate.not_ready(["W1", "W2"]) == [], timeout=10, what="healed gate")
    finally:
        stop()
        healer.join()
    assert available(gate, "W2", "A") == 7
    assert gate.client.exists(f"{gate.tag('W2')}:req:{request_id('r')}") == 1


def scripted_commands(client: redis.Redis, prefix: str, action: Callable[[], object]) -> list[str]:
    """The commands Redis ran on `prefix`'s keys while `action` ran, those its scripts ran
    included (MONITOR shows them), up to a marker sent after it."""
    marker = f"psi-marker-{uuid.uuid4().hex}"
    seen: list[str] = []
    with client.monitor() as monitor:
        action()
        client.echo(marker)
        for _ in range(10_000):
            command = str(monitor.next_command()["command"])
            if marker in command:
                return [c for c in seen if prefix in c]
            seen.append(command)
    raise AssertionError("the marker never reached MONITOR")


def test_a_refused_hold_looks_at_the_oldest_deadline_and_sweeps_nothing_before_it(
    gate: RedisGate, redis_client: redis.Redis
):
    """A flash sale's losers run the hold script thousands of times a second: while no hold
    has run out, each looks at the oldest deadline (O(1)) and does not sweep."""
    ready(gate, "W1", A=1)
    assert gate.try_hold("W1", "winner", "fp", [Line("A", 1)], 60_000).answer is GateAnswer.HELD

    def lose() -> None:
        assert gate.try_hold("W1", "loser", "fp", [Line("A", 1)], 60_000).answer is GateAnswer.SHORT

    commands = scripted_commands(redis_client, gate.prefix, lose)
    names = [c.split()[0].strip('"').upper() for c in commands]
    assert "ZRANGE" in names, commands
    assert "ZRANGEBYSCORE" not in names, commands
