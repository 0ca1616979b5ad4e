"""Local stand-in for the platform that delivers Kafka records to the functions.

``platform="knative"`` (the default) does what a Knative KafkaSource's dispatcher does
(knative-extensions/eventing-kafka-broker; docs/platform-contracts.md has the rules and
their sources):

* a record that is a CloudEvent by the Kafka binding (``content-type:
  application/cloudevents+json``, or ``ce_specversion`` headers) is forwarded as that
  event; any other record becomes ``id partition:<p>/offset:<o>``, ``source
  /apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>``, ``type dev.knative.kafka.event``,
  with ``key``/``partitionkey`` and ``kafkaheader<name>`` extensions;
* always sent in binary mode, with the ``knativekafkapartition``/``knativekafkaoffset``
  extensions and an OIDC sender token (``Authorization: Bearer``) from a local issuer;
* 404, 408, 409, 429, 5xx and network errors are retried with exponential backoff
  (``delay * 2^n``); anything else, or a retry budget spent, goes to the dead-letter sink:
  a KafkaSink record in binary mode (``ce_`` headers plus ``knativeerrordest``,
  ``knativeerrorcode``, ``knativeerrordata``, the event's data as value).

``platform="openfaas"`` does what kafka-connector with asynchronous invocation and the
queue-worker do: the record value as body, ``X-Topic``, ``X-Kafka-Partition``,
``X-Kafka-Offset``, ``X-Kafka-Key`` and ``X-Kafka-<header>``, HTTP Basic credentials (the
user info of the connector's gateway URL); 408, 429, 500, 502, 503, 504 and network errors
are retried with exponential backoff (``Retry-After`` honoured on 429 and 503); any other
answer ends the record - the function parks what it refuses.

No record can stop the bridge: one it cannot even shape is dead-lettered (Knative) or
logged and skipped (OpenFaaS), and ``stalled()`` names a partition that stopped moving.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from shared_lib.adapters.kafka import (
    EventPublisher,
    Headers,
    KafkaEventPublisher,
    PublishError,
    Record,
    new_consumer,
    to_record,
)
from shared_lib.http.delivery import CLOUDEVENTS_JSON, KNATIVE, OPENFAAS, retried_by
from shared_lib.topics import DEAD_LETTER

if TYPE_CHECKING:
    from kafka import KafkaConsumer, TopicPartition

    from psi_local.oidc import LocalIssuer

log = logging.getLogger(__name__)

CE_TYPE = "dev.knative.kafka.event"
MAX_BODY_READ = 64 * 1024
ERROR_DATA_MAX_BYTES = 1024  # knativeerrordata: the answer's first KiB (RecordDispatcherImpl)
# kafka-connector's Helm chart default content type for invocations
CONNECTOR_CONTENT_TYPE = "text/plain"


class BridgeError(RuntimeError):
    """The bridge could not start."""


@dataclass(frozen=True)
class BridgeStats:
    delivered: int = 0
    dead_lettered: int = 0
    retries: int = 0
    dead_letter_failures: int = 0
    given_up: int = 0  # OpenFaaS: retries spent, the record is lost as the queue-worker loses it
    unshapeable: int = 0


def _ce_header_value(text: str) -> str:
    # CloudEvents HTTP binding: percent-encode space, '"', '%' and non-printable-ASCII
    out = []
    for ch in text:
        if 0x21 <= ord(ch) <= 0x7E and ch not in '"%':
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _header(record: Record, name: str) -> bytes | None:
    for key, raw in record.headers:
        if key.lower() == name:
            return raw
    return None


@dataclass(frozen=True)
class Event:
    """A CloudEvent as the dispatcher holds it: attributes and extensions, and its data."""

    attributes: dict[str, str]
    data: bytes

    def http(self) -> tuple[bytes, dict[str, str]]:
        """Binary-mode HTTP: ``ce-<attr>`` headers, ``datacontenttype`` as Content-Type."""
        headers = {}
        for name, value in self.attributes.items():
            if name == "datacontenttype":
                headers["Content-Type"] = value
            else:
                headers[f"ce-{name}"] = _ce_header_value(value)
        return self.data, headers

    def kafka(self) -> tuple[bytes, Headers]:
        """What a KafkaSink in binary content mode writes: ``ce_<attr>`` headers, the
        ``datacontenttype`` as ``content-type``, the data as value."""
        headers: Headers = []
        for name, value in self.attributes.items():
            header = "content-type" if name == "datacontenttype" else f"ce_{name}"
            headers.append((header, value.encode("utf-8")))
        return self.data, headers


def _structured_event(value: bytes) -> Event | None:
    """The event in a structured-mode record; None when it cannot be read (the dispatcher
    then wraps the record as it would any other)."""
    try:
        document = json.loads(value)
        if not isinstance(document, dict) or not document.get("id") or not document.get("source"):
            return None
        attributes = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in document.items()
            if k not in ("data", "data_base64")
        }
        for text in attributes.values():
            text.encode("utf-8")
        if "data_base64" in document:
            data = base64.b64decode(str(document["data_base64"]))
        elif "data" in document:
            attributes.setdefault("datacontenttype", "application/json")
            payload = document["data"]
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        else:
            data = b""
    except (ValueError, RecursionError, UnicodeError):
        return None
    return Event(attributes, data)


def kafka_event(record: Record, namespace: str, source: str) -> Event:
    """The CloudEvent a KafkaSource makes of ``record`` (see the module doc)."""
    content_type = (_header(record, "content-type") or b"").decode("latin-1").lower()
    event = None
    if content_type.startswith(CLOUDEVENTS_JSON):
        event = _structured_event(record.value)
    elif _header(record, "ce_specversion") is not None:
        attributes = {
            name[3:].lower(): raw.decode("utf-8", "replace")
            for name, raw in record.headers
            if name.lower().startswith("ce_") and len(name) > 3
        }
        if content_type:
            attributes["datacontenttype"] = content_type
        event = Event(attributes, record.value)
    if event is None:  # not a CloudEvent (or not a readable one): the dispatcher wraps it
        attributes = {
            "specversion": "1.0",
            "id": f"partition:{record.partition}/offset:{record.offset}",
            "source": f"/apis/v1/namespaces/{namespace}/kafkasources/{source}#{record.topic}",
            "type": CE_TYPE,
            "subject": f"partition:{record.partition}#{record.offset}",
        }
        if record.timestamp is not None:
            moment = datetime.fromtimestamp(record.timestamp / 1000, UTC)
            attributes["time"] = moment.isoformat().replace("+00:00", "Z")
        if record.key is not None:
            key = record.key.decode("utf-8", "replace")
            attributes["key"] = attributes["partitionkey"] = key
        for name, raw in record.headers:
            if name.lower() == "content-type":
                attributes["datacontenttype"] = raw.decode("utf-8", "replace").lower()
            else:
                clean = "".join(c for c in name.lower() if c.isascii() and c.isalnum())
                attributes[f"kafkaheader{clean}"] = raw.decode("utf-8", "replace")
        event = Event(attributes, record.value)
    event.attributes["knativekafkapartition"] = str(record.partition)
    event.attributes["knativekafkaoffset"] = str(record.offset)
    return event


def dead_letter_record(
    event: Event, *, url: str, status: int, answer: str
) -> tuple[bytes, Headers, str | None]:
    """The record the deadLetterSink (a binary-mode KafkaSink) writes for a failed event:
    value, headers and key (its ``partitionkey``)."""
    attributes = dict(event.attributes)
    attributes["knativeerrordest"] = url
    if status:
        attributes["knativeerrorcode"] = str(status)
        data = answer.encode("utf-8")[:ERROR_DATA_MAX_BYTES]
        if data:
            attributes["knativeerrordata"] = base64.b64encode(data).decode("ascii")
    value, headers = Event(attributes, event.data).kafka()
    return value, headers, attributes.get("partitionkey")


class Dispatcher(Protocol):
    """One platform's way to deliver a record: shape, retry policy, and the end of it."""

    name: str
    max_attempts: int

    def request(self, record: Record, url: str) -> tuple[bytes, dict[str, str]]: ...

    def retried(self, status: int) -> bool: ...

    def delay(self, attempt: int, retry_after: float | None) -> float: ...

    def letter(
        self, record: Record, url: str, status: int, answer: str
    ) -> tuple[bytes, Headers, str | None] | None:
        """What its dead-letter sink writes for a record that failed for good (value,
        headers, key); None when the platform has none."""
        ...


