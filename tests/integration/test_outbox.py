"""The outbox relay on the real stores (MariaDB and SQLite) and a real embedded Kafka broker:
id order, one relay per database, backoff after a failure, recovery when the broker is back."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from psi_local.broker import EmbeddedBroker
from psi_local.events_schema import validate_event
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import (
    Headers,
    KafkaEventPublisher,
    PublishError,
    Record,
    read_topic,
)
from shared_lib.adapters.outbox import BackgroundRelay, OutboxRelay
from shared_lib.adapters.sql import SqlStore, SqlTransactions
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.domain import events
from shared_lib.domain.model import Line, ReceiveStock, RequestMeta, utcnow
from shared_lib.services import Deps, receive_stock
from tests.conftest import seed_catalog, start_broker
from tests.fakes import InMemoryPublisher
from tests.support import wait_until

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0.12 loads its protocol schemas with deprecated importlib.resources calls
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

CLOUDEVENTS = b"application/cloudevents+json"


@pytest.fixture(scope="module")
def publisher(broker: EmbeddedBroker) -> Iterator[KafkaEventPublisher]:
    pub = KafkaEventPublisher(broker.bootstrap)
    yield pub
    pub.close(timeout=1.0)


@dataclass(frozen=True)
class Stored:
    id: int
    event_id: str
    topic: str
    key: str
    payload: bytes


def add_events(engine: sa.Engine, topic: str, keys: list[str]) -> None:
    """One committed transaction per event, as the services write them."""
    for i, key in enumerate(keys):
        event = events.cloud_event(topic, "/psi/test", key, {"n": i, "sku": key}, utcnow())
        with engine.begin() as conn:
            SqlStore(conn).add_event(topic, key, event)


def stored(engine: sa.Engine, topic: str | None = None) -> list[Stored]:
    o = t.outbox
    query = sa.select(o).order_by(o.c.id)
    if topic is not None:
        query = query.where(o.c.topic == topic)
    with engine.connect() as conn:
        return [
            Stored(r.id, r.event_id, r.topic, r.event_key, r.payload.encode())
            for r in conn.execute(query)
        ]


def outbox_rows(engine: sa.Engine) -> list[sa.Row]:
    o = t.outbox
    with engine.connect() as conn:
        return list(conn.execute(sa.select(o).order_by(o.c.id)))


def header(record: Record, name: str) -> bytes | None:
    return next((v for k, v in record.headers if k == name), None)


def new_topic(broker: EmbeddedBroker, partitions: int) -> str:
    name = f"psi.test.outbox-{uuid.uuid4().hex[:10]}"
    broker.create_topics([name], partitions=partitions)
    return name


# -- against the real broker -------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 3])
def test_relay_publishes_stored_payloads_in_id_order(
    engine: sa.Engine,
    broker: EmbeddedBroker,
    publisher: KafkaEventPublisher,
    partitions: int,
) -> None:
    topic = new_topic(broker, partitions)
    add_events(engine, topic, [f"SKU-{i % 3}" for i in range(12)])
    relay = OutboxRelay(engine, publisher)

    assert relay.relay() == 12

    rows = stored(engine, topic)
    records = read_topic(broker.bootstrap, topic, until=lambda rs: len(rs) >= 12, timeout=15)
    assert len(records) == 12
    by_id = {r.event_id: r for r in rows}
    for record in records:
        row = by_id[header(record, "ce_id").decode()]  # type: ignore[union-attr]
        assert (record.value, record.key) == (row.payload, row.key.encode())
        assert header(record, "content-type") == CLOUDEVENTS
    if partitions == 1:
        assert [r.value for r in records] == [row.payload for row in rows]
    for key in {row.key for row in rows}:
        mine = [r.value for r in records if r.key == key.encode()]
        assert mine == [row.payload for row in rows if row.key == key]  # per key: id order
    assert all(r.published_at is not None and r.attempts == 0 for r in outbox_rows(engine))
    assert relay.pending_count() == 0 and relay.relay() == 0


def test_events_of_a_real_change_go_out_valid(
    engine: sa.Engine, tx: SqlTransactions, broker: EmbeddedBroker, publisher: KafkaEventPublisher
) -> None:
    seed_catalog(engine, {"A": 0, "B": 0}, ("W1",))
    receive_stock(
        Deps(tx=tx, source="/psi/stock-in"),
        ReceiveStock("W1", (Line("A", 3), Line("B", 2))),
        RequestMeta("in-1"),
    )
    ours = {row.event_id: row for row in stored(engine)}
    assert len(ours) == 2  # one psi.stock.changed per line

    assert OutboxRelay(engine, publisher).drain() == 2

    def mine(records: list[Record]) -> list[Record]:
        return [r for r in records if (header(r, "ce_id") or b"").decode() in ours]

    got = mine(
        read_topic(
            broker.bootstrap,
            topics.STOCK_CHANGED,
            until=lambda rs: len(mine(rs)) >= 2,
            timeout=15,
        )
    )
    assert sorted(r.value for r in got) == sorted(
        row.payload for row in ours.values() if row.topic == topics.STOCK_CHANGED
    )
    for record in got:
        validate_event(topics.STOCK_CHANGED, json.loads(record.value))


def test_a_broker_that_is_down_leaves_rows_for_later(engine: sa.Engine, tmp_path: Path) -> None:
    own = start_broker(tmp_path)
    pub = KafkaEventPublisher(own.bootstrap)
    try:
        topic = f"psi.test.down-{uuid.uuid4().hex[:8]}"
        own.create_topics([topic], partitions=1)
        pub.publish(topic, "warm", b"{}")  # a connected producer, as in a warm container
        own.stop(graceful=False)
        add_events(engine, topic, ["SKU-1", "SKU-2", "SKU-1"])
        relay = OutboxRelay(engine, pub, publish_timeout=1.5, backoff_base=0.2, backoff_cap=0.5)

        assert relay.relay() == 0

        first, *rest = outbox_rows(engine)
        assert first.published_at is None and first.attempts == 1
        assert first.last_error and len(first.last_error) <= 500
        assert first.next_attempt_at > first.created_at
        assert [(r.attempts, r.last_error) for r in rest] == [(0, None), (0, None)]
        assert relay.pending_count() == 3 and relay.lag_seconds() >= 0

        own.restart(graceful=False)

        def drained() -> bool:
            relay.relay()
            return relay.pending_count() == 0

        wait_until(drained, timeout=60, interval=0.2, what="outbox drained after the restart")
        records = read_topic(own.bootstrap, topic, until=lambda rs: len(rs) >= 3, timeout=15)
        assert [r.value for r in records] == [row.payload for row in stored(engine, topic)]
    finally:
        pub.close(timeout=0.5)
        own.stop(graceful=False)


# -- relay mechanics (in-memory publisher, real databases) ---------------------------------


class BlockingPublisher(InMemoryPublisher):
    """Holds every publish until ``release`` is set, to keep a relay busy."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Headers | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.entered.set()
        assert self.release.wait(30), "test never released the publisher"
        super().publish(topic, key, value, headers, timeout)


