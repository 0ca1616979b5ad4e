"""Prometheus metrics shared by every function (served at GET /metrics).

Alert rules and the dashboard in ``infra/monitoring`` use these names; its tests check that
every name they use is defined here (``NAMES``).

Several gunicorn workers per pod: set ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory,
before the workers start) and every scrape adds up the workers (prometheus_client's
multiprocess mode); without it a scrape sees the worker that answers it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from shared_lib import topics

REQUESTS = Counter(
    "psi_http_requests_total", "HTTP requests by route and status", ["function", "route", "status"]
)
LATENCY = Histogram(
    "psi_http_request_duration_seconds",
    "HTTP request latency",
    ["function", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STOCK_OPERATIONS = Counter(
    "psi_stock_operations_total",
    "Stock use cases by kind and outcome (ok, replayed, degraded, or the error code)",
    ["function", "kind", "outcome"],
)
OVERSELL_REJECTIONS = Counter(
    "psi_oversell_rejections_total", "Requests refused because stock was short", ["function"]
)
DEGRADED = Gauge(
    "psi_degraded_mode",
    "1 after a stock write ran on the database guard alone (gate unreachable or not ready); "
    "0 once one used the Redis fast path",
    ["function"],
    multiprocess_mode="livemostrecent",
)
DEAD_LETTERS = Counter(
    "psi_dead_letters_total",
    "Messages a function refused and sent to the dead-letter topic, by source topic",
    ["function", "topic"],
)
# set by the worker answering the scrape: its reading is the newest
OUTBOX_PENDING = Gauge(
    "psi_outbox_pending", "Outbox rows not yet published", multiprocess_mode="livemostrecent"
)
OUTBOX_LAG = Gauge(
    "psi_outbox_lag_seconds",
    "Age of the oldest unpublished outbox row",
    multiprocess_mode="livemostrecent",
)
GROUP_COMMIT_BATCH = Histogram(
    "psi_group_commit_batch_size",
    "Orders per group-commit batch, by how it was written (batch, or one_by_one when the "
    "batch as a whole was refused)",
    ["written"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
RECONCILE_DRIFT = Counter(
    "psi_reconcile_drift_total", "Drift rows found and repaired by reconcile", ["state"]
)
RECONCILE_GATES_REBUILT = Counter(
    "psi_reconcile_gates_rebuilt_total",
    "Warehouses reconcile found off the fast path and rebuilt (upkeep, not drift)",
)

# the series an exposition holds for each metric (histograms and counters add suffixes)
NAMES: dict[str, tuple[str, ...]] = {
    "psi_http_requests_total": ("function", "route", "status"),
    "psi_http_request_duration_seconds": ("function", "route"),
    "psi_http_request_duration_seconds_bucket": ("function", "route", "le"),
    "psi_http_request_duration_seconds_count": ("function", "route"),
    "psi_http_request_duration_seconds_sum": ("function", "route"),
    "psi_stock_operations_total": ("function", "kind", "outcome"),
    "psi_oversell_rejections_total": ("function",),
    "psi_degraded_mode": ("function",),
    "psi_dead_letters_total": ("function", "topic"),
    "psi_outbox_pending": (),
    "psi_outbox_lag_seconds": (),
    "psi_reconcile_drift_total": ("state",),
    "psi_reconcile_gates_rebuilt_total": (),
    "psi_group_commit_batch_size_bucket": ("written", "le"),
    "psi_group_commit_batch_size_count": ("written",),
    "psi_group_commit_batch_size_sum": ("written",),
}

# counters exist at 0 from the start, so rate()/increase() see their first increment
for _state in ("found", "repaired"):
    RECONCILE_DRIFT.labels(_state)


def register_function(function: str, *, uses_gate: bool) -> None:
    """Create a function's series at 0 when it starts."""
    OVERSELL_REJECTIONS.labels(function)
    if uses_gate:
        DEGRADED.labels(function).set(0)


def observe_gate(function: str, *, degraded: bool) -> None:
    DEGRADED.labels(function).set(1 if degraded else 0)


def dead_letter(function: str, topic: str) -> None:
    # the topic comes from a request header: unknown ones share a label, bounding the series
    DEAD_LETTERS.labels(function, topic if topic in topics.ALL_IN else "other").inc()


def observe_reconcile(result: Mapping[str, Any]) -> None:
    """Count the drift of one reconcile run (not of replayed answers)."""
    RECONCILE_DRIFT.labels("found").inc(int(result.get("drift_found") or 0))
    RECONCILE_DRIFT.labels("repaired").inc(int(result.get("drift_repaired") or 0))
    RECONCILE_GATES_REBUILT.inc(int(result.get("gates_rebuilt") or 0))


def observe_flush(size: int, one_by_one: bool) -> None:
    GROUP_COMMIT_BATCH.labels("one_by_one" if one_by_one else "batch").observe(size)


def observe_outbox(relay: Any) -> None:
    """Outbox gauges are read from the database when scraped (only once stores are in use)."""
    if relay is None:
        return
    try:
        OUTBOX_PENDING.set(relay.pending_count())
        OUTBOX_LAG.set(relay.lag_seconds())
    except Exception:
        OUTBOX_PENDING.set(float("nan"))
        OUTBOX_LAG.set(float("nan"))


def exposition() -> tuple[bytes, str]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
