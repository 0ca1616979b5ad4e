"""The Kafka test harness: the module's embedded broker with the dead-letter topic, a
publisher and a fresh topic per test; reading back records and dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from psi_local.broker import EmbeddedBroker
from shared_lib.adapters.kafka import KafkaEventPublisher, Record, read_topic
from shared_lib.topics import DEAD_LETTER
from tests.conftest import start_broker
from tests.http_sink import CapturedRequest, HttpSink


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    started = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        started.create_topics([DEAD_LETTER], partitions=3)
        yield started
    finally:
        started.stop(graceful=False)


@pytest.fixture(scope="module")
def publisher(broker: EmbeddedBroker) -> Iterator[KafkaEventPublisher]:
    pub = KafkaEventPublisher(broker.bootstrap)
    yield pub
    pub.close()


@pytest.fixture
def topic(broker: EmbeddedBroker) -> str:
    name = f"psi.test.{uuid.uuid4().hex[:10]}"
    broker.create_topics([name], partitions=3)
    return name


def sink_answering(rule: Callable[[CapturedRequest], tuple[int, str]]) -> HttpSink:
    return HttpSink(rule).start()


def headers_of(record: Record) -> dict[str, str]:
    return {name: raw.decode("utf-8", "replace") for name, raw in record.headers}


def dead_letters(
    broker: EmbeddedBroker, topic: str, count: int, *, settle: bool = False
) -> list[Record]:
    """The dead letters of records from ``topic`` (the letter topic is shared by the module),
    in offset order. ``settle``: read until the timeout, to see every letter there is."""

    def mine(records: list[Record]) -> list[Record]:
        return [r for r in records if headers_of(r).get("ce_source", "").endswith(f"#{topic}")]

    records = read_topic(
        broker.bootstrap,
        DEAD_LETTER,
        until=lambda rs: len(mine(rs)) > count if settle else len(mine(rs)) >= count,
        timeout=2 if settle else 10,
    )
    return sorted(mine(records), key=lambda r: int(headers_of(r)["ce_knativekafkaoffset"]))


def record_of(broker: EmbeddedBroker, topic: str, value: bytes) -> Record:
    """The record with this value, as the broker holds it (partition and offset)."""
    found = read_topic(
        broker.bootstrap, topic, until=lambda rs: any(r.value == value for r in rs), timeout=10
    )
    return next(r for r in found if r.value == value)
