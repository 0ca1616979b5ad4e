"""Kafka publisher and the embedded Tansu broker against a real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from psi_local.broker import EmbeddedBroker
from shared_lib.adapters.kafka import KafkaEventPublisher, PublishError, read_topic
from tests.conftest import start_broker
from tests.integration.kafka_support import broker, publisher, topic

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0.12 loads its protocol schemas with deprecated importlib.resources calls
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

__all__ = ["broker", "publisher", "topic"]  # the fixtures, found by pytest in this module


def test_publish_and_read_round_trip(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    sent = [
        (f"sku-{i % 3}", f'{{"n": {i}}}'.encode(), [("trace", f"t{i}".encode())]) for i in range(9)
    ]
    for key, value, headers in sent:
        publisher.publish(topic, key, value, headers=headers)

    records = read_topic(broker.bootstrap, topic, until=lambda rs: len(rs) >= 9, timeout=10)

    assert len(records) == 9
    assert {(r.key, r.value, tuple(r.headers)) for r in records} == {
        (k.encode(), v, tuple(h)) for k, v, h in sent
    }
    for key in {k for k, _, _ in sent}:
        mine = [r for r in records if r.key == key.encode()]
        assert len({r.partition for r in mine}) == 1  # one key, one partition
        assert [json.loads(r.value)["n"] for r in mine] == sorted(
            json.loads(r.value)["n"] for r in mine
        )
        assert [r.offset for r in mine] == sorted(r.offset for r in mine)


def test_read_topic_returns_what_it_has_at_timeout(broker: EmbeddedBroker) -> None:
    started = time.monotonic()
    records = read_topic(broker.bootstrap, "psi.test.never-created", until=bool, timeout=1.0)
    assert records == []
    assert time.monotonic() - started < 3


def test_publisher_to_stopped_broker_raises_within_timeout(tmp_path: Path) -> None:
    own = start_broker(tmp_path)
    warm = KafkaEventPublisher(own.bootstrap)
    try:
        warm.publish("psi.test.down", "k", b"{}")
        own.stop(graceful=False)

        for pub in (warm, KafkaEventPublisher(own.bootstrap)):  # connected and never connected
            started = time.monotonic()
            with pytest.raises(PublishError):
                pub.publish("psi.test.down", "k", b"{}", timeout=1.5)
            assert time.monotonic() - started < 2.5
            pub.close(timeout=0.5)
    finally:
        own.stop(graceful=False)


def test_broker_restart_keeps_port_and_topics_but_not_records(tmp_path: Path) -> None:
    own = start_broker(tmp_path)
    try:
        own.create_topics(["psi.test.restart"], partitions=2)
        port, pid = own.port, own.pid
        with KafkaEventPublisher(own.bootstrap) as pub:
            pub.publish("psi.test.restart", "k", b"before")

            own.restart(graceful=False)

            assert own.port == port and own.pid != pid and own.running
            assert read_topic(own.bootstrap, "psi.test.restart", until=bool, timeout=1.0) == []
            # stale metadata and a forgotten producer id: the publisher still gets through
            pub.publish("psi.test.restart", "k", b"after")
        records = read_topic(own.bootstrap, "psi.test.restart", until=bool, timeout=5)
        assert [r.value for r in records] == [b"after"]
    finally:
        own.stop(graceful=False)


def test_stop_escalates_to_sigkill_when_graceful_stop_hangs(tmp_path: Path) -> None:
    # Tansu's SIGTERM waits ~5 s for open client connections: stop_timeout must cut it short
    own = start_broker(tmp_path, stop_timeout=0.5)
    pub = KafkaEventPublisher(own.bootstrap)
    try:
        pub.publish("psi.test.kill", "k", b"{}")
        started = time.monotonic()
        own.stop(graceful=True)
        assert time.monotonic() - started < 3
        assert not own.running
    finally:
        pub.close(timeout=0.5)
        own.stop(graceful=False)
