"""The CloudEvents bridge as the OpenFaaS kafka-connector against a real broker: connector
headers, Retry-After, giving up without a dead letter, and no record may stop it."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from psi_local.bridge import KafkaBridge
from psi_local.broker import EmbeddedBroker
from psi_local.dispatchers import OpenFaasConnector
from shared_lib.adapters.kafka import KafkaEventPublisher
from tests.http_sink import CapturedRequest, HttpSink
from tests.integration.kafka_support import (
    broker,
    dead_letters,
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


def _openfaas(
    broker: EmbeddedBroker,
    topic: str,
    url: str,
    *,
    credential: str | None = None,
    max_attempts: int = 5,
    initial_wait: float = 0.02,
    **kwargs: Any,
) -> KafkaBridge:
    connector = OpenFaasConnector(
        credential, max_attempts=max_attempts, initial_wait=initial_wait, max_wait=0.1
    )
    settings: dict[str, Any] = {"http_timeout": 5.0, **kwargs}
    return KafkaBridge(broker.bootstrap, {topic: url}, dispatcher=connector, **settings)


Scripted = tuple[int, str, dict[str, str]]


class ScriptedSink:
    """Like HttpSink, but an answer can carry headers (``Retry-After``)."""

    def __init__(self, respond: Callable[[CapturedRequest], Scripted]) -> None:
        self.respond = respond
        self.requests: list[CapturedRequest] = []
        self.times: list[float] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = CapturedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                status, text, headers = sink.respond(request)
                sink.requests.append(request)
                sink.times.append(time.monotonic())
                payload = text.encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- bridge: OpenFaaS kafka-connector ----------------------------------------------------


def test_openfaas_bridge_invokes_with_connector_headers_and_4xx_ends_the_record(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    def rule(req: CapturedRequest) -> tuple[int, str]:
        return (422, "unknown sku") if b"refused" in req.body else (200, "ok")

    with (
        sink_answering(rule) as sink,
        _openfaas(broker, topic, sink.url, credential="s3cret-key", from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "sku-1", b'{"n": 1}', headers=[("trace", b"t-1")])
        publisher.publish(topic, "clé", b'{"n": 2}')
        publisher.publish(topic, "clé", b'{"refused": true}')
        requests = sink.wait_for(lambda rs: len(rs) >= 3, timeout=10)
        wait_until(lambda: bridge.stats.delivered == 3, timeout=5)
        stats = bridge.stats
        settled = len(sink.requests)

    first = record_of(broker, topic, b'{"n": 1}')
    by_body = {r.body: r for r in requests}
    one, two = by_body[b'{"n": 1}'], by_body[b'{"n": 2}']
    assert one.header("x-topic") == topic
    assert one.header("x-connector") == "connector-sdk"
    assert one.header("x-kafka-partition") == str(first.partition)
    assert one.header("x-kafka-offset") == str(first.offset)
    assert one.header("x-kafka-key") == "sku-1"
    assert one.header("x-kafka-key-enc") is None
    assert one.header("x-kafka-trace") == "t-1"
    assert one.header("content-type") == "text/plain"
    assert one.header("ce-id") is None
    scheme, _, encoded = str(one.header("authorization")).partition(" ")
    assert (scheme, base64.b64decode(encoded)) == ("Basic", b"kafka-connector:s3cret-key")
    assert two.header("x-kafka-key") == base64.b64encode("clé".encode()).decode()
    assert two.header("x-kafka-key-enc") == "b64"

    assert settled == 3  # the 422 was sent once: the function parks what it refuses
    assert (stats.delivered, stats.retries, stats.dead_lettered, stats.given_up) == (3, 0, 0, 0)
    assert dead_letters(broker, topic, 0, settle=True) == []


def test_openfaas_bridge_honours_retry_after(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    answers = iter([(503, "busy", {"Retry-After": "0"})])

    with (
        ScriptedSink(lambda _req: next(answers, (200, "ok", {}))) as sink,
        # without Retry-After the next try would wait initial_wait = 5 s
        _openfaas(broker, topic, sink.url, initial_wait=5.0, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "k", b'{"n": 1}')
        wait_until(lambda: bridge.stats.delivered == 1, timeout=10)
        stats = bridge.stats

    assert [r.body for r in sink.requests] == [b'{"n": 1}', b'{"n": 1}']
    assert sink.times[1] - sink.times[0] < 1.0
    assert (stats.delivered, stats.retries, stats.given_up) == (1, 1, 0)


def test_openfaas_bridge_gives_up_after_max_attempts_without_dead_letter(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    def rule(req: CapturedRequest) -> tuple[int, str]:
        return (503, "down") if b"down" in req.body else (200, "ok")

    with (
        sink_answering(rule) as sink,
        _openfaas(broker, topic, sink.url, max_attempts=3, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "k", b'{"down": true}')
        publisher.publish(topic, "k", b'{"next": true}')
        requests = sink.wait_for(lambda rs: any(b"next" in r.body for r in rs), timeout=10)
        wait_until(lambda: bridge.stats.delivered == 1, timeout=5)
        stats = bridge.stats

    assert [r.body for r in requests] == [b'{"down": true}'] * 3 + [b'{"next": true}']
    assert (stats.delivered, stats.retries, stats.given_up, stats.dead_lettered) == (1, 2, 1, 0)
    assert dead_letters(broker, topic, 0, settle=True) == []


# -- bridge: no record may stop it -------------------------------------------------------


def test_openfaas_bridge_survives_a_record_header_http_cannot_carry(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    with (
        HttpSink() as sink,
        _openfaas(broker, topic, sink.url, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "k", b"{}", headers=[("trace", b"line\r\nbreak")])
        publisher.publish(topic, "k", b'{"next": true}')
        wait_until(lambda: bridge.stats.delivered == 1 or not bridge.running, timeout=10)
        assert bridge.running, "a record stopped the bridge"
        assert [r.body for r in sink.requests][-1:] == [b'{"next": true}']
        assert bridge.stats.delivered == 1


def test_bridge_survives_a_retry_after_it_cannot_read(
    broker: EmbeddedBroker, publisher: KafkaEventPublisher, topic: str
) -> None:
    answers = iter([(503, "busy", {"Retry-After": "\u00b2"})])  # str.isdigit() says yes

    with (
        ScriptedSink(lambda _req: next(answers, (200, "ok", {}))) as sink,
        _openfaas(broker, topic, sink.url, from_beginning=True) as bridge,
    ):
        publisher.publish(topic, "k", b'{"n": 1}')
        wait_until(lambda: bridge.stats.delivered == 1 or not bridge.running, timeout=10)
        assert bridge.running, "a Retry-After header stopped the bridge"
        stats = bridge.stats

    assert len(sink.requests) == 2
    assert (stats.delivered, stats.retries) == (1, 1)
