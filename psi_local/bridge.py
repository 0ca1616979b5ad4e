"""Local stand-in for the platform that delivers Kafka records to the functions: a thread
that consumes the routed topics and hands each record, in order per partition, to a
dispatcher (``psi_local.dispatchers``) that behaves as the platform does.

``platform="knative"`` (the default ``KnativeDispatcher``) does what a Knative KafkaSource's
dispatcher does; ``platform="openfaas"`` (``OpenFaasConnector``) what kafka-connector with
asynchronous invocation and the queue-worker do. docs/platform-contracts.md has the rules and
their sources.

No record can stop the bridge: one it cannot even shape is dead-lettered (Knative) or
logged and skipped (OpenFaaS), and ``stalled()`` names a partition that stopped moving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from psi_local.dispatchers import Dispatcher, HttpSender, KnativeDispatcher, Unsendable
from shared_lib.adapters.kafka import (
    EventPublisher,
    KafkaEventPublisher,
    PublishError,
    Record,
    new_consumer,
    to_record,
)
from shared_lib.topics import DEAD_LETTER

if TYPE_CHECKING:
    from kafka import KafkaConsumer, TopicPartition

log = logging.getLogger(__name__)


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
        self._sender = HttpSender(http_timeout)
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

    def __exit__(self, *exc: object) -> None:
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
                status, text, retry_after = self._sender.post(url, body, headers)
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
