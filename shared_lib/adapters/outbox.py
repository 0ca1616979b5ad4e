"""The outbox relay: publishes events committed to the ``outbox`` table, in id order.

Every change writes its events into ``outbox`` in the same transaction (see
``SqlStore.add_event``); the relay sends them to Kafka after the commit and marks them
``published_at``. Delivery is at-least-once: a crash between publish and mark sends a row
again with the same CloudEvent id, which consumers drop as a duplicate.

Only one relay runs at a time per database (MySQL/MariaDB: ``GET_LOCK``; SQLite: a process
lock), so rows of one key leave in the order they were committed. A failed publish stops
the batch (later rows of the same key must not overtake it) and the failed row waits a
jittered exponential backoff before the next attempt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import EventPublisher, Headers
from shared_lib.domain.model import utcnow
from shared_lib.topics import DEAD_LETTER

log = logging.getLogger(__name__)

LOCK_NAME = "psi_outbox_relay"
CONTENT_TYPE = b"application/cloudevents+json"
JSON_TYPE = b"application/json"
ERROR_MAX = 500
MYSQL_LOCK_NAME_MAX = 64
# the CloudEvents distributed-tracing extension's attributes
TRACE_ATTRIBUTES = ("traceparent", "tracestate")

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


@contextmanager
def _file_lock(database: str | None) -> Iterator[bool]:
    """Every process on a SQLite file (the local stack runs six) shares one relay: an
    exclusive lock on a file beside the database, released when its holder dies."""
    if not database or database == ":memory:":
        yield True
        return
    with open(f"{database}.outbox-relay.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _process_lock(key: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(key, threading.Lock())


@dataclass(frozen=True)
class PendingEvent:
    id: int
    event_id: str
    topic: str
    key: str
    payload: str
    attempts: int
    next_attempt_at: datetime | None


def backoff_seconds(attempts: int, *, base: float, cap: float) -> float:
    """Exponential in the number of failed attempts, capped, with equal jitter."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)


