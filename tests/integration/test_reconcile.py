"""Reconcile on the real stores (MariaDB and SQLite, real Redis, moto's S3 server): drift in
Redis is found and repaired, ledger drift is reported, stale holds expire, one run per key."""

from __future__ import annotations

import csv
import io
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
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
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_reconcile import SqlReconcileStore
from shared_lib.domain.errors import RequestInProgress
from shared_lib.domain.model import Level, Line, PlaceOrder, ReceiveStock, RequestMeta, utcnow
from shared_lib.services import Deps, place_order, receive_stock
from shared_lib.services.cache import rebuild_all
from shared_lib.services.reconcile import RESULT_KEYS, ReportStore, reconcile
from tests.conftest import seed_catalog
from tests.fakes import InMemoryPublisher
from tests.integration.test_order_path import assert_invariants

pytestmark = pytest.mark.integration

SKUS = ("A", "B", "C", "D")


@pytest.fixture
def deps(engine: sa.Engine, tx: SqlTransactions, gate: RedisGate) -> Deps:
    seed_catalog(engine, dict.fromkeys(SKUS, 0), ("W1", "W2"))
    rebuild_all(tx, gate)
    deps = Deps(tx=tx, gate=gate, source="/psi/reconcile")
    receive(deps, "W1", "in-1", A=10, B=5, C=7, D=1)
    receive(deps, "W2", "in-2", A=3, B=4)
    return deps


@pytest.fixture
def records(engine: sa.Engine) -> SqlReconcileStore:
    return SqlReconcileStore(engine)


@pytest.fixture
def reports(tmp_path: Path) -> LocalReports:
    return LocalReports(tmp_path / "reports")


def receive(deps: Deps, warehouse: str, key: str, **qty: int) -> None:
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    receive_stock(deps, ReceiveStock(warehouse, lines), RequestMeta(key, "test"))


def run(
    deps: Deps,
    records: SqlReconcileStore,
    gate: RedisGate | None,
    reports: ReportStore,
    key: str = "nightly",
    **options: Any,
) -> dict[str, Any]:
    return reconcile(deps, records, gate, reports, run_key=key, **options)


def local_report(uri: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    path = Path(uri.removeprefix("file://"))
    rows = list(csv.DictReader(io.StringIO(path.with_suffix(".csv").read_text())))
    return json.loads(path.read_text()), rows


def completed_rows(engine: sa.Engine) -> list[sa.Row]:
    o = t.outbox
    with engine.connect() as conn:
        return list(conn.execute(sa.select(o).where(o.c.topic == topics.RECONCILE_COMPLETED)))


def run_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t.reconciliation_runs)))


def db_level(engine: sa.Engine, warehouse: str, sku: str) -> tuple[int, int, int]:
    s = t.stock_levels
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(s.c.on_hand, s.c.reserved, s.c.version).where(
                s.c.warehouse == warehouse, s.c.sku == sku
            )
        ).one()
    return int(row.on_hand), int(row.reserved), int(row.version)


def gate_level(gate: RedisGate, warehouse: str, sku: str) -> tuple[int, int, int]:
    cached = gate.read(warehouse, [sku])[sku]
    return cached.on_hand, cached.reserved, cached.version


def test_drift_seeded_in_redis_is_found_and_repaired(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    reports: LocalReports,
) -> None:
    redis_client.hset(gate.level_key("W1", "A"), "oh", 99)
    redis_client.delete(gate.level_key("W1", "B"))
    redis_client.hset(gate.level_key("W2", "A"), mapping={"oh": 1, "v": 0})
    ghost = gate.level_key("W1", "GHOST")
    redis_client.hset(ghost, mapping={"oh": 4, "rs": 0, "v": 3, "hd": 0})

    result = run(deps, records, gate, reports)

    assert tuple(result) == RESULT_KEYS
    assert result["checked"] == 6
    assert (result["drift_found"], result["drift_repaired"]) == (4, 3)
    summary, rows = local_report(result["report_uri"])
    assert Counter((r["kind"], r["repaired"]) for r in summary["drift"]) == {
        ("gate_mismatch", True): 2,
        ("gate_missing", True): 1,
        ("gate_orphan", False): 1,
    }
    assert sorted((r["kind"], r["warehouse"], r["sku"]) for r in rows) == [
        ("gate_mismatch", "W1", "A"),
        ("gate_mismatch", "W2", "A"),
        ("gate_missing", "W1", "B"),
        ("gate_orphan", "W1", "GHOST"),
    ]
    redis_client.delete(ghost)  # reported, never removed: the test cleans it up
    assert_invariants(engine, gate)
    (row,) = run_rows(engine)
    assert (row.status, row.checked, row.drift_found, row.report_uri) == (
        "finished",
        6,
        4,
        result["report_uri"],
    )


