"""What the reconcile needs from the stores: its run records, balances and holds, the
gate's reads and repairs, and a place for reports."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared_lib.domain.model import Level
from shared_lib.services.ports import MaintainedGate

RESULT_KEYS = (
    "run_id",
    "run_key",
    "checked",
    "drift_found",
    "drift_repaired",
    "expired_holds",
    "outbox_redriven",
    "gates_rebuilt",
    "report_uri",
)
RUNNING, FINISHED, FAILED = "running", "finished", "failed"


Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Balance:
    """A database balance and the sum of its ledger, read in one snapshot."""

    level: Level
    ledger_on_hand: int
    ledger_reserved: int

    @property
    def consistent(self) -> bool:
        return (self.level.on_hand, self.level.reserved) == (
            self.ledger_on_hand,
            self.ledger_reserved,
        )


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    run_key: str
    status: str
    repair: bool
    started_at: datetime
    finished_at: datetime | None = None
    checked: int = 0
    drift_found: int = 0
    drift_repaired: int = 0
    expired_holds: int = 0
    outbox_redriven: int = 0
    gates_rebuilt: int = 0
    report_uri: str | None = None
    error: str | None = None
    claimed: bool = False

    def result(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in RESULT_KEYS}


class StoredAnswer(dict[str, Any]):
    """The answer of a run key that finished earlier: nothing ran now (a replay)."""


@dataclass(frozen=True)
class ExpiredHold:
    order_id: str
    hold_until: datetime


class ReconcileStore(Protocol):
    """The reconcile's view of the system of record (each call is its own transaction)."""

    def claim(
        self, run_key: str, run_id: str, repair: bool, now: datetime, stale_before: datetime
    ) -> RunRecord:
        """Record a new run, or take over a failed or stale one (``claimed`` True); else
        return the existing run (``claimed`` False)."""
        ...

    def run(self, run_key: str) -> RunRecord | None: ...

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
        """Mark the run finished and add its event to the outbox, in one transaction;
        False when the run is no longer this one's (taken over meanwhile)."""
        ...

    def fail(self, run_id: str, error: str, now: datetime) -> None: ...

    def count_levels(self) -> int: ...
    def warehouse_codes(self) -> list[str]: ...
    def balances_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Balance]:
        """Balances after ``after_sku`` in sku order, each with its ledger sum."""
        ...

    def levels(self, warehouse: str, skus: Sequence[str]) -> dict[str, Level]: ...
    def existing_skus(self, warehouse: str, skus: Sequence[str]) -> set[str]: ...
    def expired_holds(
        self, now: datetime, after: ExpiredHold | None, limit: int
    ) -> list[ExpiredHold]:
        """Orders still ``reserved`` whose hold ended before ``now``, oldest first."""
        ...


class GateReading(Protocol):
    @property
    def on_hand(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def version(self) -> int: ...


class ReconcileGate(MaintainedGate, Protocol):
    """What reconcile needs from the gate beyond rebuilds (``RedisGate`` has it all)."""

    def ping(self) -> bool: ...
    def read(self, warehouse: str, skus: Iterable[str]) -> Mapping[str, GateReading]: ...
    def skus(self, warehouse: str) -> Iterator[str]: ...
    def repair(self, warehouse: str, fixes: Sequence[tuple[int | None, Level]]) -> int:
        """Overwrite levels whose gate version is still the one seen; returns how many."""
        ...

    def held_drift(
        self, warehouse: str, skus: Sequence[str], *, repair: bool
    ) -> list[tuple[str, int, int]]:
        """(sku, held, expected) where a level's held count is not the holds that exist."""
        ...


class DriftRows(Protocol):
    """The drift rows of a run, as many times as a report's renderings need them."""

    found: int

    def rows(self) -> Iterator[dict[str, Any]]: ...


class ReportStore(Protocol):
    def put(
        self,
        run_id: str,
        summary: Mapping[str, Any],
        drift: DriftRows,
        *,
        at: datetime | None = None,
    ) -> str:
        """Render the run's report (JSON: the summary and every drift row; CSV: the rows)
        and store both; returns the URI of the JSON one."""
        ...
