"""InMemoryPublisher (the fake in tests.fakes) and the publisher protocol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared_lib.adapters.kafka import (
    EventPublisher,
    KafkaEventPublisher,
    PublishError,
)
from tests.fakes import InMemoryPublisher, PublishedEvent


def test_records_publishes_in_order_with_headers() -> None:
    pub = InMemoryPublisher()
    pub.publish("psi.stock.changed", "sku-1", b'{"qty": 1}', headers=[("trace", b"t1")])
    pub.publish("psi.order.created", "ord-1", b"{}")

    assert pub.events == [
        PublishedEvent("psi.stock.changed", "sku-1", b'{"qty": 1}', [("trace", b"t1")]),
        PublishedEvent("psi.order.created", "ord-1", b"{}", []),
    ]
    assert [e.key for e in pub.on_topic("psi.order.created")] == ["ord-1"]
    assert pub.on_topic("psi.dead-letter") == []


def test_events_unpack_as_topic_key_value_headers() -> None:
    pub = InMemoryPublisher()
    pub.publish("t", "k", b"v", headers=[("h", b"1")])
    (event,) = pub.events
    topic, key, value, headers = (event.topic, event.key, event.value, event.headers)
    assert (topic, key, value, headers) == ("t", "k", b"v", [("h", b"1")])


def test_fail_with_raises_publish_error_and_records_nothing() -> None:
    pub = InMemoryPublisher()
    pub.fail_with = ConnectionError("broker down")
    with pytest.raises(PublishError, match="broker down"):
        pub.publish("t", "k", b"v")
    assert pub.events == []

    pub.fail_with = None
    pub.publish("t", "k", b"v")
    assert len(pub.events) == 1


def test_closed_publisher_refuses_and_clear_empties() -> None:
    pub = InMemoryPublisher()
    pub.publish("t", "k", b"v")
    pub.clear()
    assert pub.events == []
    pub.close()
    assert pub.closed
    with pytest.raises(PublishError):
        pub.publish("t", "k", b"v")


def test_value_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        InMemoryPublisher().publish("t", "k", "text")  # type: ignore[arg-type]


def test_both_publishers_satisfy_the_protocol() -> None:
    assert isinstance(InMemoryPublisher(), EventPublisher)
    assert isinstance(KafkaEventPublisher("127.0.0.1:9"), EventPublisher)


def test_kafka_publisher_rejects_empty_bootstrap() -> None:
    with pytest.raises(ValueError):
        KafkaEventPublisher(" , ")


def test_kafka_is_imported_only_when_publishing() -> None:
    code = (
        "import sys\n"
        "from shared_lib.adapters.kafka import KafkaEventPublisher\n"
        "KafkaEventPublisher('127.0.0.1:9').close()\n"
        "assert 'kafka' not in sys.modules, 'kafka imported eagerly'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=root)