def test_a_ledger_mismatch_is_reported_not_repaired(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    reports: LocalReports,
) -> None:
    s = t.stock_levels
    with engine.begin() as conn:
        conn.execute(
            sa.update(s)
            .where(s.c.warehouse == "W1", s.c.sku == "C")
            .values(on_hand=s.c.on_hand + 5)
        )

    result = run(deps, records, gate, reports)

    summary, _ = local_report(result["report_uri"])
    ledger = [r for r in summary["drift"] if r["kind"] == "ledger_mismatch"]
    assert [(r["sku"], r["db_on_hand"], r["ledger_on_hand"], r["repaired"]) for r in ledger] == [
        ("C", 12, 7, False)
    ]
    assert db_level(engine, "W1", "C")[0] == 12  # the record is left for a person
    assert gate_level(gate, "W1", "C") == db_level(engine, "W1", "C")  # Redis follows MySQL
    assert (result["drift_found"], result["drift_repaired"]) == (2, 1)


def test_the_store_compares_every_balance_with_its_ledger_page_by_page(
    deps: Deps, engine: sa.Engine, records: SqlReconcileStore
) -> None:
    s = t.stock_levels
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.update(s).where(s.c.warehouse == "W1", s.c.sku == "B").values(reserved=1))
        conn.execute(sa.update(s).where(s.c.warehouse == "W1", s.c.sku == "D").values(on_hand=3))
        conn.execute(
            t.products.insert(),
            [{"sku": sku, "name": sku, "created_at": now, "updated_at": now} for sku in "EF"],
        )
        # balances without any movement: E's ledger sums to 0, F agrees with it
        conn.execute(
            s.insert(),
            [
                {"warehouse": "W1", "sku": "E", "on_hand": 2, "updated_at": now},
                {"warehouse": "W1", "sku": "F", "on_hand": 0, "updated_at": now},
            ],
        )

    def db(level: Level) -> tuple[str, int, int]:
        return level.sku, level.on_hand, level.reserved

    pages, after = [], None
    while page := records.balances_page("W1", after, 2):
        pages.append([(*db(b.level), b.ledger_on_hand, b.ledger_reserved) for b in page])
        after = page[-1].level.sku

    assert pages == [  # sku, on_hand, reserved, then the ledger's on_hand and reserved
        [("A", 10, 0, 10, 0), ("B", 5, 1, 5, 0)],
        [("C", 7, 0, 7, 0), ("D", 3, 0, 1, 0)],
        [("E", 2, 0, 0, 0), ("F", 0, 0, 0, 0)],
    ]
    assert records.existing_skus("W1", ["C", "A", "C"]) == {"A", "C"}
    assert records.existing_skus("W1", ["A", "GHOST"]) == {"A"}
    assert records.existing_skus("W1", []) == set()


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


def meta(key: str) -> RequestMeta:
    return RequestMeta(key, "test")


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


def test_with_redis_disabled_the_ledger_and_holds_are_still_checked(
    engine: sa.Engine, tx: SqlTransactions, records: SqlReconcileStore, reports: LocalReports
) -> None:
    seed_catalog(engine, dict.fromkeys(SKUS, 0), ("W1",))
    deps = Deps(tx=tx, source="/psi/reconcile")
    receive(deps, "W1", "in-1", A=5, B=5)
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 1),), hold_seconds=1), meta("o1"))
    s = t.stock_levels
    with engine.begin() as conn:
        conn.execute(sa.update(s).where(s.c.sku == "B").values(reserved=1))

    result = run(deps, records, None, reports, now=utcnow() + timedelta(minutes=1))

    assert (result["checked"], result["drift_found"], result["expired_holds"]) == (2, 1, 1)
    summary, rows = local_report(result["report_uri"])
    assert summary["gate"] == "disabled"
    assert [(r["kind"], r["sku"], r["repaired"]) for r in rows] == [
        ("ledger_mismatch", "B", "False")
    ]


