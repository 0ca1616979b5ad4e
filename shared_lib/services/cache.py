"""Rebuilding the gate from the system of record (after a flush, restart or invalidation)."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from shared_lib.domain.model import utcnow
from shared_lib.services.guard import request_id
from shared_lib.services.ports import MaintainedGate, Transactions

log = logging.getLogger(__name__)
PAGE = 1000
CODES_TTL_SECONDS = 60.0  # how long the healer trusts its list of warehouses


def rebuild_warehouse(tx: Transactions, gate: MaintainedGate, warehouse: str) -> int | None:
    """Load every balance of the warehouse and the replay markers of its recent requests,
    then mark it ready; None if it was invalidated again meanwhile (the caller retries).
    Loads are version-guarded, so live settles that land during the rebuild are never
    overwritten by older rows; requests that settle meanwhile set their own markers."""
    generation = gate.generation(warehouse)
    loaded, after = 0, None
    while True:
        page = tx.run(lambda store, a=after: store.levels_page(warehouse, a, PAGE))
        if not page:
            break
        gate.load(warehouse, page)
        loaded += len(page)
        after = page[-1].sku
    restore_markers(tx, gate, warehouse)
    if not gate.mark_ready(warehouse, generation):
        return None
    log.info("gate rebuilt for warehouse %s: %d levels", warehouse, loaded)
    return loaded


def restore_markers(tx: Transactions, gate: MaintainedGate, warehouse: str) -> int:
    """A replay after the gate lost its state must be known as a replay, not judged by the
    stock left: every request the database recorded within the markers' lifetime that
    changed this warehouse gets its marker back (fingerprint, so a reuse is a conflict)."""
    since = utcnow() - timedelta(seconds=gate.marker_ttl)
    restored, after = 0, None
    while True:
        page = tx.run(lambda store, a=after: store.recent_requests(warehouse, since, a, PAGE))
        if not page:
            return restored
        gate.restore_markers(
            warehouse, [(request_id(key), fingerprint, at) for key, fingerprint, at in page]
        )
        restored += len(page)
        after = (page[-1][2], page[-1][0])


def rebuild_all(tx: Transactions, gate: MaintainedGate, *, invalidate: bool = True) -> int:
    """Rebuild every warehouse (``psi cache rebuild``); returns the levels loaded."""
    total = 0
    for warehouse in tx.run(lambda store: store.warehouse_codes()):
        if invalidate:
            gate.invalidate(warehouse)
        for _ in range(5):
            loaded = rebuild_warehouse(tx, gate, warehouse)
            if loaded is not None:
                total += loaded
                break
    return total


class GateRebuilder:
    """Rebuilds a warehouse in the background the first time a request finds it not ready;
    requests meanwhile take the degraded path. One process rebuilds (a Redis lock)."""

    def __init__(self, tx: Transactions, gate: MaintainedGate) -> None:
        self.tx = tx
        self.gate = gate
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._codes: list[str] = []
        self._codes_until = 0.0

    def request(self, warehouse: str) -> None:
        with self._lock:
            if warehouse in self._running:
                return
            # the rebuild's log lines carry the request that asked for it
            context = contextvars.copy_context()
            thread = threading.Thread(
                target=context.run,
                args=(self._run, warehouse),
                name=f"rebuild-{warehouse}",
                daemon=True,
            )
            self._running[warehouse] = thread
        thread.start()

    def _run(self, warehouse: str) -> None:
        owner = uuid.uuid4().hex
        try:
            if self.gate.acquire_rebuild(warehouse, owner):
                try:
                    rebuild_warehouse(self.tx, self.gate, warehouse)
                finally:
                    self.gate.release_rebuild(warehouse, owner)
        except Exception:
            log.exception(
                "gate rebuild of %s failed; requests stay on the degraded path", warehouse
            )
        finally:
            with self._lock:
                self._running.pop(warehouse, None)

    def heal(self) -> list[str]:
        """One pass of self-healing: every warehouse the gate has off the fast path (Redis
        lost its data, was unreachable, failed over to a replica, or the warehouse is new)
        gets a rebuild now, not when its next order arrives. Returns the warehouses it
        asked to rebuild."""
        if not self.gate.ping():
            return []
        if self._codes_until <= time.monotonic():
            self._codes = self.tx.run(lambda store: store.warehouse_codes())
            self._codes_until = time.monotonic() + CODES_TTL_SECONDS
        if self.gate.server_replaced():
            log.warning("Redis is another server now (a failover?): every warehouse is rebuilt")
            for warehouse in self._codes:
                self.gate.invalidate(warehouse)
        off = self.gate.not_ready(self._codes)
        for warehouse in off:
            self.request(warehouse)
        return off

    def watch(self, interval: float) -> Callable[[], None]:
        """Heal every ``interval`` seconds in a daemon thread; returns its stop function."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.heal()
                except Exception as exc:  # the database or Redis is away: next pass
                    log.debug("gate healing pass failed: %s", exc)

        threading.Thread(target=loop, name="gate-heal", daemon=True).start()
        return stop.set

    def join(self, timeout: float = 30.0) -> None:
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout)
