"""Local stand-in for the OpenFaaS kafka-connector / Knative KafkaSource.

Consumes the routed topics (manual ``assign()``, positions kept in memory, no consumer
group) and POSTs every record to its function URL the way a Knative KafkaSource does:

* CloudEvents **binary** mode by default: ``ce-specversion: 1.0``,
  ``ce-id: <topic>-<partition>-<offset>``, ``ce-source: /psi/kafka/<topic>``,
  ``ce-type: dev.knative.kafka.event``, ``ce-subject: partition:<p>#<offset>``,
  ``Content-Type: application/json``, the record value as body;
* if the record carries Kafka binary-mode CloudEvent headers (``ce_specversion``,
  ``ce_id``, ...), those attributes are forwarded instead of the defaults;
* if the value is a **structured** CloudEvent (JSON object with ``specversion`` and
  ``id``), it is forwarded as is with ``Content-Type: application/cloudevents+json``;
* always ``X-Topic: <topic>`` (what the OpenFaaS kafka-connector sends).

Delivery policy: 2xx is done; 5xx, 408, 429, timeouts and connection errors are retried
with exponential backoff and jitter, then dead-lettered; any other status is dead-lettered
at once. A dead letter is a JSON object on ``psi.dead-letter`` (see ``dead_letter_doc``).
If even the dead-letter publish fails, the record is not skipped: it is tried again later.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shared_lib.adapters.kafka import (
    EventPublisher,
    KafkaEventPublisher,
    PublishError,
    Record,
    new_consumer,
    to_record,
)
from shared_lib.domain import events
from shared_lib.topics import DEAD_LETTER

if TYPE_CHECKING:
    from kafka import KafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

CE_TYPE = "dev.knative.kafka.event"
RETRYABLE_STATUSES = frozenset({408, 429})
MAX_BODY_READ = 64 * 1024


class BridgeError(RuntimeError):
    """The bridge could not start."""


@dataclass(frozen=True)
class BridgeStats:
    delivered: int = 0
    dead_lettered: int = 0
    retries: int = 0
    dead_letter_failures: int = 0


def _ce_header_value(text: str) -> str:
    # CloudEvents HTTP binding: percent-encode space, '"', '%' and non-printable-ASCII
    out = []
    for ch in text:
        if 0x21 <= ord(ch) <= 0x7E and ch not in '"%':
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _is_structured_event(value: bytes) -> bool:
    if not value.lstrip().startswith(b"{"):
        return False
    try:
        doc = json.loads(value)
    except ValueError:
        return False
    return isinstance(doc, dict) and "specversion" in doc and bool(doc.get("id"))


def cloudevent_request(record: Record) -> tuple[bytes, dict[str, str]]:
    """Body and HTTP headers a Knative KafkaSource would send for ``record``."""
    headers = {"X-Topic": record.topic}
    if _is_structured_event(record.value):
        headers["Content-Type"] = "application/cloudevents+json"
        return record.value, headers
    headers.update(
        {
            "ce-specversion": "1.0",
            "ce-id": f"{record.topic}-{record.partition}-{record.offset}",
            "ce-source": f"/psi/kafka/{record.topic}",
            "ce-type": CE_TYPE,
            "ce-subject": f"partition:{record.partition}#{record.offset}",
            "Content-Type": "application/json",
        }
    )
    kafka_ce = {
        name[3:].lower(): raw
        for name, raw in record.headers
        if name.lower().startswith("ce_") and len(name) > 3
    }
    if "specversion" in kafka_ce and "id" in kafka_ce:
        for attr, raw in kafka_ce.items():
            headers[f"ce-{attr}"] = _ce_header_value(raw.decode("utf-8", "replace"))
        for name, raw in record.headers:
            if name.lower() == "content-type":
                headers["Content-Type"] = raw.decode("latin-1")
    return record.value, headers


def dead_letter_doc(record: Record, *, status: int, reason: str, **extra: Any) -> dict[str, Any]:
    """The JSON object put on the dead-letter topic; ``status`` is null when no answer came."""
    return events.dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode("utf-8", "replace") if record.key is not None else None,
        payload=record.value,
        status=status,
        reason=reason,
        **extra,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a redirected POST would turn into a body-less GET: treat 3xx as a failed delivery
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read_text(response: Any) -> str:
    try:
        return bytes(response.read(MAX_BODY_READ)).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


class KafkaBridge:
    """Background thread delivering Kafka records to HTTP functions (see module doc)."""

    def __init__(
        self,
        bootstrap: str,
        routes: Mapping[str, str],
        *,
        from_beginning: bool = False,
        publisher: EventPublisher | None = None,
        dead_letter_topic: str = DEAD_LETTER,
        http_timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        poll_interval: float = 0.2,
        refresh_interval: float = 1.0,
        publish_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if not routes:
            raise ValueError("routes must map at least one topic to a URL")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.bootstrap = bootstrap
        self.routes = dict(routes)
        self.from_beginning = from_beginning
        self.dead_letter_topic = dead_letter_topic
        self.http_timeout = http_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        self.publish_timeout = publish_timeout
        self._rng = rng or random.Random()
        self._owns_publisher = publisher is None
        self._publisher: EventPublisher = publisher or KafkaEventPublisher(bootstrap)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # local functions: never via an env proxy
            _NoRedirect(),
        )
        self._positions: dict[TopicPartition, int] = {}  # next offset to deliver
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
            done = self._handle(to_record(raw))
            if done is None:
                return
            if not done:
                # keep at-least-once: come back to this record instead of skipping it
                consumer.seek(tp, raw.offset)
                self._stop.wait(1.0)
                return
            self._positions[tp] = raw.offset + 1

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

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.http_timeout) as response:
                return int(response.status), _read_text(response)
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), _read_text(exc)
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            return 0, f"{type(exc).__name__}: {exc}"

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return delay * (0.5 + self._rng.random() / 2)  # jitter spreads retries of many records

    def _handle(self, record: Record) -> bool | None:
        """True: delivered or dead-lettered. False: dead-letter failed. None: stopping."""
        url = self.routes[record.topic]
        body, headers = cloudevent_request(record)
        attempt = 0
        while True:
            attempt += 1
            status, text = self._post(url, body, headers)
            if 200 <= status < 300:
                self._stats = replace(self._stats, delivered=self._stats.delivered + 1)
                return True
            retryable = status == 0 or status >= 500 or status in RETRYABLE_STATUSES
            if not retryable or attempt >= self.max_attempts:
                reason = text.strip() or (f"HTTP {status}" if status else "no response")
                return self._dead_letter(record, status, reason, attempt, url)
            log.info(
                "delivery of %s-%s-%s got %s; retrying",
                record.topic,
                record.partition,
                record.offset,
                status or text,
            )
            self._stats = replace(self._stats, retries=self._stats.retries + 1)
            if self._stop.wait(self._backoff(attempt)):
                return None

    def _dead_letter(
        self, record: Record, status: int, reason: str, attempts: int, url: str
    ) -> bool:
        if record.topic == self.dead_letter_topic:
            log.error("dropping undeliverable dead letter at offset %s: %s", record.offset, reason)
            return True  # dead-lettering a dead letter would loop forever
        doc = dead_letter_doc(record, status=status, reason=reason, attempts=attempts, url=url)
        key = doc["key"]
        if key is None:
            key = f"{record.topic}-{record.partition}-{record.offset}"
        try:
            self._publisher.publish(
                self.dead_letter_topic,
                key,
                json.dumps(doc, ensure_ascii=False).encode("utf-8"),
                headers=[("x-original-topic", record.topic.encode("utf-8"))],
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
            self._stats = replace(
                self._stats, dead_letter_failures=self._stats.dead_letter_failures + 1
            )
            return False
        log.warning(
            "dead-lettered %s-%s-%s (status %s): %s",
            record.topic,
            record.partition,
            record.offset,
            status,
            reason[:200],
        )
        self._stats = replace(self._stats, dead_lettered=self._stats.dead_lettered + 1)
        return True
