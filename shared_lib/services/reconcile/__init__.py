"""Reconcile: compare the gate, the database balances and the ledger; repair what may be
repaired; expire stale holds; re-drive the outbox; write a report.

ports.py   what it needs from the stores (run records, balances, the gate, reports)
drift.py   the drift rows, the comparison of the gate with the balances, repairs, orphans
ahead.py   the read-ahead that overlaps the stores' round trips
run.py     the use case: one effective run per run key
"""

from shared_lib.services.reconcile.drift import DRIFT_COLUMNS, Drift, DriftLog, compare_gate
from shared_lib.services.reconcile.ports import (
    FAILED,
    FINISHED,
    RESULT_KEYS,
    RUNNING,
    Balance,
    DriftRows,
    ExpiredHold,
    ReconcileGate,
    ReconcileStore,
    ReportStore,
    RunRecord,
    StoredAnswer,
)
from shared_lib.services.reconcile.run import expire_holds, reconcile

__all__ = [
    "DRIFT_COLUMNS",
    "FAILED",
    "FINISHED",
    "RESULT_KEYS",
    "RUNNING",
    "Balance",
    "Drift",
    "DriftLog",
    "DriftRows",
    "ExpiredHold",
    "ReconcileGate",
    "ReconcileStore",
    "ReportStore",
    "RunRecord",
    "StoredAnswer",
    "compare_gate",
    "expire_holds",
    "reconcile",
]
