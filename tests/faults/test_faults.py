"""Fault injection against the running product: 8 client threads place, ship and cancel
orders (and receive / issue stock) over HTTP for ~10 s while one fault strikes; then one
reconcile run, and every invariant is checked (see ``checks.verify``):

* sampling: MySQL sampled every 100 ms during the run never showed on_hand < 0,
  reserved < 0 or reserved > on_hand; the schema's CHECK constraints exist and refuse such
  an UPDATE;
* balances: every balance == the sum of its ledger, available >= 0;
* answers: every 2xx is in MySQL (its idempotency record holds the very answer given, its
  ledger rows exist, a placed order exists with its lines and the status the client's later
  answers imply); every definitive 4xx left no trace; no 500, no 400/404/422 for requests
  that are valid, no 409 other than insufficient_stock / request_in_progress / order_exists
  (the last two only on retries of an interrupted request);
* gate: after the one reconcile, Redis == MySQL for every balance ((on_hand, reserved,
  version); every warehouse ready; every held unit belongs to a registered hold);
* outbox / events: every outbox row ends published; one event per committed change; what
  Kafka carries is checked as documented in ``checks.check_events`` (a broker restart
  loses the records of the in-memory broker, so only rows committed after the last restart
  must be on their topic).

Allowed client errors: no answer (connection refused or reset, timeout), 503, and 409
``request_in_progress`` (a retry while the interrupted first attempt's hold is still live).
A 409 ``insufficient_stock`` is never allowed for an order whose lines are all of the
"plenty" SKUs (a million units each; the whole run reserves a few hundred): the gate's
degraded and rebuilding states send requests to the database path, which refuses only for
real shortage, and units held by orphaned holds are bounded by the in-flight demand. So such
a refusal would be a wrong answer whatever the fault. For the scarce SKUs it is expected.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.domain.model import utcnow
from tests.faults.checks import (
    check_answers,
    check_balances,
    check_events,
    check_gate,
    gate_problems,
    verify,
)
from tests.faults.fault_env import FaultEnv
from tests.faults.workload import Attempt, Op, RunResult, run_workload

pytestmark = pytest.mark.e2e

WORKLOAD_SECONDS = 10.0
FAULT_AFTER = 3.0


def pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def describe(result: RunResult, report: dict[str, list[str]]) -> str:
    lines = [f"fault: {'; '.join(result.fault_notes)}", f"statuses: {dict(result.statuses())}"]
    for name, problems in report.items():
        lines.append(f"{name}: {len(problems)} problem(s)")
        lines.extend(f"  {p}" for p in problems[:15])
    return "\n".join(lines)


def assert_healthy_run(result: RunResult, report: dict[str, list[str]]) -> None:
    print(describe(result, report))  # shown with -s, or with the failure
    assert not report, describe(result, report)
    succeeded = [op for op in result.ops if op.succeeded]
    assert len(succeeded) >= 40, describe(result, report)
    kinds = {op.kind for op in succeeded}
    assert {"place", "ship", "cancel"} <= kinds, describe(result, report)


def test_redis_flushall_twice_mid_run(faults: FaultEnv) -> None:
    tag = "rflush"
    catalog = faults.seed(tag)

    def fault() -> Iterator[str]:
        faults.flushall()
        yield "FLUSHALL"
        pause(2.5)  # the gate is being rebuilt, or was just rebuilt: flush it again
        faults.flushall()
        yield "FLUSHALL again"

    result = run_workload(
        faults, catalog, tag, fault, seconds=WORKLOAD_SECONDS, fault_after=FAULT_AFTER
    )
    report = verify(faults, result, tag)
    assert_healthy_run(result, report)
    degraded = sum(a.degraded for op in result.ops for a in op.attempts)
    assert degraded > 0, "the flush never sent a request down the degraded path"


def test_redis_restart_mid_run(faults: FaultEnv) -> None:
    tag = "rrestart"
    catalog = faults.seed(tag)

    def fault() -> Iterator[str]:
        faults.private_redis.stop()
        yield "redis-server killed"
        pause(2.0)  # requests meanwhile run on the database only
        faults.private_redis.start()
        yield "redis-server started again (empty)"

    result = run_workload(
        faults, catalog, tag, fault, seconds=WORKLOAD_SECONDS, fault_after=FAULT_AFTER
    )
    report = verify(faults, result, tag)
    assert_healthy_run(result, report)
    degraded = sum(a.degraded for op in result.ops for a in op.attempts)
    assert degraded > 0, "Redis going away never sent a request down the degraded path"


def test_mariadb_connections_killed_mid_run(faults: FaultEnv) -> None:
    tag = "dbkill"
    catalog = faults.seed(tag)
    killed: list[int] = []

    def fault() -> Iterator[str]:
        for _ in range(20):  # ~3 s of connections dying under the clients' transactions
            killed.append(faults.kill_db_connections())
            pause(0.15)
        yield f"KILLed {sum(killed)} connections in {len(killed)} rounds"

    result = run_workload(
        faults, catalog, tag, fault, seconds=WORKLOAD_SECONDS, fault_after=FAULT_AFTER
    )
    report = verify(faults, result, tag)
    assert sum(killed) > 0, "no connection of the test database was found to kill"
    assert_healthy_run(result, report)


def test_broker_restart_mid_run(faults: FaultEnv) -> None:
    tag = "kafka"
    catalog = faults.seed(tag)

    def fault() -> Iterator[str]:
        yield from faults.restart_broker(down_for=3.0)  # relays wait or fail meanwhile
        yield f"outbox watermark {faults.watermark}"

    result = run_workload(
        faults, catalog, tag, fault, seconds=WORKLOAD_SECONDS, fault_after=FAULT_AFTER
    )
    report = verify(faults, result, tag)
    assert_healthy_run(result, report)
    outbox = t.outbox
    with faults.engine.connect() as conn:
        after_restart = conn.execute(
            sa.select(sa.func.count()).where(outbox.c.id > faults.watermark)
        ).scalar_one()
        retried = conn.execute(sa.select(sa.func.count()).where(outbox.c.attempts > 0)).scalar_one()
    print(f"{after_restart} events committed after the restart; {retried} rows needed a retry")
    assert after_restart > 0, "no event was committed after the broker restart"


def test_function_process_sigkilled_mid_request(faults: FaultEnv) -> None:
    tag = "sigkill"
    catalog = faults.seed(tag)
    pids: list[int] = []

    def fault() -> Iterator[str]:
        # create-order takes the most traffic: with 8 busy clients requests are in flight
        pids.append(faults.stack.kill_function("create_order"))
        yield f"create-order pid {pids[0]} SIGKILLed"
        pids.append(faults.stack.restart_function("create_order").process.pid)
        yield f"create-order restarted as pid {pids[1]}"

    result = run_workload(
        faults, catalog, tag, fault, seconds=WORKLOAD_SECONDS, fault_after=FAULT_AFTER
    )
    report = verify(faults, result, tag)
    assert_healthy_run(result, report)
    assert pids[0] != pids[1]
    refused = [a for op in result.ops for a in op.attempts if a.status is None]
    assert refused, "no request noticed the killed process"
    assert not faults.stack.dead()


def test_the_checks_catch_planted_violations(faults: FaultEnv) -> None:
    """The checks above are not vacuous: each one reports a violation planted on purpose
    (then the plant is removed and the stores are consistent again)."""
    tag = "plant"
    catalog = faults.seed(tag)
    sku, warehouse = catalog.plenty[0], "W1"
    result = run_workload(faults, catalog, tag, lambda: iter(()), seconds=2.0, fault_after=0.5)
    assert not verify(faults, result, tag), "the run before planting is not clean"

    # a 201 whose order is missing, and a refusal while stock was plentiful
    ghost = Op("place", f"{tag}-ghost", "create_order", "", {"lines": []}, f"{tag}-o-ghost")
    ghost.attempts.append(Attempt(201, {"order_id": ghost.order_id, "status": "reserved"}))
    short = Op("place", f"{tag}-short", "create_order", "", {"lines": []}, f"{tag}-o-s", True)
    short.attempts.append(Attempt(409, {"error": "insufficient_stock"}))
    problems = check_answers(faults, [ghost, short], tag)
    assert any("201 but missing" in p for p in problems), problems
    assert any("plentiful" in p for p in problems), problems

    # Redis drifting from MySQL
    level_key = faults.gate.level_key(warehouse, sku)
    faults.redis.hincrby(level_key, "rs", 1)
    assert any(sku in p for p in gate_problems(faults)), "gate drift not reported"
    faults.reconcile(f"{tag}-repair")
    assert not check_gate(faults)

    # a ledger row that no balance reflects, and an event that never reached Kafka
    m, o = t.movements, t.outbox
    with faults.engine.begin() as conn:
        movement = conn.execute(
            m.insert().values(
                kind="receive",
                warehouse=warehouse,
                sku=sku,
                delta_on_hand=1,
                delta_reserved=0,
                on_hand_after=0,
                reserved_after=0,
                created_at=utcnow(),
            )
        ).inserted_primary_key[0]
        event = {"id": str(uuid.uuid4()), "data": {"movement_id": movement}}
        conn.execute(
            o.insert().values(
                event_id=event["id"],
                topic=topics.STOCK_CHANGED,
                event_key=sku,
                payload=json.dumps(event),
                created_at=utcnow(),
                published_at=utcnow(),
            )
        )
    try:
        assert any(sku in p for p in check_balances(faults)), "ledger drift not reported"
        problems = check_events(faults, timeout=5.0)
        assert any("never arrived" in p for p in problems), problems
    finally:
        with faults.engine.begin() as conn:
            conn.execute(o.delete().where(o.c.event_id == event["id"]))
            conn.execute(m.delete().where(m.c.id == movement))
    assert not check_balances(faults)
