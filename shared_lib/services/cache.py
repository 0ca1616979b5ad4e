"""Rebuilding the gate from the system of record (after a flush, restart or invalidation)."""

from __future__ import annotations

import contextvars
import logging
import threading
import uuid

from shared_lib.services.ports import MaintainedGate, Transactions

log = logging.getLogger(__name__)
PAGE = 1000


def rebuild_warehouse(tx: Transactions, gate: MaintainedGate, warehouse: str) -> int | None:
    """Load every balance of the warehouse and mark it ready; None if it was invalidated
    again meanwhile (the caller retries). Loads are version-guarded, so live settles that
    land during the rebuild are never overwritten by older rows."""
    generation = gate.generation(warehouse)
    loaded, after = 0, None
    while True:
        page = tx.run(lambda store, a=after: store.levels_page(warehouse, a, PAGE))
        if not page:
            break
        gate.load(warehouse, page)
        loaded += len(page)
        after = page[-1].sku
    if not gate.mark_ready(warehouse, generation):
        return None
    log.info("gate rebuilt for warehouse %s: %d levels", warehouse, loaded)
    return loaded


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

    def join(self, timeout: float = 30.0) -> None:
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout)
