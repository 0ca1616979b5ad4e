"""In-memory stand-ins for what reconcile needs beyond tests/fakes.py (no mocks)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared_lib.adapters.redis_gate import GateLevel
from shared_lib.adapters.reports import render_report
from shared_lib.domain.model import Level, OrderStatus
from shared_lib.services.reconcile import (
    FAILED,
    FINISHED,
    RUNNING,
    Balance,
    DriftRows,
    ExpiredHold,
    RunRecord,
)
from tests.fakes import FakeTransactions, MemoryGate


class ReconcileMemoryGate(MemoryGate):
    """MemoryGate plus the reads and the compare-and-set repair of the Redis gate.

    ``before_repair`` runs inside ``repair`` before the compare, as a settle racing the
    reconciler would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.before_repair: Callable[[], None] | None = None
        self.repairs = 0

    def ping(self) -> bool:
        return self.reachable

    def read(self, warehouse: str, skus: Iterable[str]) -> dict[str, GateLevel]:
        found = {}
        for sku in skus:
            lv = self.levels.get((warehouse, sku))
            if lv is not None:
                found[sku] = GateLevel(sku, lv["oh"], lv["rs"], lv["v"], lv["hd"])
        return found

    def skus(self, warehouse: str) -> Iterator[str]:
        yield from sorted(sku for wh, sku in list(self.levels) if wh == warehouse)

    def held_drift(
        self, warehouse: str, skus: Sequence[str], *, repair: bool
    ) -> list[tuple[str, int, int]]:
        expected: dict[str, int] = {}
        for (wh, _), lines in self.holds.items():
            if wh == warehouse:
                for sku, qty in lines.items():
                    expected[sku] = expected.get(sku, 0) + qty
        found = []
        for sku in skus:
            level = self.levels.get((warehouse, sku))
            if level is not None and level["hd"] != expected.get(sku, 0):
                found.append((sku, level["hd"], expected.get(sku, 0)))
                if repair:
                    level["hd"] = expected.get(sku, 0)
        return found

    def repair(self, warehouse: str, fixes: Sequence[tuple[int | None, Level]]) -> int:
        if self.before_repair is not None:
            self.before_repair()
        done = 0
        for seen, lv in fixes:
            current = self.levels.get((warehouse, lv.sku))
            if (None if current is None else current["v"]) == seen:
                cur = self.levels.setdefault((warehouse, lv.sku), {"hd": 0})
                cur.update(oh=lv.on_hand, rs=lv.reserved, v=lv.version)
                done += 1
        self.repairs += done
        return done


class MemoryReports:
    """ReportStore keeping reports in a dict; ``fail_with`` makes the next puts fail."""

    def __init__(self) -> None:
        self.reports: dict[str, tuple[bytes, bytes, datetime | None]] = {}
        self.fail_with: Exception | None = None

    def put(
        self,
        run_id: str,
        summary: Mapping[str, Any],
        drift: DriftRows,
        *,
        at: datetime | None = None,
    ) -> str:
        if self.fail_with is not None:
            raise self.fail_with
        json_bytes, csv_bytes = render_report(summary, drift)
        self.reports[run_id] = (json_bytes, csv_bytes, at)
        return f"memory://reports/{run_id}.json"


class FakeReconcileStore:
    """services.reconcile.ReconcileStore over the FakeTransactions state."""

    def __init__(self, tx: FakeTransactions) -> None:
        self.tx = tx
        self.runs: dict[str, RunRecord] = {}
        self.pages = 0
        self.before_finish: Callable[[], None] | None = None
        self._lock = threading.Lock()

    # -- runs
    def claim(
        self, run_key: str, run_id: str, repair: bool, now: datetime, stale_before: datetime
    ) -> RunRecord:
        with self._lock:
            fresh = RunRecord(run_id, run_key, RUNNING, repair, now, claimed=True)
            row = self.runs.get(run_key)
            if row is None or row.status == FAILED:
                self.runs[run_key] = replace(fresh, claimed=False)
                return fresh
            if row.status == RUNNING and row.started_at < stale_before:
                self.runs[run_key] = replace(fresh, claimed=False)
                return fresh
            return row

    def run(self, run_key: str) -> RunRecord | None:
        return self.runs.get(run_key)

    def finish(
        self,
        run_id: str,
        counts: Mapping[str, int],
        report_uri: str | None,
        error: str | None,
        event: dict[str, Any],
        key: str,
        now: datetime,
    ) -> bool:
        if self.before_finish is not None:
            self.before_finish()
        with self._lock:
            for run_key, row in self.runs.items():
                if row.run_id == run_id and row.status == RUNNING:
                    self.runs[run_key] = replace(
                        row,
                        status=FINISHED,
                        finished_at=now,
                        report_uri=report_uri,
                        error=error,
                        **counts,
                    )
                    self.tx.state.outbox.append((event["type"], key, event))
                    return True
            return False

    def fail(self, run_id: str, error: str, now: datetime) -> None:
        with self._lock:
            for run_key, row in self.runs.items():
                if row.run_id == run_id and row.status == RUNNING:
                    self.runs[run_key] = replace(row, status=FAILED, finished_at=now, error=error)

    # -- balances
    def count_levels(self) -> int:
        return len(self.tx.state.levels)

    def warehouse_codes(self) -> list[str]:
        return sorted(self.tx.state.warehouses)

    def balances_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Balance]:
        self.pages += 1
        state = self.tx.state
        page = sorted(
            (lv for (wh, sku), lv in state.levels.items() if wh == warehouse),
            key=lambda lv: lv.sku,
        )
        page = [lv for lv in page if after_sku is None or lv.sku > after_sku][:limit]
        balances = []
        for lv in page:
            moves = [
                m for m in state.movements if (m["warehouse"], m["sku"]) == (warehouse, lv.sku)
            ]
            balances.append(
                Balance(
                    lv,
                    sum(m["delta_on_hand"] for m in moves),
                    sum(m["delta_reserved"] for m in moves),
                )
            )
        return balances

    def levels(self, warehouse: str, skus: Sequence[str]) -> dict[str, Level]:
        state = self.tx.state
        return {s: state.levels[(warehouse, s)] for s in skus if (warehouse, s) in state.levels}

    def existing_skus(self, warehouse: str, skus: Sequence[str]) -> set[str]:
        return set(self.levels(warehouse, skus))

    def expired_holds(
        self, now: datetime, after: ExpiredHold | None, limit: int
    ) -> list[ExpiredHold]:
        holds = sorted(
            (
                ExpiredHold(o.order_id, o.hold_until)
                for o in self.tx.state.orders.values()
                if o.status is OrderStatus.RESERVED and o.hold_until < now
            ),
            key=lambda h: (h.hold_until, h.order_id),
        )
        if after is not None:
            holds = [
                h for h in holds if (h.hold_until, h.order_id) > (after.hold_until, after.order_id)
            ]
        return holds[:limit]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now