@dataclass
class KnativeDispatcher:
    """KafkaSource: CloudEvents with an OIDC sender token; ``retry`` and ``backoff_delay``
    are the source's ``spec.delivery.retry`` and ``backoffDelay`` (seconds)."""

    sources: Mapping[str, str]  # topic -> KafkaSource name (also the function's name)
    issuer: LocalIssuer | None = None
    namespace: str = "psi"
    retry: int = 10
    backoff_delay: float = 1.0
    name: str = KNATIVE

    @property
    def max_attempts(self) -> int:
        return self.retry + 1

    def event(self, record: Record) -> Event:
        return kafka_event(record, self.namespace, self.sources[record.topic])

    def request(self, record: Record, url: str) -> tuple[bytes, dict[str, str]]:
        from psi_local.oidc import kafka_source_subject, service_audience

        body, headers = self.event(record).http()
        headers["Prefer"] = "reply"
        headers["Kn-Namespace"] = self.namespace
        if self.issuer is not None:
            source = self.sources[record.topic]
            token = self.issuer.token(
                service_audience(self.namespace, source),
                kafka_source_subject(self.namespace, source),
            )
            headers["Authorization"] = f"Bearer {token}"
        return body, headers

    def retried(self, status: int) -> bool:
        return status == 0 or retried_by(KNATIVE, status)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        return self.backoff_delay * 2**attempt  # EKB ignores Retry-After

    def letter(
        self, record: Record, url: str, status: int, answer: str
    ) -> tuple[bytes, Headers, str | None]:
        try:
            return dead_letter_record(self.event(record), url=url, status=status, answer=answer)
        except Exception:  # its headers cannot be written: park it as a plain record
            log.exception("dead letter of %s-%s-%s written without its headers", *_where(record))
            bare = self.event(replace(record, headers=[]))
            return dead_letter_record(bare, url=url, status=status, answer="")