class OutboxRelay:
    """Publishes unpublished outbox rows in id order; idle when ``publisher`` is None."""

    def __init__(
        self,
        engine: Engine,
        publisher: EventPublisher | None,
        *,
        publish_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
        lock_name: str = LOCK_NAME,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.publish_timeout = publish_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock
        self.lock_name = lock_name
        self._mysql = engine.dialect.name in ("mysql", "mariadb")
        self._mysql_lock_name: str | None = None

    @property
    def idle(self) -> bool:
        return self.publisher is None

    # -- metrics
    def summary(self) -> dict[str, Any]:
        """Pending rows: how many, how old the oldest, per topic, and the oldest failure."""
        o = t.outbox
        pending = o.c.published_at.is_(None)
        with self.engine.connect() as conn:
            topics = dict(
                conn.execute(
                    sa.select(o.c.topic, sa.func.count()).where(pending).group_by(o.c.topic)
                ).all()
            )
            failing = conn.execute(
                sa.select(o.c.id, o.c.attempts, o.c.next_attempt_at, o.c.last_error)
                .where(pending, o.c.attempts > 0)
                .order_by(o.c.id)
                .limit(1)
            ).first()
            failing_count = conn.execute(
                sa.select(sa.func.count()).select_from(o).where(pending, o.c.attempts > 0)
            ).scalar_one()
        oldest = None
        if failing is not None:
            at = failing.next_attempt_at
            oldest = {
                "id": int(failing.id),
                "attempts": int(failing.attempts),
                "next_attempt_at": at.isoformat() if at else None,
                "last_error": failing.last_error,
            }
        return {
            "pending": self.pending_count(),
            "lag_seconds": round(self.lag_seconds(), 3),
            "by_topic": {topic: int(n) for topic, n in sorted(topics.items())},
            "failing": int(failing_count),
            "oldest_failure": oldest,
        }

    def clear_backoff(self) -> None:
        """Every pending row is due now, those waiting out a failure's backoff included."""
        o = t.outbox
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(o)
                .where(o.c.published_at.is_(None), o.c.next_attempt_at.is_not(None))
                .values(next_attempt_at=None)
            )

    def pending_count(self) -> int:
        o = t.outbox
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(o).where(o.c.published_at.is_(None))
            return int(conn.execute(query).scalar_one())

    def lag_seconds(self) -> float:
        """Age of the oldest unpublished row; 0 when everything is out."""
        o = t.outbox
        with self.engine.connect() as conn:
            oldest = conn.execute(
                sa.select(o.c.created_at)
                .where(o.c.published_at.is_(None))
                .order_by(o.c.published_at, o.c.id)
                .limit(1)
            ).scalar()
        if oldest is None:
            return 0.0
        return max((self.clock() - oldest).total_seconds(), 0.0)

    # -- relaying
    def relay(self, limit: int = 500) -> int:
        """Publish up to ``limit`` rows; returns how many went out (0 if another relay runs)."""
        if self.publisher is None:
            return 0
        with self._exclusive() as conn:
            if conn is None:
                return 0
            return self._relay(conn, self.publisher, limit)

    def drain(self, limit: int = 500, max_batches: int = 100) -> int:
        """Relay batch after batch until one comes back short (done, blocked or failed)."""
        total = 0
        for _ in range(max_batches):
            sent = self.relay(limit)
            total += sent
            if sent < limit:
                break
        return total

    def _relay(self, conn: Connection, publisher: EventPublisher, limit: int) -> int:
        now = self.clock()
        with conn.begin():
            rows = self._pending(conn, limit)
        published: list[int] = []
        try:
            for row in rows:
                if row.next_attempt_at is not None and row.next_attempt_at > now:
                    break  # the oldest row is backing off; later rows must not overtake it
                try:
                    publisher.publish(
                        row.topic,
                        row.key,
                        row.payload.encode("utf-8"),
                        headers=_headers(row),
                        timeout=self.publish_timeout,
                    )
                except Exception as exc:
                    self._mark_failed(conn, row, exc)
                    break
                published.append(row.id)
        finally:
            self._mark_published(conn, published)
        return len(published)

    def _pending(self, conn: Connection, limit: int) -> list[PendingEvent]:
        o = t.outbox
        query = (
            sa.select(
                o.c.id,
                o.c.event_id,
                o.c.topic,
                o.c.event_key,
                o.c.payload,
                o.c.attempts,
                o.c.next_attempt_at,
            )
            .where(o.c.published_at.is_(None))
            .order_by(o.c.published_at, o.c.id)
            .limit(limit)
        )
        return [
            PendingEvent(
                int(r.id),
                r.event_id,
                r.topic,
                r.event_key,
                r.payload,
                int(r.attempts),
                r.next_attempt_at,
            )
            for r in conn.execute(query)
        ]

    def _mark_published(self, conn: Connection, ids: list[int]) -> None:
        if not ids:
            return
        o = t.outbox
        at = self.clock()
        with conn.begin():
            for start in range(0, len(ids), 500):
                conn.execute(
                    sa.update(o)
                    .where(o.c.id.in_(ids[start : start + 500]), o.c.published_at.is_(None))
                    .values(published_at=at)
                )

    def _mark_failed(self, conn: Connection, row: PendingEvent, exc: BaseException) -> None:
        attempts = row.attempts + 1
        delay = backoff_seconds(attempts, base=self.backoff_base, cap=self.backoff_cap)
        error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX]
        log.warning(
            "outbox row %s (%s) not published, attempt %d, retry in %.1fs: %s",
            row.id,
            row.topic,
            attempts,
            delay,
            error,
        )
        o = t.outbox
        with conn.begin():
            conn.execute(
                sa.update(o)
                .where(o.c.id == row.id, o.c.published_at.is_(None))
                .values(
                    attempts=o.c.attempts + 1,
                    next_attempt_at=self.clock() + timedelta(seconds=delay),
                    last_error=error,
                )
            )

    # -- one relay per database
    @contextmanager
    def _exclusive(self) -> Iterator[Connection | None]:
        if not self._mysql:
            lock = _process_lock(str(self.engine.url))
            if not lock.acquire(blocking=False):
                yield None
                return
            try:
                with _file_lock(self.engine.url.database) as got:
                    if not got:
                        yield None
                        return
                    with self.engine.connect() as conn:
                        yield conn
            finally:
                lock.release()
            return
        with self.engine.connect() as conn:
            name = self._lock_name(conn)
            got = conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": name}).scalar()
            conn.commit()
            if got != 1:
                yield None
                return
            try:
                yield conn
            finally:
                self._release(conn, name)

    @staticmethod
    def _release(conn: Connection, name: str) -> None:
        try:
            if conn.in_transaction():
                conn.rollback()
            conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
            conn.commit()
        except sa.exc.DBAPIError as exc:
            # a lost session has released the lock already; keep the original error visible
            log.warning("could not release the outbox relay lock: %s", exc)

    def _lock_name(self, conn: Connection) -> str:
        # GET_LOCK names are server-wide: qualify with the database, within MySQL's 64 chars
        if self._mysql_lock_name is None:
            database = conn.execute(sa.text("SELECT DATABASE()")).scalar() or ""
            conn.commit()
            name = f"{self.lock_name}.{database}"
            if len(name) > MYSQL_LOCK_NAME_MAX:
                digest = hashlib.sha1(database.encode()).hexdigest()
                name = f"{self.lock_name}.{digest}"[:MYSQL_LOCK_NAME_MAX]
            self._mysql_lock_name = name
        return self._mysql_lock_name


