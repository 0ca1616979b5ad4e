"""Composition root: builds the adapters once per process so warm containers reuse pools."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from shared_lib.adapters.kafka import EventPublisher
from shared_lib.adapters.outbox import BackgroundRelay, OutboxRelay
from shared_lib.adapters.redis_client import connect as connect_redis
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.redis_journal import RedisJournal
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.config import Settings, get_settings
from shared_lib.domain.trace import TraceContext
from shared_lib.services.cache import GateRebuilder
from shared_lib.services.guard import Deps

log = logging.getLogger(__name__)
HEAL_INTERVAL_SECONDS = 5.0  # how often a process looks for warehouses off the fast path


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    deps: Deps
    gate: RedisGate | None = None
    rebuilder: GateRebuilder | None = None
    read_engine: Engine | None = None
    relay: OutboxRelay | None = None
    background_relay: BackgroundRelay | None = None
    closers: list[Any] = field(default_factory=list)
    publisher: EventPublisher | None = None

    def reconcile(
        self,
        run_key: str,
        *,
        repair: bool = True,
        on_progress: Callable[[int, int | None], None] | None = None,
        trace: TraceContext | None = None,
    ) -> dict[str, Any]:
        """The reconcile use case wired to this process's stores; counts the drift of runs
        that scanned (the stored answer of a finished run key is not counted again)."""
        from shared_lib.adapters.reports import reports_from_settings
        from shared_lib.adapters.sql_reconcile import SqlReconcileStore
        from shared_lib.http import metrics
        from shared_lib.services.reconcile import reconcile

        scanned = False

        def progress(done: int, total: int | None) -> None:
            nonlocal scanned
            scanned = True
            if on_progress is not None:
                on_progress(done, total)

        result = reconcile(
            self.deps,
            SqlReconcileStore(self.engine),
            self.gate,
            reports_from_settings(self.settings),
            run_key=run_key,
            repair=repair,
            redrive=self.relay.drain if self.relay else None,
            on_progress=progress,
            trace=trace,
        )
        if scanned:
            metrics.observe_reconcile(result)
        return result

    def kick_relay(self) -> None:
        """Publish what the last commit wrote to the outbox, without making the caller wait."""
        if self.background_relay is not None:
            self.background_relay.kick()

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                log.exception("error while closing")
        self.closers.clear()


def build(settings: Settings | None = None, *, source: str = "/psi/shared-lib") -> Platform:
    settings = settings or get_settings()
    if settings.embedded_database:
        from shared_lib.adapters import schema

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        schema.upgrade(settings.sqlalchemy_url)
    engine = make_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        timeout=settings.db_timeout_seconds,
    )
    closers: list[Any] = [engine.dispose]
    tx = SqlTransactions(engine)
    read_engine = None
    read_tx = None
    if settings.database_read_url:
        read_engine = make_engine(
            settings.database_read_url,
            pool_size=settings.db_pool_size,
            timeout=settings.db_timeout_seconds,
        )
        closers.append(read_engine.dispose)
        read_tx = SqlTransactions(read_engine)

    gate = rebuilder = None
    if settings.redis_enabled:
        client = connect_redis(
            settings.redis_url, timeout=settings.redis_timeout_seconds, data_dir=settings.data_dir
        )
        gate = RedisGate(
            client,
            prefix=settings.redis_prefix,
            marker_ttl_seconds=settings.idempotency_ttl_seconds,
            retry_after_seconds=settings.redis_retry_after_seconds,
        )
        closers.append(gate.close)
        rebuilder = GateRebuilder(tx, gate)
        # a warehouse off the fast path is rebuilt within seconds, not at its next order
        closers.append(rebuilder.watch(HEAL_INTERVAL_SECONDS))

    relay = background = publisher = None
    if settings.kafka_bootstrap:
        from shared_lib.adapters.kafka import KafkaEventPublisher

        publisher = KafkaEventPublisher(
            settings.kafka_bootstrap, enable_idempotence=settings.kafka_idempotence
        )
        closers.append(publisher.close)
        relay = OutboxRelay(engine, publisher)
        background = BackgroundRelay(relay).start()
        closers.append(background.stop)

    from shared_lib.http import metrics

    deps = Deps(
        tx=tx,
        gate=gate,
        source=source,
        order_hold_seconds=settings.order_hold_seconds,
        gate_hold_ms=settings.gate_hold_ms,
        on_gate_not_ready=rebuilder.request if rebuilder else (lambda warehouse: None),
        read_tx=read_tx,
        journal=RedisJournal(gate) if gate is not None and settings.group_commit else None,
        journal_batch=settings.group_commit_batch,
        journal_wait_s=settings.group_commit_wait_ms / 1000,
        on_flush=metrics.observe_flush,
    )
    return Platform(
        settings,
        engine,
        deps,
        gate,
        rebuilder,
        read_engine,
        relay,
        background,
        closers,
        publisher,
    )


_platform: Platform | None = None
_platform_lock = threading.Lock()


def get_platform(source: str = "/psi/shared-lib") -> Platform:
    """The process-wide platform, built on first use."""
    global _platform
    with _platform_lock:
        if _platform is None:
            _platform = build(source=source)
        return _platform


def shutdown() -> None:
    """Close pools (called on SIGTERM by the server hooks)."""
    global _platform
    with _platform_lock:
        if _platform is not None:
            _platform.close()
            _platform = None