class FailingPublisher(InMemoryPublisher):
    """Fails the publish number ``fail_at`` (1-based), once."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Headers | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise PublishError("broker said no " + "x" * 1000)
        super().publish(topic, key, value, headers, timeout)


def test_only_one_relay_runs_per_database(engine: sa.Engine, database_url: str) -> None:
    add_events(engine, "psi.test.lock", ["K"] * 3)
    busy = BlockingPublisher()
    other_replica = make_engine(database_url)
    try:
        first = OutboxRelay(engine, busy)
        second = OutboxRelay(other_replica, InMemoryPublisher())
        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(first.relay()))
        worker.start()
        assert busy.entered.wait(10)

        started = time.monotonic()
        assert second.relay() == 0
        assert time.monotonic() - started < 2  # no waiting for the lock

        busy.release.set()
        worker.join(10)
        assert result == [3]
        assert second.relay() == 0  # nothing left, and the lock is free again
        add_events(engine, "psi.test.lock", ["K"])
        assert second.relay() == 1
    finally:
        busy.release.set()
        other_replica.dispose()


def test_a_failure_stops_the_batch_and_the_row_backs_off(engine: sa.Engine) -> None:
    add_events(engine, "psi.test.order", [f"K{i % 2}" for i in range(6)])
    now = [utcnow()]
    pub = FailingPublisher(fail_at=3)
    relay = OutboxRelay(engine, pub, clock=lambda: now[0], backoff_base=10, backoff_cap=60)

    assert relay.relay() == 2

    rows = outbox_rows(engine)
    assert [r.published_at is not None for r in rows] == [True, True, False, False, False, False]
    failed = rows[2]
    assert failed.attempts == 1 and failed.last_error.startswith("PublishError: broker said no")
    assert len(failed.last_error) == 500
    assert now[0] + timedelta(seconds=5) <= failed.next_attempt_at <= now[0] + timedelta(seconds=10)
    assert [r.attempts for r in rows[3:]] == [0, 0, 0]

    assert relay.relay() == 0  # still backing off: later rows wait behind it
    assert pub.calls == 3

    now[0] += timedelta(seconds=11)
    assert relay.relay() == 4
    assert [e.value for e in pub.events] == [r.payload for r in stored(engine)]


def test_a_republish_after_a_crash_carries_the_same_event_id(engine: sa.Engine) -> None:
    add_events(engine, "psi.test.dup", ["K"])
    pub = InMemoryPublisher()
    relay = OutboxRelay(engine, pub)
    assert relay.relay() == 1
    with engine.begin() as conn:  # the mark was lost, as in a crash right after the publish
        conn.execute(sa.update(t.outbox).values(published_at=None))

    assert relay.relay() == 1

    first, second = pub.events
    assert first.headers == second.headers and first.value == second.value
    assert dict(first.headers)["ce_id"] == stored(engine)[0].event_id.encode()


def test_without_a_publisher_the_relay_is_idle(engine: sa.Engine) -> None:
    add_events(engine, "psi.test.idle", ["K"])
    relay = OutboxRelay(engine, None)
    background = BackgroundRelay(relay, interval=0.01)

    assert relay.relay() == 0
    background.kick()
    assert not background.running and background.stop(1)
    assert relay.pending_count() == 1


def test_pending_count_and_lag_follow_the_oldest_unpublished_row(engine: sa.Engine) -> None:
    relay = OutboxRelay(engine, InMemoryPublisher())
    assert (relay.pending_count(), relay.lag_seconds()) == (0, 0.0)
    add_events(engine, "psi.test.lag", ["K", "K"])
    with engine.begin() as conn:
        conn.execute(sa.update(t.outbox).values(created_at=utcnow() - timedelta(hours=2)))

    assert relay.pending_count() == 2
    assert 7000 < relay.lag_seconds() < 7300

    relay.relay()
    assert (relay.pending_count(), relay.lag_seconds()) == (0, 0.0)


def test_the_background_relay_runs_after_a_kick_and_on_its_timer(engine: sa.Engine) -> None:
    pub = InMemoryPublisher()
    background = BackgroundRelay(OutboxRelay(engine, pub), interval=0.2)
    try:
        add_events(engine, "psi.test.bg", ["K"] * 3)
        background.kick()
        wait_until(lambda: background.published == 3, timeout=10, what="kicked pass")

        add_events(engine, "psi.test.bg", ["K"] * 2)  # no kick: the timer finds them
        wait_until(lambda: background.published == 5, timeout=10, what="timer pass")
        assert background.running and len(pub.events) == 5
    finally:
        assert background.stop(timeout=10)
    assert not background.running
    assert [e.value for e in pub.events] == [r.payload for r in stored(engine)]


def _relay_until_empty(database_url: str, bootstrap: str, start: Any, seconds: float) -> None:
    """One function process's relay: publish until nothing is pending (or time is up)."""
    engine = make_engine(database_url)
    publisher = KafkaEventPublisher(bootstrap)
    try:
        relay = OutboxRelay(engine, publisher, publish_timeout=5.0)
        start.wait(30)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and relay.pending_count() > 0:
            relay.relay(limit=7)  # small batches: the processes take turns
    finally:
        publisher.close(timeout=2.0)
        engine.dispose()


def test_several_processes_publish_each_row_once_in_key_order(
    engine: sa.Engine, database_url: str, broker: EmbeddedBroker
) -> None:
    """Every function process runs a relay (six on the local stack); together they publish
    each outbox row once, and the events of one key in the order they were written."""
    import multiprocessing

    topic = new_topic(broker, 3)
    keys = [f"K{i % 5}" for i in range(60)]
    add_events(engine, topic, keys)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [
        context.Process(target=_relay_until_empty, args=(database_url, broker.bootstrap, start, 60))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(90)
    assert [w.exitcode for w in workers] == [0, 0, 0]

    records = read_topic(broker.bootstrap, topic, until=lambda rs: len(rs) >= 60, timeout=20)
    read_more = read_topic(broker.bootstrap, topic, until=lambda rs: len(rs) > 60, timeout=3)
    ids = [header(r, "ce_id") for r in read_more]
    assert len(read_more) == 60 and len(set(ids)) == 60  # each row once
    rows = {s.event_id.encode(): s.id for s in stored(engine, topic)}
    for key in set(keys):
        mine = [rows[header(r, "ce_id")] for r in records if r.key == key.encode()]
        assert mine == sorted(mine), key  # in the order they were written