def _headers(row: PendingEvent) -> Headers:
    if row.topic == DEAD_LETTER:  # a dead letter is a plain JSON object, not a CloudEvent
        return [("psi-letter-id", row.event_id.encode("utf-8")), ("content-type", JSON_TYPE)]
    headers = [("ce_id", row.event_id.encode("utf-8")), ("content-type", CONTENT_TYPE)]
    return headers + _trace_headers(row.payload)


def _trace_headers(payload: str) -> Headers:
    """The event's distributed-tracing attributes as ``ce_`` headers too (a structured
    record MAY carry binary mode's headers), so a consumer traces without parsing it."""
    if '"traceparent"' not in payload:  # events written before tracing: nothing to read
        return []
    try:
        event = json.loads(payload)
    except ValueError:  # never stop the relay over a header it may leave out
        return []
    return [
        (f"ce_{name}", event[name].encode("utf-8"))
        for name in TRACE_ATTRIBUTES
        if isinstance(event.get(name), str)
    ]


class BackgroundRelay:
    """Runs the relay in a daemon thread: at once after ``kick()`` (call it after a commit)
    and every ``interval`` seconds while the process lives, to pick up what a kick missed."""

    def __init__(self, relay: OutboxRelay, *, interval: float = 5.0, limit: int = 500) -> None:
        self.relay = relay
        self.interval = interval
        self.limit = limit
        self.published = 0
        self.passes = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> BackgroundRelay:
        if self.relay.idle:
            return self
        with self._lock:
            if self.running or self._stopping.is_set():
                return self
            self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
            self._thread.start()
        return self

    def kick(self) -> None:
        """Ask for a pass now; several kicks during one pass cause one more pass."""
        if self.relay.idle:
            return
        self.start()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread after its current pass; True if it ended within ``timeout``."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            self._pass()

    def _pass(self) -> None:
        try:
            while not self._stopping.is_set():
                sent = self.relay.relay(self.limit)
                self.published += sent
                if sent < self.limit:
                    break
        except Exception:
            log.exception("outbox relay pass failed; retrying on the next tick")
        finally:
            self.passes += 1


__all__ = ["BackgroundRelay", "OutboxRelay", "PendingEvent", "backoff_seconds"]