@dataclass
class OpenFaasConnector:
    """kafka-connector with ``asyncInvocation`` and the queue-worker's retries; the
    credential is the key in the user info of its gateway URL (sent as Basic)."""

    credential: str | None = None  # an API key with the events:deliver scope
    max_attempts: int = 100
    initial_wait: float = 10.0
    max_wait: float = 120.0
    user: str = "kafka-connector"
    name: str = OPENFAAS

    def request(self, record: Record, url: str) -> tuple[bytes, dict[str, str]]:
        headers = {
            "Content-Type": CONNECTOR_CONTENT_TYPE,
            "X-Connector": "connector-sdk",
            "X-Topic": record.topic,
            "X-Kafka-Partition": str(record.partition),
            "X-Kafka-Offset": str(record.offset),
        }
        if record.key is not None:
            try:
                headers["X-Kafka-Key"] = record.key.decode("ascii")
            except UnicodeDecodeError:
                headers["X-Kafka-Key"] = base64.b64encode(record.key).decode("ascii")
                headers["X-Kafka-Key-Enc"] = "b64"
        for name, raw in record.headers:
            headers["X-Kafka-" + name] = raw.decode("latin-1")
        if self.credential is not None:
            pair = f"{self.user}:{self.credential}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return record.value, headers

    def retried(self, status: int) -> bool:
        return status == 0 or retried_by(OPENFAAS, status)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_wait, retry_after)
        return min(self.max_wait, self.initial_wait * 2 ** (attempt - 1))

    def letter(self, record: Record, url: str, status: int, answer: str) -> None:
        return None  # OpenFaaS has no dead-letter sink: the function parks what it refuses


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a redirected POST would turn into a body-less GET: treat 3xx as a failed delivery
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read_text(response: Any) -> str:
    try:
        return bytes(response.read(MAX_BODY_READ)).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = str((headers.get("Retry-After") if headers is not None else None) or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _where(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


class Unsendable(Exception):
    """A request HTTP cannot carry (a header value it refuses): no retry can help."""


class KafkaBridge:
    """Background thread delivering Kafka records to HTTP functions (see module doc)."""

    def __init__(
        self,
        bootstrap: str,
        routes: Mapping[str, str],
        *,
        from_beginning: bool = False,
        publisher: EventPublisher | None = None,
        dispatcher: Dispatcher | None = None,
        dead_letter_topic: str = DEAD_LETTER,
        http_timeout: float = 10.0,
        poll_interval: float = 0.2,
        refresh_interval: float = 1.0,
        publish_timeout: float = 10.0,
        stall_after: float = 60.0,
    ) -> None:
        """``dispatcher``: the platform to behave as; by default a Knative KafkaSource per
        topic, named after the last part of its route's URL, with no sender token."""
        if not routes:
            raise ValueError("routes must map at least one topic to a URL")
        self.bootstrap = bootstrap
        self.routes = dict(routes)
        self.dispatcher: Dispatcher = dispatcher or KnativeDispatcher(
            {topic: topic.split(".")[1] for topic in routes}
        )
        if self.dispatcher.max_attempts < 1:
            raise ValueError("the dispatcher must try at least once")
        self.from_beginning = from_beginning
        self.dead_letter_topic = dead_letter_topic
        self.http_timeout = http_timeout
        self.stall_after = stall_after
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        self.publish_timeout = publish_timeout
        self._owns_publisher = publisher is None
        self._publisher: EventPublisher = publisher or KafkaEventPublisher(bootstrap)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # local functions: never via an env proxy
            _NoRedirect(),
        )
        self._positions: dict[TopicPartition, int] = {}  # next offset to deliver
        self._busy_since: dict[TopicPartition, float] = {}  # a record not yet done, since
        self._topic_ids: dict[str, Any] = {}
        self._stats = BridgeStats()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # -- public API --------------------------------------------------------------------

    @property
    def stats(self) -> BridgeStats:
        return self._stats

    def positions(self) -> dict[tuple[str, int], int]:
        """Snapshot of the next offset to deliver per (topic, partition)."""
        return {(tp.topic, tp.partition): pos for tp, pos in dict(self._positions).items()}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stalled(self) -> list[str]:
        """Partitions whose current record has not been done for ``stall_after`` seconds
        (retries of a transient failure), as ``topic[partition]@offset``."""
        now = time.monotonic()
        return [
            f"{tp.topic}[{tp.partition}]@{self._positions.get(tp)}"
            for tp, since in dict(self._busy_since).items()
            if now - since >= self.stall_after
        ]

    def start(self, timeout: float = 15.0) -> KafkaBridge:
        """Start consuming; returns once positions are set, so later records are delivered."""
        if self.running:
            return self
        self._stop.clear()
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name="psi-kafka-bridge", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise BridgeError(f"bridge not ready within {timeout}s (Kafka at {self.bootstrap})")
        if self._start_error is not None:
            self.stop()
            raise BridgeError(f"bridge failed to start: {self._start_error}") from (
                self._start_error
            )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (a delivery in flight ends within ``http_timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("bridge thread still busy after %.1fs; left as daemon", timeout)
        if self._owns_publisher:
            self._publisher.close()
            self._publisher = KafkaEventPublisher(self.bootstrap)  # allows start() again

    def __enter__(self) -> KafkaBridge:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- consumer thread ---------------------------------------------------------------

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        try:
            consumer = new_consumer(self.bootstrap, timeout=5.0, max_poll_records=100)
            self._refresh(consumer, initial=True)
        except Exception as exc:  # reported to start(), which raises it
            self._start_error = exc
            self._ready.set()
            if consumer is not None:
                consumer.close()
            return
        self._ready.set()
        next_refresh = time.monotonic() + self.refresh_interval
        try:
            while not self._stop.is_set():
                if time.monotonic() >= next_refresh:
                    consumer = self._safe_refresh(consumer)
                    next_refresh = time.monotonic() + self.refresh_interval
                if not self._positions:
                    self._stop.wait(self.poll_interval)
                    continue
                try:
                    batch = consumer.poll(timeout_ms=int(self.poll_interval * 1000))
                except Exception as exc:  # broker trouble: back off, reconnect at positions
                    log.warning("bridge poll failed: %r", exc)
                    self._stop.wait(1.0)
                    consumer = self._reconnect(consumer)
                    continue
                for tp, raws in batch.items():
                    self._deliver_partition(consumer, tp, raws)
        finally:
            consumer.close()

    def _deliver_partition(
        self, consumer: KafkaConsumer, tp: TopicPartition, raws: list[Any]
    ) -> None:
        """Deliver one partition's records in order, stopping at the first undone one."""
        for raw in raws:
            if self._stop.is_set():
                return
            expected = self._positions.get(tp)
            if expected is None or raw.offset < expected:
                continue  # stale fetch from before a reset
            self._busy_since.setdefault(tp, time.monotonic())
            try:
                done = self._handle(to_record(raw))
            except Exception:  # a bug must not stop every topic: skip this record, loudly
                log.exception(
                    "bridge failed on %s-%s-%s; record skipped", tp.topic, tp.partition, raw.offset
                )
                self._count(unshapeable=1)
                done = True
            if done is None:
                return
            if not done:
                # keep at-least-once: come back to this record instead of skipping it
                consumer.seek(tp, raw.offset)
                self._stop.wait(1.0)
                return
            self._positions[tp] = raw.offset + 1
            self._busy_since.pop(tp, None)

    def _safe_refresh(self, consumer: KafkaConsumer) -> KafkaConsumer:
        try:
            self._refresh(consumer, initial=False)
            return consumer
        except Exception as exc:
            log.warning("bridge metadata refresh failed: %r", exc)
            return self._reconnect(consumer)

    def _reconnect(self, consumer: KafkaConsumer) -> KafkaConsumer:
        try:
            fresh = new_consumer(self.bootstrap, timeout=2.0, max_poll_records=100)
        except Exception as exc:  # still down: keep the old one, try again next round
            log.warning("bridge cannot reconnect to Kafka: %r", exc)
            return consumer
        consumer.close()
        self._apply_assignment(fresh)
        return fresh

    def _apply_assignment(self, consumer: KafkaConsumer) -> None:
        consumer.assign(list(self._positions))
        for tp, pos in self._positions.items():
            consumer.seek(tp, pos)

    def _refresh(self, consumer: KafkaConsumer, *, initial: bool) -> None:
        """Pick up new partitions/topics and restart topics that were re-created."""
        from kafka import TopicPartition

        consumer.topics()  # forces a metadata round trip
        cluster = getattr(consumer, "_cluster", None)
        new: list[TopicPartition] = []
        changed = False
        for topic in self.routes:
            topic_id = cluster.topic_id(topic) if cluster is not None else None
            known = self._topic_ids.get(topic)
            if topic_id is not None and known is not None and topic_id != known:
                # a re-created topic (memory broker restarted) numbers offsets from 0 again
                log.warning("topic %s was re-created; reading it from the beginning", topic)
                for tp in [tp for tp in self._positions if tp.topic == topic]:
                    del self._positions[tp]
                changed = True
            if topic_id is not None:
                self._topic_ids[topic] = topic_id
            for partition in sorted(consumer.partitions_for_topic(topic)):
                tp = TopicPartition(topic, partition)
                if tp not in self._positions:
                    new.append(tp)
        if not new and not changed and not initial:  # a fresh consumer needs its assignment
            return
        if new:
            if initial and not self.from_beginning:
                starts = self._find_ends(consumer, new)
            else:
                starts = {tp: int(off) for tp, off in consumer.beginning_offsets(new).items()}
            self._positions.update(starts)
        self._apply_assignment(consumer)

    def _find_ends(
        self, consumer: KafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        # Tansu's end_offsets() is only the last batch's base offset + 1: read on from there
        hints = {tp: int(off) for tp, off in consumer.end_offsets(tps).items()}
        ends = dict(hints)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(0, hints[tp] - 1))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            if not batch:
                break
            for tp, raws in batch.items():
                ends[tp] = max(ends[tp], raws[-1].offset + 1)
        return ends

    # -- one record --------------------------------------------------------------------

    def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, float | None]:
        """Status (0: no answer), the answer's text, and its Retry-After in seconds."""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.http_timeout) as response:
                return int(response.status), _read_text(response), None
        except urllib.error.HTTPError as exc:
            with exc:
                # honoured on 429 and 503 only (the queue-worker's rule; EKB ignores it)
                wait = _retry_after(exc.headers) if exc.code in (429, 503) else None
                return int(exc.code), _read_text(exc), wait
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            return 0, f"{type(exc).__name__}: {exc}", None
        except (ValueError, UnicodeError) as exc:  # a header value HTTP cannot carry
            raise Unsendable(str(exc)) from exc

    def _handle(self, record: Record) -> bool | None:
        """True: done (delivered, dead-lettered or given up). False: the dead letter could
        not be written, come back to it. None: stopping."""
        url = self.routes[record.topic]
        try:
            body, headers = self.dispatcher.request(record, url)
        except Exception as exc:  # no record may stop the bridge
            log.exception("cannot shape %s-%s-%s", record.topic, record.partition, record.offset)
            self._count(unshapeable=1)
            return self._give_up(record, 0, f"bridge could not shape the record: {exc!r}", url)
        attempt = 0
        while True:
            attempt += 1
            try:
                status, text, retry_after = self._post(url, body, headers)
            except Unsendable as exc:
                self._count(unshapeable=1)
                return self._give_up(record, 0, f"the request cannot be sent: {exc}", url)
            if 200 <= status < 300:
                self._count(delivered=1)
                return True
            if not self.dispatcher.retried(status) or attempt >= self.dispatcher.max_attempts:
                return self._give_up(record, status, text, url)
            log.info(
                "delivery of %s-%s-%s got %s; retrying",
                record.topic,
                record.partition,
                record.offset,
                status or text,
            )
            self._count(retries=1)
            if self._stop.wait(self.dispatcher.delay(attempt, retry_after)):
                return None

    def _count(self, **increments: int) -> None:
        self._stats = replace(
            self._stats, **{k: getattr(self._stats, k) + n for k, n in increments.items()}
        )

    def _give_up(self, record: Record, status: int, answer: str, url: str) -> bool:
        letter = None
        if record.topic != self.dead_letter_topic:  # a dead letter's letter would loop forever
            letter = self.dispatcher.letter(record, url, status, answer)
        if letter is None:
            if 400 <= status < 500 and status not in (408, 429):
                self._count(delivered=1)  # refused: the function parked it
                return True
            # the queue-worker drops an invocation whose retries are spent, and so do we
            log.error(
                "gave up on %s-%s-%s after retries: %s",
                record.topic,
                record.partition,
                record.offset,
                (answer or f"HTTP {status}")[:200],
            )
            self._count(given_up=1)
            return True
        value, headers, key = letter
        try:
            self._publisher.publish(
                self.dead_letter_topic,
                key or "",
                value,
                headers=headers,
                timeout=self.publish_timeout,
            )
        except PublishError as exc:
            log.error(
                "cannot dead-letter %s-%s-%s: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            self._count(dead_letter_failures=1)
            return False
        log.warning(
            "dead-lettered %s-%s-%s (status %s): %s",
            record.topic,
            record.partition,
            record.offset,
            status,
            answer[:200],
        )
        self._count(dead_lettered=1)
        return True
