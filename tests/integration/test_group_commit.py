"""Group commit on the real stores (MariaDB and SQLite, real Redis): one transaction per
batch, answers for every waiter, the lead passed on, dead leaders replaced without a
double effect, and waiters that give up or lose Redis leave nothing half-written."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import event

from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.redis_journal import RedisJournal
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.config import HOLD_MARGIN_MS
from shared_lib.domain.errors import RequestInProgress, StoreUnavailable
from shared_lib.domain.model import Line, Order, OrderStatus, PlaceOrder, RequestMeta, utcnow
from shared_lib.services import Deps, Outcome, place_order
from shared_lib.services.cache import rebuild_all
from shared_lib.services.group_commit import LEAD, Pending, flush, persist
from shared_lib.services.orders import _reserve
from shared_lib.services.ports import GateAnswer, JournalAnswer, Taken
from tests.conftest import seed_catalog
from tests.integration.test_order_path import assert_invariants, db_level, meta, receive
from tests.support import wait_until

LEAD_MS = 5_000


@pytest.fixture
def deps(engine: sa.Engine, tx: SqlTransactions, gate: RedisGate) -> Deps:
    seed_catalog(engine, {"A": 0}, ("W1",))
    rebuild_all(tx, gate)
    deps = Deps(tx=tx, gate=gate, journal=RedisJournal(gate))
    receive(deps, "stock", A=100)
    return deps


def pending(order_id: str, qty: int = 1, *, age_s: float = 0) -> Pending:
    at = utcnow() - timedelta(seconds=age_s)
    lines = (Line("A", qty),)
    order = Order(order_id, "W1", OrderStatus.RESERVED, lines, at + timedelta(minutes=15))
    fingerprint = PlaceOrder(order_id, "W1", lines).fingerprint()
    return Pending(order, RequestMeta(f"key-{order_id}", "tester"), fingerprint, at)


def enqueue(gate: RedisGate, p: Pending, lead_ms: int = LEAD_MS, hold_ms: int = 30_000) -> bool:
    """Journal an order as place_order does, without waiting; True if it leads."""
    lines = p.order.lines
    held = RedisJournal(gate).enqueue(
        "W1", p.request, p.fingerprint, lines, hold_ms, p.encode(), lead_ms
    )
    assert held.answer is GateAnswer.HELD
    return held.lead


def flush_as(deps: Deps, gate: RedisGate, p: Pending) -> dict[str, str]:
    return flush(deps, RedisJournal(gate), "W1", p.request, lambda q: _reserve(deps, q))


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def same_shard(gate: RedisGate, n: int) -> list[Pending]:
    """n orders whose requests share one journal shard (the first one's)."""
    found: list[Pending] = []
    i = 0
    while len(found) < n:
        p = pending(f"o{i}")
        if not found or RedisJournal(gate)._shard(p.request) == RedisJournal(gate)._shard(
            found[0].request
        ):
            found.append(p)
        i += 1
    return found


def test_one_flush_commits_the_batch_in_one_transaction_and_answers_every_waiter(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    batch = same_shard(gate, 20)
    leads = [enqueue(gate, p) for p in batch]
    assert leads == [True] + [False] * 19
    commits: list[int] = []

    def on_commit(_conn: object) -> None:
        commits.append(1)

    event.listen(engine, "commit", on_commit)
    answers = flush_as(deps, gate, batch[0])
    event.remove(engine, "commit", on_commit)
    assert len(commits) == 1
    assert set(answers) == {p.request for p in batch}
    assert db_level(engine, "A") == (100, 20)
    assert count(engine, t.orders) == 20 and count(engine, t.idempotency_records) == 21
    for p in batch[1:]:
        reply = RedisJournal(gate).next_reply("W1", p.request, 1.0)
        assert reply is not None and p.order.order_id in reply
    # the journal is empty, so the lead was released
    assert RedisJournal(gate).claim("W1", batch[0].request, LEAD_MS)
    assert_invariants(engine, gate)


def test_the_lead_passes_to_the_oldest_waiting_order(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    deps.journal_batch = 5
    batch = same_shard(gate, 8)
    for p in batch:
        enqueue(gate, p)
    answers = flush_as(deps, gate, batch[0])
    assert set(answers) == {p.request for p in batch[:5]}
    assert RedisJournal(gate).next_reply("W1", batch[5].request, 1.0) == LEAD
    answers = flush_as(deps, gate, batch[5])
    assert set(answers) == {p.request for p in batch[5:]}
    assert db_level(engine, "A") == (100, 8)
    assert_invariants(engine, gate)


def test_a_dead_leaders_batch_is_taken_again_and_commits_once(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    batch = same_shard(gate, 6)
    for p in batch:
        enqueue(gate, p, lead_ms=300)
    # the leader takes the batch, commits it, and dies before it answers anyone
    taken = RedisJournal(gate).take("W1", batch[0].request, 100, 300)
    assert taken is not None and len(taken.entries) == 6
    persist(deps, "W1", batch, lambda q: _reserve(deps, q))
    assert db_level(engine, "A") == (100, 6)
    # its lead expires; a waiter claims it and takes the same batch again
    wait_until(
        lambda: RedisJournal(gate).claim("W1", batch[3].request, LEAD_MS),
        timeout=5,
        what="dead lead expired",
    )
    answers = flush_as(deps, gate, batch[3])
    assert set(answers) == {p.request for p in batch}
    assert all('"replayed":true' in answers[p.request] for p in batch)
    assert db_level(engine, "A") == (100, 6)
    assert count(engine, t.orders) == 6 and count(engine, t.movements) == 7
    assert_invariants(engine, gate)


def test_an_entry_that_outlived_its_hold_never_commits(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    old, fresh = same_shard(gate, 2)
    enqueue(gate, old, hold_ms=HOLD_MARGIN_MS - 500)  # too little hold left to be written in
    enqueue(gate, fresh)
    answers = flush_as(deps, gate, old)
    assert "store_unavailable" in answers[old.request]
    assert fresh.order.order_id in answers[fresh.request]
    assert db_level(engine, "A") == (100, 1)
    assert_invariants(engine, gate)


def ghost_leads(gate: RedisGate) -> None:
    """A leader that never answers: every shard's lead is taken for a minute."""
    for shard in range(RedisJournal(gate).journal_shards):
        gate.client.set(f"{gate.tag('W1')}:lead:{shard}", "ghost", px=60_000)


def order_while_waiting(deps: Deps, gate: RedisGate, meanwhile: Callable[[], object]) -> Outcome:
    """Order 2 units of A as o1 while no leader answers; once the order waits in the
    journal, run `meanwhile`; the order's outcome."""
    ghost_leads(gate)
    tag = gate.tag("W1")
    shards = range(RedisJournal(gate).journal_shards)
    with ThreadPoolExecutor(max_workers=1) as pool:
        order = PlaceOrder("o1", "W1", (Line("A", 2),))
        waiting = pool.submit(place_order, deps, order, meta("o1"))
        wait_until(
            lambda: any(gate.client.llen(f"{tag}:journal:{s}") for s in shards),
            timeout=5,
            what="order journaled",
        )
        meanwhile()
        return waiting.result(timeout=30)


def test_a_waiter_without_a_leader_gives_up_and_leaves_nothing(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    ghost_leads(gate)
    deps.journal_wait_s = 0.5
    order = PlaceOrder("o1", "W1", (Line("A", 3),))
    with pytest.raises(StoreUnavailable):
        place_order(deps, order, meta("o1"))
    assert db_level(engine, "A") == (100, 0) and count(engine, t.orders) == 0
    tag = gate.tag("W1")
    assert not any(
        gate.client.llen(f"{tag}:journal:{s}") for s in range(RedisJournal(gate).journal_shards)
    )
    assert gate.read("W1", ["A"])["A"].held == 0
    # the same request later succeeds once a leader is around again
    for shard in range(RedisJournal(gate).journal_shards):
        gate.client.delete(f"{tag}:lead:{shard}")
    assert place_order(deps, order, meta("o1")).body["status"] == "reserved"
    assert_invariants(engine, gate)


def test_redis_lost_while_waiting_commits_the_order_once_without_it(
    engine: sa.Engine, tx: SqlTransactions, private_redis
):
    seed_catalog(engine, {"A": 0}, ("W1",))
    gate = RedisGate(redis.Redis(port=private_redis.port, socket_timeout=0.5), prefix="gc")
    rebuild_all(tx, gate)
    deps = Deps(tx=tx, gate=gate, journal=RedisJournal(gate))
    receive(deps, "stock", A=10)
    outcome = order_while_waiting(deps, gate, private_redis.stop)
    assert outcome.degraded and outcome.body["status"] == "reserved"
    assert db_level(engine, "A") == (10, 2) and count(engine, t.orders) == 1
    assert_invariants(engine)


def test_many_threads_one_hot_sku_group_commit_never_oversells(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    start = threading.Barrier(40)

    def buy(i: int) -> str:
        start.wait(timeout=30)
        try:
            place_order(deps, PlaceOrder(f"b{i}", "W1", (Line("A", 3),)), meta(f"b{i}"))
            return "ok"
        except Exception as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=40) as pool:
        outcomes = sorted(pool.map(buy, range(40)))
    assert outcomes.count("ok") == 33 and outcomes.count("InsufficientStock") == 7
    assert db_level(engine, "A") == (100, 99)
    assert_invariants(engine, gate)


def test_a_journal_flushed_away_while_waiting_commits_the_order_once(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    tag = gate.tag("W1")
    # the gate's keys of this warehouse vanish at once (FLUSHALL, a restart without
    # persistence)
    outcome = order_while_waiting(
        deps, gate, lambda: gate.client.delete(*gate.client.scan_iter(match=f"{tag}*"))
    )
    assert outcome.degraded and outcome.body["status"] == "reserved"
    assert db_level(engine, "A") == (100, 2) and count(engine, t.orders) == 1
    assert_invariants(engine)


class LoseTheAnswer:
    """Transactions whose next run commits and then reports the database unreachable, as a
    COMMIT whose acknowledgement was lost."""

    def __init__(self, inner: SqlTransactions) -> None:
        self.inner = inner
        self.armed = True

    def run(self, work: Callable[[Any], Any]) -> Any:
        result = self.inner.run(work)
        if self.armed:
            self.armed = False
            raise StoreUnavailable("database")
        return result


def test_a_batch_whose_commit_answer_was_lost_is_answered_truly_on_retry(
    deps: Deps, engine: sa.Engine, gate: RedisGate, tx: SqlTransactions
):
    """The waiters of a batch that did commit are told 503 (retry with the same key); the
    retry gets the first answer even when the stock is gone by then, not 409 short."""
    first, second = same_shard(gate, 2)
    enqueue(gate, first)
    enqueue(gate, second)
    lossy = Deps(tx=LoseTheAnswer(tx), gate=gate, journal=RedisJournal(gate))
    answers = flush(lossy, RedisJournal(gate), "W1", first.request, lambda q: _reserve(lossy, q))
    assert all("store_unavailable" in answers[p.request] for p in (first, second))
    assert db_level(engine, "A") == (100, 2)  # both committed
    # the rest of the stock sells out
    place_order(deps, PlaceOrder("rest", "W1", (Line("A", 98),)), meta("rest"))
    for p in (first, second):
        command = PlaceOrder(p.order.order_id, "W1", p.order.lines)
        again = place_order(deps, command, p.meta)
        assert again.replayed and again.body["order_id"] == p.order.order_id
    assert db_level(engine, "A") == (100, 100)
    assert_invariants(engine, gate)


def test_a_leader_paused_past_its_lead_changes_nothing_when_it_wakes(
    deps: Deps, engine: sa.Engine, gate: RedisGate, tx: SqlTransactions
):
    """Leader A takes a batch and stalls in its database write past its lead; B takes the
    lead and the batch, and commits it. When A wakes up with a failure, its answers, marker
    deletions and dropped holds must not land: it was fenced off."""
    batch = same_shard(gate, 3)
    for p in batch:
        enqueue(gate, p, lead_ms=300)
    a, b = batch[0], batch[1]
    taken_by_a = RedisJournal(gate).take("W1", a.request, 100, 300)
    assert taken_by_a is not None
    wait_until(
        lambda: RedisJournal(gate).claim("W1", b.request, LEAD_MS),
        timeout=5,
        what="A's lead expired",
    )
    answers = flush_as(deps, gate, b)
    assert set(answers) == {p.request for p in batch}
    assert all(p.order.order_id in answers[p.request] for p in batch)
    # A wakes up: its write failed, it would answer 503 and drop every marker
    refused = [
        JournalAnswer(p.request, None, '{"error":{"error":"store_unavailable"}}') for p in batch
    ]
    assert RedisJournal(gate).complete("W1", a.request, taken_by_a, refused, [], 300) is False
    for p in batch:
        assert gate.client.get(f"{gate.tag('W1')}:req:{p.request}") == p.fingerprint.encode()
        assert gate.client.llen(f"{gate.tag('W1')}:reply:{p.request}") <= 1
        replay = place_order(deps, PlaceOrder(p.order.order_id, "W1", p.order.lines), p.meta)
        assert replay.replayed
    assert db_level(engine, "A") == (100, 3)
    assert_invariants(engine, gate)


def test_an_answer_left_from_an_earlier_attempt_is_not_this_attempts_answer(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    """A reply pushed for an earlier attempt under the same key (a leader answering late)
    waits in Redis; an attempt journaled later must not take it for its own."""
    leader, p = same_shard(gate, 2)
    assert enqueue(gate, leader)  # leader leads its shard; p will wait for it
    stale = '{"error":{"error":"store_unavailable","message":"stale","store":"database"}}'
    gate.client.rpush(f"{gate.tag('W1')}:reply:{p.request}", stale)
    journal = RedisJournal(gate)._journal_keys("W1", p.request)[1]

    def lead_once_p_waits() -> None:
        wait_until(lambda: gate.client.llen(journal) >= 2, timeout=10, what="p journaled")
        flush_as(deps, gate, leader)

    thread = threading.Thread(target=lead_once_p_waits)
    thread.start()
    try:
        placed = place_order(deps, PlaceOrder(p.order.order_id, "W1", p.order.lines), p.meta)
    finally:
        thread.join(15)
    assert placed.body["order_id"] == p.order.order_id and not placed.replayed
    assert db_level(engine, "A") == (100, 2)


def test_a_waiter_whose_leader_is_stuck_in_its_write_is_told_the_truth(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    """A leader took the order into its batch and is stuck in the write. The waiter must not
    write the order alone (a 409 now could be followed by the leader's commit): it answers
    503, and the retry is told the true state - in progress, then the first answer."""
    ghost_leads(gate)
    deps.journal_wait_s = 0.3
    tag = gate.tag("W1")
    order = PlaceOrder("o1", "W1", (Line("A", 2),))
    ghost: list[Taken] = []

    def the_ghost_takes_it() -> None:
        shards = range(RedisJournal(gate).journal_shards)
        wait_until(
            lambda: any(gate.client.llen(f"{tag}:journal:{s}") for s in shards),
            timeout=5,
            what="order journaled",
        )
        shard = next(s for s in shards if gate.client.llen(f"{tag}:journal:{s}"))
        gate.client.set(f"{tag}:lead:{shard}", "ghost", px=60_000)
        keys = [f"{tag}:lead:{shard}", f"{tag}:journal:{shard}", f"{tag}:inflight:{shard}"]
        keys += [f"{tag}:fence:{shard}", f"{tag}:holds"]
        items = RedisJournal(gate)._take(keys=keys, args=["ghost", 100, 60_000])
        ghost.append(Taken(int(items[0]), [item.decode() for item in items[1::2]]))

    taker = threading.Thread(target=the_ghost_takes_it)
    taker.start()
    with pytest.raises(StoreUnavailable):
        place_order(deps, order, meta("o1"))
    taker.join(10)
    assert count(engine, t.orders) == 0  # nobody wrote it alone
    with pytest.raises(RequestInProgress):
        place_order(deps, order, meta("o1"))
    # the stuck leader's write goes through after all: the retry gets that answer
    (p,) = [Pending.decode("W1", text.partition(" ")[2]) for text in ghost[0].entries]
    persist(deps, "W1", [p], lambda q: _reserve(deps, q))
    again = place_order(deps, order, meta("o1"))
    assert again.replayed and again.body["status"] == "reserved"
    assert db_level(engine, "A") == (100, 2)


def test_a_late_entry_that_did_commit_is_answered_with_its_first_answer(
    deps: Deps, engine: sa.Engine, gate: RedisGate
):
    """A dead leader committed its batch; the batch is taken over only after its holds ran
    out. The idempotency record decides before the age rule: the orders are answered with
    their first answers, not 503."""
    late = pending("slow")
    enqueue(gate, late, hold_ms=100)  # well inside the margin: late when its batch is taken
    persist(deps, "W1", [late], lambda q: _reserve(deps, q))  # the dead leader's commit
    answers = flush_as(deps, gate, late)
    assert '"replayed":true' in answers[late.request] and "slow" in answers[late.request]
    assert db_level(engine, "A") == (100, 1)
    assert gate.client.get(f"{gate.tag('W1')}:req:{late.request}") == late.fingerprint.encode()
