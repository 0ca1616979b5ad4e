"""The CloudEvents bridge as a Knative KafkaSource against a real broker: the delivered
shapes, retries, dead letters, stalls, and no record may stop it."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from psi_local.bridge import KafkaBridge
from psi_local.broker import EmbeddedBroker
from psi_local.dispatchers import KnativeDispatcher
from psi_local.oidc import LocalIssuer, kafka_source_subject, service_audience
from shared_lib.adapters.kafka import KafkaEventPublisher, read_topic
from shared_lib.http.senders import OidcVerifier
from tests.conftest import start_broker
from tests.http_sink import CapturedRequest, HttpSink
from tests.integration.kafka_support import (
    broker,
    dead_letters,
    headers_of,
    publisher,
    record_of,
    sink_answering,
    topic,
)
from tests.support import wait_until

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0.12 loads its protocol schemas with deprecated importlib.resources calls
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

__all__ = ["broker", "publisher", "topic"]  # the fixtures, found by pytest in this module

SOURCE_NAME = "stock-in"
STRUCTURED = [("content-type", b"application/cloudevents+json")]


def _knative(
    broker: EmbeddedBroker,
    topic: str,
    url: str,
    *,
    retry: int = 3,
    issuer: LocalIssuer | None = None,
    **kwargs: Any,
) -> KafkaBridge:
    dispatcher = KnativeDispatcher({topic: SOURCE_NAME}, issuer, retry=retry, backoff_delay=0.02)
    settings: dict[str, Any] = {"http_timeout": 5.0, **kwargs}
    return KafkaBridge(broker.bootstrap, {topic: url}, dispatcher=dispatcher, **settings)


# -- bridge: Knative KafkaSource ---------------------------------------------------------


def test_knative_bridge_delivers_records_as_a_kafkasource_does(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    publisher.publish(topic, "old", b'{"before": "start"}')  # the bridge starts at the end
    read_topic(broker.bootstrap, topic, until=bool, timeout=5)
    event = {
        "specversion": "1.0",
        "id": "evt-42",
        "source": "/psi/stock",
        "type": "psi.stock.changed",
        "data": {"sku": "sku-1", "qty": 2},
    }
    plain_value, event_value = b'{"sku": "sku-1", "qty": 3}', json.dumps(event).encode()
    subject = kafka_source_subject("psi", SOURCE_NAME)
    with (
        LocalIssuer() as issuer,
        HttpSink() as sink,
        _knative(broker, topic, sink.url, issuer=issuer) as bridge,
    ):
        publisher.publish(topic, "sku-1", plain_value)
        publisher.publish(topic, "sku-1", event_value, headers=STRUCTURED)
        publisher.publish(topic, "sku-1", event_value)  # no content-type: not a CloudEvent
        requests = sink.wait_for(lambda rs: len(rs) >= 3, timeout=10)
        wait_until(lambda: bridge.stats.delivered == 3, timeout=5)
        verifier = OidcVerifier(
            issuer.url, service_audience("psi", SOURCE_NAME), frozenset({subject})
        )
        senders = [
            verifier.verify(str(r.header("authorization")).removeprefix("Bearer "))
            for r in requests
        ]

    plain = record_of(broker, topic, plain_value)
    wrapped = record_of(broker, topic, event_value)  # both share the key: one partition
    p = plain.partition
    first, forwarded, wrapped_req = requests
    assert len(requests) == 3  # the record from before the start was not delivered
    assert senders == [subject] * 3

    assert first.method == "POST"
    assert first.body == plain_value
    assert first.header("ce-specversion") == "1.0"
    assert first.header("ce-id") == f"partition:{p}/offset:{plain.offset}"
    assert first.header("ce-source") == f"/apis/v1/namespaces/psi/kafkasources/stock-in#{topic}"
    assert first.header("ce-type") == "dev.knative.kafka.event"
    assert first.header("ce-subject") == f"partition:{p}#{plain.offset}"
    assert first.header("ce-key") == "sku-1"
    assert first.header("ce-partitionkey") == "sku-1"
    assert first.header("ce-knativekafkapartition") == str(p)
    assert first.header("ce-knativekafkaoffset") == str(plain.offset)
    sent_at = datetime.fromisoformat(str(first.header("ce-time")).replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
    assert first.header("x-topic") is None

    assert forwarded.header("ce-id") == "evt-42"
    assert forwarded.header("ce-source") == "/psi/stock"
    assert forwarded.header("ce-type") == "psi.stock.changed"
    assert forwarded.header("content-type") == "application/json"
    assert json.loads(forwarded.body) == {"sku": "sku-1", "qty": 2}
    assert forwarded.header("ce-knativekafkaoffset") == str(plain.offset + 1)

    assert wrapped_req.header("ce-type") == "dev.knative.kafka.event"
    assert wrapped_req.header("ce-id") == f"partition:{p}/offset:{wrapped.offset + 1}"
    assert wrapped_req.body == event_value


def test_bridge_starts_after_a_batched_log_end(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    from kafka import KafkaProducer

    # one multi-record batch: Tansu's end_offsets() then says 1, not 20
    batcher = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200, acks="all")
    try:
        for i in range(20):
            batcher.send(topic, key=b"same", value=f'{{"old": {i}}}'.encode())
        batcher.flush(10)
    finally:
        batcher.close(5)
    with HttpSink() as sink, _knative(broker, topic, sink.url):
        publisher.publish(topic, "same", b'{"new": true}')
        requests = sink.wait_for(lambda rs: len(rs) >= 1, timeout=10)
    assert [r.body for r in requests] == [b'{"new": true}']
    assert str(requests[0].header("ce-subject")).endswith("#20")
    assert str(requests[0].header("ce-id")).endswith("/offset:20")


def test_knative_bridge_retries_409_then_dead_letters_and_422_at_once(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    def rule(req: CapturedRequest) -> tuple[int, str]:
        if b"busy" in req.body:
            return 409, "order is busy"
        return (422, "unknown sku: nope") if b"nope" in req.body else (200, "ok")

    with (
        sink_answering(rule) as sink,
        _knative(broker, topic, sink.url, retry=2, from_beginning=True) as bridge,
    ):
        for sku in ("busy", "nope", "fine"):
            publisher.publish(topic, "same-key", json.dumps({"sku": sku}).encode())
        requests = sink.wait_for(lambda rs: any(b"fine" in r.body for r in rs), timeout=10)
        # the sink records a request before the bridge has read the answer
        wait_until(lambda: bridge.stats.delivered == 1, timeout=5)
        stats, url = bridge.stats, sink.url

    assert [json.loads(r.body)["sku"] for r in requests] == ["busy"] * 3 + ["nope", "fine"]
    assert len({r.header("ce-id") for r in requests[:3]}) == 1  # the same event each time
    assert (stats.delivered, stats.retries, stats.dead_lettered) == (1, 2, 2)

    busy, nope = dead_letters(broker, topic, 2, settle=True)  # once each
    for letter, sku, offset in ((busy, "busy", 0), (nope, "nope", 1)):
        headers = headers_of(letter)
        assert letter.value == json.dumps({"sku": sku}).encode()
        assert letter.key == b"same-key"
        partition = headers["ce_knativekafkapartition"]
        assert headers["ce_id"] == f"partition:{partition}/offset:{offset}"
        assert headers["ce_type"] == "dev.knative.kafka.event"
        assert headers["ce_partitionkey"] == "same-key"
        assert headers["ce_knativeerrordest"] == url
        assert "content-type" not in headers  # the record had none
    assert headers_of(busy)["ce_knativeerrorcode"] == "409"
    assert base64.b64decode(headers_of(busy)["ce_knativeerrordata"]) == b"order is busy"
    assert headers_of(nope)["ce_knativeerrorcode"] == "422"
    assert base64.b64decode(headers_of(nope)["ce_knativeerrordata"]) == b"unknown sku: nope"


def test_knative_bridge_retries_503_then_delivers_once(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    answers = iter([(503, "warming up")])

    with sink_answering(lambda _req: next(answers, (200, "ok"))) as sink:
        with _knative(broker, topic, sink.url, from_beginning=True) as bridge:
            publisher.publish(topic, "k", b'{"n": 1}')
            requests = sink.wait_for(lambda rs: len(rs) >= 2, timeout=10)
            wait_until(lambda: bridge.stats.delivered == 1, timeout=5)
            stats = bridge.stats
        extra = len(sink.requests)

    sent = record_of(broker, topic, b'{"n": 1}')
    assert [r.body for r in requests] == [b'{"n": 1}', b'{"n": 1}']
    ce_id = f"partition:{sent.partition}/offset:0"
    assert [r.header("ce-id") for r in requests] == [ce_id, ce_id]
    assert extra == 2  # no redelivery after the 2xx
    assert (stats.delivered, stats.retries, stats.dead_lettered) == (1, 1, 0)


def test_knative_bridge_dead_letters_connection_errors_without_a_code(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    with HttpSink() as closed:
        dead_url = closed.url  # port is free again once the sink stops
    with _knative(broker, topic, dead_url, retry=2, from_beginning=True) as bridge:
        publisher.publish(topic, "k", b'{"n": 3}')
        (letter,) = dead_letters(broker, topic, 1)
        stats = bridge.stats

    headers = headers_of(letter)
    assert letter.value == b'{"n": 3}'
    assert headers["ce_knativeerrordest"] == dead_url
    assert "ce_knativeerrorcode" not in headers
    assert "ce_knativeerrordata" not in headers
    assert (stats.retries, stats.dead_lettered, stats.delivered) == (2, 1, 0)


def test_knative_bridge_dead_letters_poison_whole_and_keeps_going(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    deep = b'{"a": ' * 5000 + b"1" + b"}" * 5000
    big = (b"\xff\xfe\xc3\x28 not utf-8 \x80" * 60_000)[:800_000]
    good = b'{"good": true}'

    def rule(req: CapturedRequest) -> tuple[int, str]:
        return (200, "ok") if req.body == good else (400, "bad input")

    with (
        sink_answering(rule) as sink,
        _knative(broker, topic, sink.url, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "poison", deep, headers=STRUCTURED)
        publisher.publish(topic, "poison", big)
        publisher.publish(topic, "poison", good)
        requests = sink.wait_for(lambda rs: any(r.body == good for r in rs), timeout=20)
        wait_until(lambda: bridge.stats.delivered == 1, timeout=5)
        stats, running = bridge.stats, bridge.running

    assert running
    assert [len(r.body) for r in requests] == [len(deep), 800_000, len(good)]  # 400: no retry
    assert requests[0].header("ce-type") == "dev.knative.kafka.event"  # unreadable: wrapped
    assert (stats.delivered, stats.dead_lettered, stats.retries) == (1, 2, 0)
    deep_letter, big_letter = dead_letters(broker, topic, 2, settle=True)
    assert len(deep_letter.value) == len(deep) and deep_letter.value == deep
    assert len(big_letter.value) == 800_000 and big_letter.value == big
    assert headers_of(deep_letter)["content-type"] == "application/cloudevents+json"
    for letter in (deep_letter, big_letter):
        assert headers_of(letter)["ce_knativeerrorcode"] == "400"
        assert base64.b64decode(headers_of(letter)["ce_knativeerrordata"]) == b"bad input"


def test_knative_bridge_reports_a_stalled_partition(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    with (
        sink_answering(lambda _req: (503, "down")) as sink,
        _knative(broker, topic, sink.url, retry=1000, stall_after=0.2) as bridge,
    ):
        assert bridge.stalled() == []
        publisher.publish(topic, "k", b'{"stuck": true}')
        stuck = record_of(broker, topic, b'{"stuck": true}')
        stalled = wait_until(bridge.stalled, timeout=5, what="a stalled partition")
        assert len(sink.requests) >= 1
        stats = bridge.stats
    assert stalled == [f"{topic}[{stuck.partition}]@{stuck.offset}"]
    assert (stats.delivered, stats.dead_lettered) == (0, 0)
    assert not bridge.running


def test_bridge_reads_recreated_topic_from_start_after_broker_restart(tmp_path: Path) -> None:
    own = start_broker(tmp_path)
    try:
        own.create_topics(["psi.test.bounce"], partitions=1)
        with (
            HttpSink() as sink,
            KafkaEventPublisher(own.bootstrap) as pub,
            _knative(own, "psi.test.bounce", sink.url, refresh_interval=0.2),
        ):
            for i in range(3):
                pub.publish("psi.test.bounce", "k", f'{{"n": {i}}}'.encode())
            sink.wait_for(lambda rs: len(rs) >= 3, timeout=10)

            own.restart(graceful=False)
            pub.publish("psi.test.bounce", "k", b'{"n": "after"}')

            requests = sink.wait_for(lambda rs: len(rs) >= 4, timeout=15)
        assert [r.header("ce-id") for r in requests[:3]] == [
            f"partition:0/offset:{i}" for i in range(3)
        ]
        assert requests[3].body == b'{"n": "after"}'
        assert requests[3].header("ce-id") == "partition:0/offset:0"
    finally:
        own.stop(graceful=False)


# -- bridge: no record may stop it -------------------------------------------------------


def test_knative_bridge_wraps_an_event_it_cannot_encode(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    # a lone surrogate is valid JSON text but no UTF-8: like a record the dispatcher cannot
    # deserialize as a CloudEvent, it is delivered wrapped, as any other record
    unencodable = (
        b'{"specversion": "1.0", "id": "e", "source": "/s", "type": "t", "data": "\\ud800"}'
    )
    with (
        HttpSink() as sink,
        _knative(broker, topic, sink.url, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "k", unencodable, headers=STRUCTURED)
        publisher.publish(topic, "k", b'{"next": true}')
        wait_until(lambda: bridge.stats.delivered == 2 or not bridge.running, timeout=10)
        assert bridge.running, "a record stopped the bridge"
        first, second = sink.requests[-2:]
    assert first.body == unencodable
    assert first.header("ce-type") == "dev.knative.kafka.event"
    assert second.body == b'{"next": true}'
    assert bridge.stats.dead_lettered == 0


def test_knative_bridge_survives_a_content_type_http_cannot_carry(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    with (
        HttpSink() as sink,
        _knative(broker, topic, sink.url, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "k", b"{}", headers=[("content-type", b"\xff")])
        publisher.publish(topic, "k", b'{"next": true}')
        wait_until(lambda: bridge.stats.delivered == 1 or not bridge.running, timeout=10)
        assert bridge.running, "a record stopped the bridge"
        assert [r.body for r in sink.requests][-1:] == [b'{"next": true}']
        stats = bridge.stats

    (letter,) = dead_letters(broker, topic, 1)
    assert letter.value == b"{}"
    assert (stats.delivered, stats.dead_lettered) == (1, 1)
