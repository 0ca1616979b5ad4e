"""GET /metrics after real traffic through the in-process functions (MariaDB and SQLite, the
real Redis, the embedded broker): every metric of ``shared_lib.http.metrics`` is there with
its labels and moved as the traffic says. The registry is per process, so the test compares
values before and after its own traffic."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import functions_framework
import pytest
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from psi_local.broker import EmbeddedBroker
from shared_lib import bootstrap, topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.sql import SqlStore
from shared_lib.domain import events
from shared_lib.domain.model import utcnow
from shared_lib.http import metrics
from tests.integration import functions_api as http
from tests.integration.functions_api import Api, catalog, gate_rebuilt, ok, receive, refused
from tests.support import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(api: Api, function: str = "stock_query") -> Samples:
    response = api.get(function, "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def api(boot: http.Boot, broker: EmbeddedBroker) -> Iterator[Api]:
    """Every function, reconcile included, with Kafka configured (relay, dead letters)."""
    api = boot(PSI_KAFKA_BOOTSTRAP=broker.bootstrap)
    api.clients["reconcile"] = functions_framework.create_app(
        target="handle", source=str(ROOT / "functions" / "reconcile" / "main.py")
    ).test_client()
    yield api


def stuck_outbox_row(engine: sa.Engine) -> None:
    """An event Kafka refused two minutes ago, backing off for an hour (the relay waits)."""
    event = events.cloud_event(topics.STOCK_CHANGED, "/psi/test", "A", {"n": 1}, utcnow())
    with engine.begin() as conn:
        SqlStore(conn).add_event(topics.STOCK_CHANGED, "A", event)
        o = t.outbox
        conn.execute(
            sa.update(o)
            .where(o.c.event_id == event["id"])
            .values(
                created_at=utcnow() - timedelta(minutes=2),
                attempts=3,
                next_attempt_at=utcnow() + timedelta(hours=1),
                last_error="PublishError: test",
            )
        )


def test_metrics_follow_real_traffic(api: Api, redis_client: redis.Redis) -> None:
    before = scrape(api)
    catalog(api, {"A": 5})
    receive(api, A=10)

    first = api.post("create_order", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]})
    assert ok(first, 201) and first.headers["X-PSI-Degraded"] == "true"  # gate not built yet
    degraded = scrape(api)
    assert value(degraded, "psi_degraded_mode", function="create-order") == 1

    gate_rebuilt()
    fast = api.post("create_order", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]})
    assert ok(fast, 201) and "X-PSI-Degraded" not in fast.headers
    short = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 50}]}
    refused(api.post("create_order", "/", short), 409, "insufficient_stock")
    connector = {"X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Partition": "0"}
    poison = api.post(
        "stock_in", "/", {"lines": "nope"}, key=None, headers={**connector, "X-Kafka-Offset": "42"}
    )
    refused(poison, 422, "invalid_request")

    platform = bootstrap.get_platform()
    assert platform.gate is not None
    redis_client.hset(platform.gate.level_key("MAIN", "A"), "oh", 99)
    run = ok(api.post("reconcile", "/", {"run_key": "metrics-1"}))
    assert (run["drift_found"], run["drift_repaired"]) == (1, 1)
    relay = platform.relay
    assert relay is not None
    wait_until(lambda: relay.pending_count() == 0, timeout=30, what="the relay to publish")
    stuck_outbox_row(platform.engine)

    after = scrape(api, "reconcile")

    # every metric the module defines is exposed
    names = {name for name, _ in after}
    assert set(metrics.NAMES) - {"psi_http_request_duration_seconds"} <= names
    for (name, labels), _ in after.items():
        if name in metrics.NAMES:
            assert {k for k, _ in labels} == set(metrics.NAMES[name]), (name, labels)

    route = {"function": "create-order", "route": "/"}
    assert grew(before, after, "psi_http_requests_total", **route, status="201") == 2
    assert grew(before, after, "psi_http_requests_total", **route, status="409") == 1
    assert (
        grew(before, after, "psi_http_requests_total", function="stock-in", route="/", status="422")
        == 1
    )
    assert grew(before, after, "psi_http_request_duration_seconds_count", **route) == 3
    assert grew(before, after, "psi_http_request_duration_seconds_sum", **route) > 0
    assert grew(before, after, "psi_http_request_duration_seconds_bucket", **route, le="+Inf") == 3

    ops = "psi_stock_operations_total"
    assert grew(before, after, ops, function="stock-in", kind="receive", outcome="ok") == 1
    assert grew(before, after, ops, function="create-order", kind="place_order", outcome="ok") == 1
    assert (
        grew(before, after, ops, function="create-order", kind="place_order", outcome="degraded")
        == 1
    )
    assert (
        grew(
            before,
            after,
            ops,
            function="create-order",
            kind="place_order",
            outcome="insufficient_stock",
        )
        == 1
    )
    assert grew(before, after, "psi_oversell_rejections_total", function="create-order") == 1
    assert value(after, "psi_degraded_mode", function="create-order") == 0  # the fast path ran
    # the fast order was group-committed: a batch of one
    assert grew(before, after, "psi_group_commit_batch_size_count", written="batch") == 1
    assert grew(before, after, "psi_group_commit_batch_size_sum", written="batch") == 1
    dead = {"function": "stock-in", "topic": topics.STOCK_IN_REQUESTED}
    assert grew(before, after, "psi_dead_letters_total", **dead) == 1
    assert grew(before, after, "psi_reconcile_drift_total", state="found") == 1
    assert grew(before, after, "psi_reconcile_drift_total", state="repaired") == 1
    assert value(after, "psi_outbox_pending") == 1
    assert value(after, "psi_outbox_lag_seconds") >= 120

    # the same run key answers the stored result: its drift is not counted twice
    assert ok(api.post("reconcile", "/", {"run_key": "metrics-1"})) == run
    again = scrape(api)
    assert grew(after, again, "psi_reconcile_drift_total", state="found") == 0


WORKER = """
import sys
from shared_lib.http import metrics
metrics.REQUESTS.labels("stock-in", "/", "201").inc()
metrics.observe_gate("create-order", degraded=sys.argv[1] == "1")
"""
SCRAPE = "from shared_lib.http import metrics; print(metrics.exposition()[0].decode())"


def test_several_workers_of_a_pod_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """gunicorn runs several workers: with PROMETHEUS_MULTIPROC_DIR a scrape sums them."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def python(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", *argv], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    python(WORKER, "1")  # a worker whose last write ran degraded
    python(WORKER, "0")  # then another one on the fast path
    samples: Samples = {}
    for family in text_string_to_metric_families(python(SCRAPE)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    labels = {"function": "stock-in", "route": "/", "status": "201"}
    assert value(samples, "psi_http_requests_total", **labels) == 2
    assert value(samples, "psi_degraded_mode", function="create-order") == 0  # the newest
