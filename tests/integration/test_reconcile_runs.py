"""Reconcile runs on the real stores (MariaDB and SQLite, real Redis, moto's S3 server):
stale holds expire, one run per key, the completion event, taking over a stuck or failed
run, and the report in S3."""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import boto3
import pytest
import redis
import sqlalchemy as sa
from moto.server import ThreadedMotoServer

from psi_local.events_schema import validate_event
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.outbox import OutboxRelay
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.reports import LocalReports, S3Reports
from shared_lib.adapters.sql_reconcile import SqlReconcileStore
from shared_lib.domain.errors import RequestInProgress
from shared_lib.domain.model import Line, PlaceOrder, utcnow
from shared_lib.services import Deps, place_order
from shared_lib.services.reconcile import RESULT_KEYS
from tests.fakes import InMemoryPublisher
from tests.integration.reconcile_support import (
    db_level,
    deps,
    gate_level,
    meta,
    records,
    reports,
    run,
    run_rows,
)
from tests.integration.test_order_path import assert_invariants

pytestmark = pytest.mark.integration

__all__ = ["deps", "records", "reports"]  # the fixtures, found by pytest in this module


def completed_rows(engine: sa.Engine) -> list[sa.Row]:
    o = t.outbox
    with engine.connect() as conn:
        return list(conn.execute(sa.select(o).where(o.c.topic == topics.RECONCILE_COMPLETED)))


def test_an_order_past_its_hold_is_expired_in_both_stores(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    reports: LocalReports,
) -> None:
    place_order(
        deps, PlaceOrder("o1", "W1", (Line("A", 4), Line("B", 1)), hold_seconds=1), meta("o1")
    )
    place_order(deps, PlaceOrder("o2", "W1", (Line("A", 2),), hold_seconds=3600), meta("o2"))

    result = run(deps, records, gate, reports, now=utcnow() + timedelta(minutes=1))

    assert result["expired_holds"] == 1 and result["drift_found"] == 0
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(t.orders.c.order_id, t.orders.c.status)).all())
    assert statuses == {"o1": "expired", "o2": "reserved"}
    assert db_level(engine, "W1", "A")[:2] == (10, 2) and db_level(engine, "W1", "B")[:2] == (5, 0)
    assert gate.read("W1", ["A"])["A"].available == 8
    assert_invariants(engine, gate)


def test_the_same_run_key_twice_is_one_run_with_the_same_answer(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    reports: LocalReports,
) -> None:
    redis_client.hset(gate.level_key("W1", "A"), "oh", 99)
    first = run(deps, records, gate, reports)
    redis_client.hset(gate.level_key("W1", "A"), "oh", 42)

    second = run(deps, records, gate, reports)

    assert second == first and first["drift_repaired"] == 1
    assert gate_level(gate, "W1", "A")[0] == 42  # nothing ran the second time
    assert len(run_rows(engine)) == 1 and len(completed_rows(engine)) == 1


def test_concurrent_deliveries_of_one_key_make_one_run(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    reports: LocalReports,
) -> None:
    redis_client.delete(gate.level_key("W1", "A"))
    start = threading.Barrier(8)

    def deliver(_: int) -> dict[str, Any] | str:
        start.wait(timeout=30)
        try:
            return run(deps, records, gate, reports, key="nightly-concurrent")
        except RequestInProgress:
            return "in progress"

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(deliver, range(8)))

    finished = [a for a in answers if a != "in progress"]
    final = run(deps, records, gate, reports, key="nightly-concurrent")
    assert finished and all(a == final for a in finished)
    assert (final["drift_found"], final["drift_repaired"]) == (1, 1)
    assert len(run_rows(engine)) == 1 and len(completed_rows(engine)) == 1
    assert_invariants(engine, gate)


def test_the_completion_event_goes_through_the_outbox_and_validates(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    reports: LocalReports,
) -> None:
    publisher = InMemoryPublisher()
    relay = OutboxRelay(engine, publisher)
    pending = relay.pending_count()
    assert pending > 0  # the stock.changed events of the fixture

    result = run(deps, records, gate, reports, key="manual-1", redrive=relay.drain)

    assert result["outbox_redriven"] == pending
    (row,) = completed_rows(engine)
    event = json.loads(row.payload)
    validate_event(topics.RECONCILE_COMPLETED, event)
    assert row.event_key == "manual-1" and event["data"] == result
    (sent,) = publisher.on_topic(topics.RECONCILE_COMPLETED)  # relayed right after the run
    assert sent.value == row.payload.encode() and sent.key == "manual-1"
    assert relay.pending_count() == 0


def test_a_stuck_or_failed_run_is_taken_over_by_the_next_delivery(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    reports: LocalReports,
) -> None:
    now = utcnow()
    records.claim("k", "crashed-replica", True, now, now - timedelta(minutes=30))
    with pytest.raises(RequestInProgress):
        run(deps, records, gate, reports, key="k")

    r = t.reconciliation_runs
    with engine.begin() as conn:
        conn.execute(sa.update(r).values(started_at=now - timedelta(minutes=31)))
    taken = run(deps, records, gate, reports, key="k")
    assert taken["run_id"] != "crashed-replica" and taken["checked"] == 6

    records.claim("k2", "failing", True, now, now - timedelta(minutes=30))
    records.fail("failing", "RuntimeError: boom", now)
    retried = run(deps, records, gate, reports, key="k2")
    assert retried["run_id"] != "failing"
    assert {(row.run_key, row.status, row.error) for row in run_rows(engine)} == {
        ("k", "finished", None),
        ("k2", "finished", None),
    }


# -- reports in S3 (moto's server on loopback) -------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"psi-reports-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return bucket


def test_the_report_lands_in_s3(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    s3_server: str,
    s3_bucket: str,
) -> None:
    redis_client.hset(gate.level_key("W2", "B"), "oh", 0)
    reports = S3Reports(s3_bucket, s3_server)

    result = run(deps, records, gate, reports)

    day = utcnow().date().isoformat()
    key = f"reconcile/{day}/{result['run_id']}"
    assert result["report_uri"] == f"s3://{s3_bucket}/{key}.json"
    client = boto3.client("s3", endpoint_url=s3_server)
    document = json.loads(client.get_object(Bucket=s3_bucket, Key=f"{key}.json")["Body"].read())
    table = client.get_object(Bucket=s3_bucket, Key=f"{key}.csv")
    assert table["ContentType"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table["Body"].read().decode())))
    assert {k: document[k] for k in RESULT_KEYS if k != "report_uri"} == {
        k: result[k] for k in RESULT_KEYS if k != "report_uri"
    }
    assert [(r["kind"], r["warehouse"], r["sku"]) for r in rows] == [("gate_mismatch", "W2", "B")]
    assert [d["kind"] for d in document["drift"]] == ["gate_mismatch"]
    (row,) = run_rows(engine)
    assert row.report_uri == result["report_uri"]
