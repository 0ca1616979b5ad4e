"""Prometheus metrics shared by every function (served at GET /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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
    "psi_stock_operations_total", "Stock use cases by kind and outcome", ["kind", "outcome"]
)
OVERSELL_REJECTIONS = Counter(
    "psi_oversell_rejections_total", "Requests refused because stock was short", ["function"]
)
DEGRADED = Gauge(
    "psi_degraded_mode", "1 while the Redis gate is unreachable and writes use the database guard"
)
DEAD_LETTERS = Counter("psi_dead_letters_total", "Messages sent to the dead-letter topic")
OUTBOX_PENDING = Gauge("psi_outbox_pending", "Outbox rows not yet published")
OUTBOX_LAG = Gauge("psi_outbox_lag_seconds", "Age of the oldest unpublished outbox row")
RECONCILE_DRIFT = Counter(
    "psi_reconcile_drift_total", "Drift found and repaired by reconcile", ["state"]
)


def observe_outbox(relay: Any) -> None:
    """Outbox gauges are read from the database when scraped (only once stores are in use)."""
    if relay is None:
        return
    try:
        OUTBOX_PENDING.set(relay.pending_count())
        OUTBOX_LAG.set(relay.lag_seconds())
    except Exception:
        OUTBOX_PENDING.set(float("nan"))


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