def test_a_flushed_warehouse_is_rebuilt(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    reports: LocalReports,
) -> None:
    for key in redis_client.scan_iter(match=f"{gate.tag('W2')}*"):
        redis_client.delete(key)
    assert not gate.is_ready("W2")

    result = run(deps, records, gate, reports)

    summary, _ = local_report(result["report_uri"])
    assert summary["drift"] == [] and result["drift_found"] == 0  # upkeep, not drift
    assert result["gates_rebuilt"] == summary["gates_rebuilt"] == 1
    assert gate.is_ready("W2")
    assert_invariants(engine, gate)


def test_many_balances_stream_in_pages(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    reports: LocalReports,
) -> None:
    skus = [f"P{i:04d}" for i in range(250)]
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            t.products.insert(),
            [{"sku": s, "name": s, "created_at": now, "updated_at": now} for s in skus],
        )
    receive(deps, "W1", "bulk", **dict.fromkeys(skus, 2))
    for sku in ("P0007", "P0100", "P0249"):
        redis_client.hset(gate.level_key("W1", sku), "rs", 1)
    progress: list[tuple[int, int | None]] = []

    result = run(
        deps,
        records,
        gate,
        reports,
        batch_size=64,
        on_progress=lambda done, total: progress.append((done, total)),
    )

    assert result["checked"] == 256
    assert (result["drift_found"], result["drift_repaired"]) == (3, 3)
    assert progress[0] == (0, 256) and progress[-1] == (256, 256)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert len(progress) == 1 + 4 + 1  # start, W1: 254 rows in pages of 64, W2: 2 rows
    assert_invariants(engine, gate)


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


def test_live_traffic_during_a_run_shows_no_ledger_drift(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    reports: LocalReports,
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                receive(deps, "W1", f"t{worker}-{i}", **{SKUS[i % 4]: 1})
                order = f"o{worker}-{i}"
                place_order(deps, PlaceOrder(order, "W1", (Line(SKUS[i % 4], 1),)), meta(order))
            except Exception as exc:  # the test fails on any, after stopping the workers
                errors.append(exc)
                return

    workers = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    try:
        results = [
            run(deps, records, gate, reports, key=f"busy-{n}", batch_size=1) for n in range(5)
        ]
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert not errors
    for result in results:
        summary, _ = local_report(result["report_uri"])
        assert [r for r in summary["drift"] if r["kind"] == "ledger_mismatch"] == []
    after = run(deps, records, gate, reports, key="quiet", repair=False)
    assert after["drift_found"] == 0
    assert_invariants(engine, gate)


def test_a_held_count_that_drifted_is_found_and_set_right(
    deps: Deps,
    engine: sa.Engine,
    records: SqlReconcileStore,
    gate: RedisGate,
    redis_client: redis.Redis,
    reports: LocalReports,
) -> None:
    """A level's held count that is not the holds that exist (here: 5 units counted with no
    hold behind them, as a hold given back once but counted twice leaves it) makes the gate
    refuse stock it has, for good: nothing but reconcile sets it right."""
    gate.try_hold("W1", "live", "fp", [Line("A", 2)], 60_000)  # a real, live hold
    redis_client.hincrby(gate.level_key("W1", "A"), "hd", 5)
    assert gate.read("W1", ["A"])["A"].held == 7

    looked = run(deps, records, gate, reports, key="look", repair=False)
    assert looked["drift_found"] >= 1 and gate.read("W1", ["A"])["A"].held == 7
    result = run(deps, records, gate, reports, key="fix")

    summary, _ = local_report(result["report_uri"])
    held = [r for r in summary["drift"] if r["kind"] == "gate_held_mismatch"]
    assert [(r["sku"], r["gate_held"], r["expected_held"], r["repaired"]) for r in held] == [
        ("A", 7, 2, True)
    ]
    assert gate.read("W1", ["A"])["A"].held == 2  # the live hold stays counted
    gate.cancel_hold("W1", "live")
    assert gate.read("W1", ["A"])["A"].held == 0
