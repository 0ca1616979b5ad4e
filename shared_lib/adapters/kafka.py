"""Kafka event publishing (and a small reader for tests and the CLI).

``kafka`` (kafka-python) is imported lazily: a function that never publishes does not pay
for the import or for a broker connection.

Delivery is at-least-once: a publish that timed out may still land later, and a failed
publish is retried once with a fresh producer, so consumers must de-duplicate by event id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class PublishError(Exception):
    """A record was not acknowledged by the broker within the publish timeout."""


class KafkaUnavailableError(ConnectionError):
    """No broker of the bootstrap list answered in time."""


@runtime_checkable
class EventPublisher(Protocol):
    """What services depend on; publish() blocks until acked or raises PublishError."""

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Headers | None = None,
        timeout: float = 10.0,
    ) -> None: ...

    def close(self) -> None: ...


def _close_producer(producer: KafkaProducer, timeout: float) -> None:
    """Close, dropping records still unsent after ``timeout`` (their publish already failed)."""
    try:
        producer.close(timeout=timeout)
    except Exception:
        # kafka-python's close() raises from flush() before force-closing: finish the job
        log.warning("Kafka producer did not flush within %.1fs; dropping unsent records", timeout)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(timeout)
        producer._closed = True  # stops __del__ from flushing again


class KafkaEventPublisher:
    """Blocking, acks=all, idempotent publisher over kafka-python's KafkaProducer.

    Idempotence works against Tansu (the dev/test broker) too, but a restarted Tansu has
    forgotten producer ids and answers UnknownProducerId, then UnknownError to every
    re-init, for good: a failed publish therefore replaces the producer and retries once.
    With ``enable_idempotence=False`` in-flight requests drop to 1 so that retries cannot
    reorder the records of one key.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "psi-functions",
        acks: str | int = "all",
        retries: int = 10,
        request_timeout_ms: int = 10_000,
        delivery_timeout_ms: int = 30_000,
        max_block_ms: int = 5_000,
        linger_ms: int = 0,
        retry_backoff_ms: int = 100,
        reconnect_backoff_max_ms: int = 1_000,
        compression_type: str | None = None,
        enable_idempotence: bool = True,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
        if not servers:
            raise ValueError("bootstrap must be host:port[,host:port...]")
        self.bootstrap = ",".join(servers)
        self.enable_idempotence = enable_idempotence
        self._max_block_ms = max_block_ms
        self._config: dict[str, Any] = {
            "bootstrap_servers": servers,
            "client_id": client_id,
            "acks": acks,
            "retries": retries,
            "request_timeout_ms": request_timeout_ms,
            "delivery_timeout_ms": delivery_timeout_ms,
            "max_block_ms": max_block_ms,
            "linger_ms": linger_ms,
            "retry_backoff_ms": retry_backoff_ms,
            "reconnect_backoff_max_ms": reconnect_backoff_max_ms,
            "compression_type": compression_type,
            "enable_idempotence": enable_idempotence,
            "max_in_flight_requests_per_connection": 5 if enable_idempotence else 1,
            **(extra_config or {}),
        }
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _get_producer(self, deadline: float) -> KafkaProducer:
        with self._lock:
            if self._closed:
                raise PublishError("publisher is closed")
            if self._producer is None:
                from kafka import KafkaProducer
                from kafka.errors import KafkaError

                # bootstrap must not outlive the caller's publish timeout
                budget_ms = max(1, int((deadline - time.monotonic()) * 1000))
                config = dict(self._config)
                config["bootstrap_timeout_ms"] = min(budget_ms, self._max_block_ms)
                try:
                    self._producer = KafkaProducer(**config)
                except KafkaError as exc:
                    raise PublishError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc
            return self._producer

    def _discard(self, producer: KafkaProducer) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None
        _close_producer(producer, 1.0)

    def publish(
        self,
        topic: str,
        key: str,
        value: bytes,
        headers: Headers | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Send one record and block until the broker acknowledged it."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        deadline = time.monotonic() + timeout
        key_bytes = key.encode("utf-8")
        for attempt in (1, 2):
            producer = self._get_producer(deadline)
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            # send() waits up to config max_block_ms for metadata: keep it within our timeout
            producer.config["max_block_ms"] = max(1, min(self._max_block_ms, remaining_ms))
            try:
                future = producer.send(topic, key=key_bytes, value=value, headers=headers or None)
                future.get(timeout=max(0.001, deadline - time.monotonic()))
                return
            except KafkaTimeoutError as exc:
                raise PublishError(
                    f"no ack from Kafka for {topic} within {timeout:.1f}s: {exc}"
                ) from exc
            except KafkaError as exc:
                # a fresh producer clears stale metadata and idempotence state (broker restart)
                self._discard(producer)
                if attempt == 2 or time.monotonic() >= deadline:
                    raise PublishError(f"publish to {topic} failed: {exc!r}") from exc
                log.warning("publish to %s failed (%r); retrying with a new producer", topic, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            self._closed = True
        if producer is not None:
            _close_producer(producer, timeout)

    def __enter__(self) -> KafkaEventPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)
    timestamp: int | None = None  # milliseconds since the epoch


def new_consumer(bootstrap: str, *, timeout: float = 5.0, **config: Any) -> KafkaConsumer:
    """A group-less, non-committing consumer for manual assign(); raises if no broker answers."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    settings: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "allow_auto_create_topics": False,
        "request_timeout_ms": 10_000,
        "fetch_max_wait_ms": 200,
        "reconnect_backoff_max_ms": 1_000,
        "bootstrap_timeout_ms": max(1, int(timeout * 1000)),
    }
    settings.update(config)
    try:
        return KafkaConsumer(**settings)
    except KafkaError as exc:
        raise KafkaUnavailableError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc


def to_record(raw: Any) -> Record:
    return Record(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        key=raw.key,
        value=raw.value if raw.value is not None else b"",
        headers=list(raw.headers or []),
        timestamp=raw.timestamp if isinstance(raw.timestamp, int) and raw.timestamp >= 0 else None,
    )


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool],
    timeout: float,
) -> list[Record]:
    """Read every partition of ``topic`` from the beginning until ``until(records)`` or timeout.

    Returns what was read when the timeout expires (also when the topic never appeared).
    Records of one partition are in offset order; partitions interleave. Raises
    KafkaUnavailableError when no broker answers at all.
    """
    from kafka import TopicPartition

    deadline = time.monotonic() + timeout
    consumer = new_consumer(bootstrap, timeout=max(0.5, timeout))
    records: list[Record] = []
    try:
        partitions: set[int] = set()
        pause = threading.Event()
        while time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic) or set()
            if partitions:
                break
            pause.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        if not partitions:
            return records
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while not until(records):
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            batch = consumer.poll(timeout_ms=min(remaining_ms, 200))
            for raws in batch.values():
                records.extend(to_record(raw) for raw in raws)
        return records
    finally:
        consumer.close()
