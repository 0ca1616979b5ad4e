"""Kafka publisher, embedded Tansu broker and the CloudEvents bridge against a real broker."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared_lib.adapters.kafka import KafkaEventPublisher, PublishError, Record, read_topic
from shared_lib.devstack.bridge import KafkaBridge, cloudevent_request
from shared_lib.devstack.broker import EmbeddedBroker
from shared_lib.devstack.testing import CapturedRequest, HttpSink
from shared_lib.topics import DEAD_LETTER
from tests.conftest import start_broker
from tests.support import wait_until

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0.12 loads its protocol schemas with deprecated importlib.resources calls
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]


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


def _dead_letters_for(broker: EmbeddedBroker, topic: str, count: int) -> list[dict[str, object]]:
    def mine(records: list[Record]) -> list[dict[str, object]]:
        docs = [json.loads(r.value) for r in records]
        return [d for d in docs if d["topic"] == topic]

    records = read_topic(
        broker.bootstrap, DEAD_LETTER, until=lambda rs: len(mine(rs)) >= count, timeout=10
    )
    return mine(records)


def _bridge(broker: EmbeddedBroker, topic: str, url: str, **kwargs: object) -> KafkaBridge:
    settings: dict[str, object] = {"backoff_base": 0.05, "backoff_max": 0.2, "http_timeout": 5.0}
    settings.update(kwargs)
    return KafkaBridge(broker.bootstrap, {topic: url}, **settings)  # type: ignore[arg-type]


def _answer(rule: Callable[[CapturedRequest], tuple[int, str]]) -> HttpSink:
    return HttpSink(rule).start()


# -- publisher and broker --------------------------------------------------------------


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


# -- bridge ----------------------------------------------------------------------------


def test_bridge_delivers_binary_cloudevent(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    publisher.publish(topic, "old", b'{"before": "start"}')  # bridge starts at the end
    read_topic(broker.bootstrap, topic, until=bool, timeout=5)
    with HttpSink() as sink, _bridge(broker, topic, sink.url) as bridge:
        publisher.publish(topic, "sku-1", b'{"sku": "sku-1", "qty": 3}')
        structured = {"specversion": "1.0", "id": "evt-42", "source": "/x", "type": "t"}
        publisher.publish(topic, "sku-1", json.dumps(structured).encode())

        requests = sink.wait_for(lambda rs: len(rs) >= 2, timeout=10)

    records = read_topic(broker.bootstrap, topic, until=lambda rs: len(rs) >= 3, timeout=5)
    first = next(r for r in records if r.value == b'{"sku": "sku-1", "qty": 3}')
    binary, structured_req = requests[0], requests[1]
    assert binary.method == "POST"
    assert binary.body == b'{"sku": "sku-1", "qty": 3}'
    assert binary.header("ce-specversion") == "1.0"
    assert binary.header("ce-id") == f"{topic}-{first.partition}-{first.offset}"
    assert binary.header("ce-source") == f"/psi/kafka/{topic}"
    assert binary.header("ce-type") == "dev.knative.kafka.event"
    assert binary.header("ce-subject") == f"partition:{first.partition}#{first.offset}"
    assert binary.header("content-type") == "application/json"
    assert binary.header("x-topic") == topic
    assert structured_req.header("content-type") == "application/cloudevents+json"
    assert structured_req.header("ce-id") is None
    assert json.loads(structured_req.body) == structured
    assert structured_req.header("x-topic") == topic
    assert all(r.body != b'{"before": "start"}' for r in requests)
    assert bridge.stats.delivered == 2  # stop() joined the thread after both answers


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
    with HttpSink() as sink, _bridge(broker, topic, sink.url):
        publisher.publish(topic, "same", b'{"new": true}')
        requests = sink.wait_for(lambda rs: len(rs) >= 1, timeout=10)
    assert [r.body for r in requests] == [b'{"new": true}']
    assert str(requests[0].header("ce-subject")).endswith("#20")


def test_bridge_dead_letters_4xx_and_moves_on(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    def rule(req: CapturedRequest) -> tuple[int, str]:
        return (422, "unknown sku: nope") if b"nope" in req.body else (200, "ok")

    sink = _answer(rule)
    try:
        with _bridge(broker, topic, sink.url, from_beginning=True) as bridge:
            publisher.publish(topic, "same-key", b'{"sku": "nope"}')
            publisher.publish(topic, "same-key", b'{"sku": "fine"}')
            requests = sink.wait_for(lambda rs: any(b"fine" in r.body for r in rs), timeout=10)
            assert [json.loads(r.body)["sku"] for r in requests] == ["nope", "fine"]
            # the sink records a request before the bridge has read the answer
            wait_until(lambda: bridge.stats.delivered == 1, timeout=5)
            assert bridge.stats.dead_lettered == 1
    finally:
        sink.stop()

    (doc,) = _dead_letters_for(broker, topic, 1)
    assert doc["reason"] == "unknown sku: nope"
    assert doc["status"] == 422
    assert doc["payload"] == '{"sku": "nope"}'
    assert doc["key"] == "same-key"
    assert isinstance(doc["partition"], int) and doc["offset"] == 0
    assert str(doc["failed_at"]).endswith("Z")
    assert "payload_base64" not in doc


def test_bridge_dead_letters_invalid_utf8_as_base64(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    def rule(req: CapturedRequest) -> tuple[int, str]:
        try:
            json.loads(req.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return 400, ""
        return 200, "ok"

    raw = b"\xff\xfe not utf-8 \x80"
    with _answer(rule) as sink, _bridge(broker, topic, sink.url, from_beginning=True):
        publisher.publish(topic, "bin", raw)
        sink.wait_for(lambda rs: len(rs) >= 1, timeout=10)
        (doc,) = _dead_letters_for(broker, topic, 1)

    assert doc["status"] == 400
    assert doc["reason"] == "HTTP 400"  # empty body: the status is the reason
    assert "payload" not in doc
    assert base64.b64decode(str(doc["payload_base64"])) == raw


def test_bridge_retries_5xx_then_delivers_once(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    answers = iter([(503, "warming up")])

    with _answer(lambda _req: next(answers, (200, "ok"))) as sink:
        with _bridge(broker, topic, sink.url, from_beginning=True) as bridge:
            publisher.publish(topic, "k", b'{"n": 1}')
            requests = sink.wait_for(lambda rs: len(rs) >= 2, timeout=10)
            wait_until(lambda: bridge.stats.delivered == 1, timeout=5)
            stats = bridge.stats
        extra = len(sink.requests)

    assert [r.body for r in requests] == [b'{"n": 1}', b'{"n": 1}']
    assert requests[0].header("ce-id") == requests[1].header("ce-id")
    assert extra == 2  # no redelivery after the 2xx
    assert (stats.delivered, stats.retries, stats.dead_lettered) == (1, 1, 0)


def test_bridge_dead_letters_after_retries_run_out(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    with _answer(lambda _req: (503, "down for good")) as sink:
        with _bridge(broker, topic, sink.url, from_beginning=True, max_attempts=3):
            publisher.publish(topic, "k", b'{"n": 2}')
            (doc,) = _dead_letters_for(broker, topic, 1)
        assert len(sink.requests) == 3
    assert (doc["status"], doc["reason"], doc["attempts"]) == (503, "down for good", 3)


def test_bridge_dead_letters_connection_errors_with_status_0(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    with HttpSink() as closed:
        dead_url = closed.url  # port is free again once the sink stops
    with _bridge(broker, topic, dead_url, from_beginning=True, max_attempts=2):
        publisher.publish(topic, "k", b'{"n": 3}')
        (doc,) = _dead_letters_for(broker, topic, 1)
    assert doc["status"] is None
    assert "refused" in str(doc["reason"]).lower()


def test_bridge_reads_recreated_topic_from_start_after_broker_restart(tmp_path: Path) -> None:
    own = start_broker(tmp_path)
    try:
        own.create_topics(["psi.test.bounce"], partitions=1)
        with (
            HttpSink() as sink,
            KafkaEventPublisher(own.bootstrap) as pub,
            _bridge(own, "psi.test.bounce", sink.url, refresh_interval=0.2),
        ):
            for i in range(3):
                pub.publish("psi.test.bounce", "k", f'{{"n": {i}}}'.encode())
            sink.wait_for(lambda rs: len(rs) >= 3, timeout=10)

            own.restart(graceful=False)
            pub.publish("psi.test.bounce", "k", b'{"n": "after"}')

            requests = sink.wait_for(lambda rs: len(rs) >= 4, timeout=15)
        assert requests[3].body == b'{"n": "after"}'
        assert requests[3].header("ce-id") == "psi.test.bounce-0-0"
    finally:
        own.stop(graceful=False)


def test_kafka_binary_cloudevent_headers_are_forwarded() -> None:
    record = Record(
        topic="psi.stock.changed",
        partition=1,
        offset=7,
        key=b"sku-1",
        value=b'{"qty": 1}',
        headers=[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"evt-1"),
            ("ce_type", b"psi.stock.changed"),
            ("ce_source", b"/psi/stock"),
            ("ce_subject", b"caf\xc3\xa9 1"),
            ("content-type", b"application/json; charset=utf-8"),
        ],
    )
    body, headers = cloudevent_request(record)
    assert body == b'{"qty": 1}'
    assert headers["ce-id"] == "evt-1"
    assert headers["ce-type"] == "psi.stock.changed"
    assert headers["ce-source"] == "/psi/stock"
    assert headers["ce-subject"] == "caf%C3%A9%201"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-Topic"] == "psi.stock.changed"
