"""Reconcile on the real stores (MariaDB and SQLite, real Redis): drift in Redis is found and
repaired, ledger drift is reported, balances are compared page by page, also under traffic."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.reports import LocalReports
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_reconcile import SqlReconcileStore
from shared_lib.domain.model import Level, Line, PlaceOrder, utcnow
from shared_lib.services import Deps, place_order
from shared_lib.services.reconcile import RESULT_KEYS
from tests.conftest import seed_catalog
from tests.integration.reconcile_support import (
    SKUS,
    db_level,
    deps,
    gate_level,
    meta,
    receive,
    records,
    reports,
    run,
    run_rows,
)
from tests.integration.test_order_path import assert_invariants

pytestmark = pytest.mark.integration

__all__ = ["deps", "records", "reports"]  # the fixtures, found by pytest in this module


def local_report(uri: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    path = Path(uri.removeprefix("file://"))
    rows = list(csv.DictReader(io.StringIO(path.with_suffix(".csv").read_text())))
    return json.loads(path.read_text()), rows


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
