"""The invariant checks after a fault run (``verify`` runs them all): the schema's guards,
balances against the ledger, every answer against MySQL, replays, Redis against MySQL, the
outbox drained and one event per committed change on Kafka."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import sqlalchemy as sa

from psi_local.invariants import balance_findings, gate_findings
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import read_topic
from tests.faults.fault_env import HTTP_TIMEOUT, FaultEnv
from tests.faults.workload import Op, RunResult
from tests.support import http, wait_until

ALLOWED_409 = {"insufficient_stock", "request_in_progress", "order_exists"}
CHECKS = {
    "ck_stock_levels_on_hand_nonnegative",
    "ck_stock_levels_reserved_nonnegative",
    "ck_stock_levels_available_nonnegative",
}


def _rows(env: FaultEnv, query: Any) -> list[Any]:
    with env.engine.connect() as conn:
        return list(conn.execute(query))


def check_schema_guards(env: FaultEnv) -> list[str]:
    """The CHECK constraints that keep available >= 0 exist and are enforced."""
    problems = []
    with env.admin.connect() as conn:
        names = set(
            conn.execute(
                sa.text(
                    "SELECT constraint_name FROM information_schema.check_constraints "
                    "WHERE constraint_schema = :db AND table_name = 'stock_levels'"
                ),
                {"db": env.database},
            ).scalars()
        )
    if not names >= CHECKS:
        problems.append(f"stock_levels CHECK constraints missing: {CHECKS - names}")
    with env.engine.connect() as conn, conn.begin() as tx:
        try:
            conn.execute(
                sa.text("UPDATE stock_levels SET reserved = on_hand + 1 ORDER BY sku LIMIT 1")
            )
            problems.append("an UPDATE making available < 0 was accepted")
        except sa.exc.DBAPIError:
            pass
        finally:
            tx.rollback()
    return problems


def check_balances(env: FaultEnv) -> list[str]:
    """available >= 0 everywhere and every balance == the sum of its ledger."""
    return balance_findings(env.engine).sample


def check_answers(env: FaultEnv, ops: list[Op], tag: str) -> list[str]:
    """Every 2xx is in MySQL (idempotency record with the same answer, its ledger rows,
    the order with its status); every definitive 4xx left no trace; no wrong refusals."""
    problems: list[str] = []
    r, m, o = t.idempotency_records, t.movements, t.orders
    records = {
        row.idempotency_key: json.loads(row.response)
        for row in _rows(env, sa.select(r.c.idempotency_key, r.c.response))
    }
    moved = Counter(row.idempotency_key for row in _rows(env, sa.select(m.c.idempotency_key)))
    statuses = {row.order_id: row.status for row in _rows(env, sa.select(o.c.order_id, o.c.status))}
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(
        env, sa.select(t.order_lines.c.order_id, t.order_lines.c.sku, t.order_lines.c.qty)
    ):
        lines[row.order_id].append({"sku": row.sku, "qty": int(row.qty)})
    closing: dict[str, Op] = {op.order_id: op for op in ops if op.kind in ("ship", "cancel")}
    placed = {op.order_id for op in ops if op.kind == "place"}
    for op in ops:
        for attempt in op.attempts:
            if attempt.status is not None and attempt.status >= 500 and attempt.status != 503:
                problems.append(f"{op.kind} {op.key}: {attempt.status} {attempt.body}")
            if attempt.status == 409 and attempt.code not in ALLOWED_409:
                problems.append(f"{op.kind} {op.key}: wrong 409 {attempt.body}")
            if (
                attempt.status == 409
                and attempt.code == "insufficient_stock"
                and (op.plenty or op.kind in ("ship", "cancel"))
            ):
                problems.append(f"{op.kind} {op.key}: refused while stock was plentiful")
            if attempt.status is not None and attempt.status in (400, 404, 413, 422):
                problems.append(f"{op.kind} {op.key}: {attempt.status} {attempt.body}")
        n_lines = len(op.body.get("lines", [])) or None
        if op.succeeded:
            if records.get(op.key) != op.final.body:
                problems.append(f"{op.kind} {op.key}: 2xx answer not recorded as given")
            expected_moves = n_lines or len(lines.get(op.order_id or "", []))
            if moved.get(op.key, 0) != expected_moves:
                problems.append(
                    f"{op.kind} {op.key}: {moved.get(op.key, 0)} ledger rows, "
                    f"expected {expected_moves}"
                )
        elif op.rejected:
            if op.key in records or moved.get(op.key):
                problems.append(f"{op.kind} {op.key}: refused ({op.final.status}) but recorded")
            if op.kind == "place" and op.order_id in statuses:
                problems.append(f"order {op.order_id} refused but exists")
        elif op.final.status is not None and not op.final.ambiguous and op.key in records:
            # a 503 means "retry with the same key": the retry's definitive answer must be
            # the truth, and an earlier attempt did commit
            problems.append(
                f"{op.kind} {op.key}: retried after an attempt without an answer to "
                f"{op.final.status} {op.final.code}, but it had committed"
            )
        if op.kind != "place":
            continue
        oid = op.order_id
        assert oid is not None
        if op.succeeded:
            body = op.final.body
            if oid not in statuses:
                problems.append(f"order {oid}: 201 but missing from MySQL")
                continue
            if body.get("order_id") != oid or body.get("status") != "reserved":
                problems.append(f"order {oid}: odd 201 body {body}")
            if sorted(lines[oid], key=lambda x: x["sku"]) != op.body["lines"]:
                problems.append(f"order {oid}: lines {lines[oid]} != asked {op.body['lines']}")
            close = closing.get(oid)
            if close is None:
                wanted = {"reserved"}
            else:
                target = "shipped" if close.kind == "ship" else "cancelled"
                wanted = {target} if close.succeeded else {"reserved", target}
            if statuses[oid] not in wanted:
                problems.append(f"order {oid}: status {statuses[oid]} not in {wanted}")
        elif oid in statuses and not op.ambiguous and op.final.code != "order_exists":
            problems.append(f"order {oid}: exists after {op.final.status} {op.final.body}")
    for oid in set(statuses) - placed:
        if oid.startswith(f"{tag}-o"):
            problems.append(f"order {oid} exists but no client placed it")
    return problems


def check_replays(env: FaultEnv, ops: list[Op], most: int = 60) -> list[str]:
    """After the fault, a replay of a request that succeeded gets the same status and body,
    marked as a replay (the gate may have lost its markers meanwhile)."""
    problems: list[str] = []
    with http() as session:
        for op in [op for op in ops if op.succeeded][:most]:
            reply = session.post(
                env.url(op.function, op.path),
                json=op.body,
                headers={"Idempotency-Key": op.key},
                timeout=HTTP_TIMEOUT,
            )
            body = reply.json() if reply.content else None
            if (reply.status_code, body) != (op.final.status, op.final.body):
                problems.append(
                    f"{op.kind} {op.key}: replay answered {reply.status_code} {body}, "
                    f"first {op.final.status} {op.final.body}"
                )
            elif reply.headers.get("Idempotent-Replayed") != "true":
                problems.append(f"{op.kind} {op.key}: replay not marked Idempotent-Replayed")
    return problems


def gate_problems(env: FaultEnv) -> list[str]:
    """Redis == MySQL: every balance's (on_hand, reserved, version) in the gate, every
    warehouse ready, and every held unit belongs to a registered (not yet expired) hold."""
    return gate_findings(env.engine, env.gate, settled=False).sample


def check_gate(env: FaultEnv, timeout: float = 20.0) -> list[str]:
    """Redis == MySQL after the reconcile; background rebuilds that a request started may
    still be finishing, so the comparison may take a few seconds to hold (no new reconcile)."""
    last: list[str] = []

    def agrees() -> bool:
        nonlocal last
        last = gate_problems(env)
        return not last

    with contextlib.suppress(AssertionError, TimeoutError):
        wait_until(agrees, timeout=timeout, interval=0.5, what="Redis to agree with MySQL")
    return last


def drain_outbox(env: FaultEnv, tag: str, timeout: float = 90.0) -> list[str]:
    """Wait until every outbox row is published (the relays retry after backoff; a reconcile
    every few seconds re-drives them too)."""
    o = t.outbox
    pending_query = sa.select(sa.func.count()).select_from(o).where(o.c.published_at.is_(None))
    deadline = time.monotonic() + timeout
    next_reconcile = time.monotonic() + 10.0
    round_ = 0
    pause = threading.Event()
    while True:
        pending = int(_rows(env, pending_query)[0][0])
        if pending == 0:
            return []
        if time.monotonic() >= deadline:
            rows = _rows(
                env,
                sa.select(o.c.id, o.c.topic, o.c.attempts, o.c.last_error)
                .where(o.c.published_at.is_(None))
                .limit(5),
            )
            return [f"{pending} outbox rows never published, e.g. {[tuple(r) for r in rows]}"]
        if time.monotonic() >= next_reconcile:
            round_ += 1
            env.reconcile(f"{tag}-redrive-{round_}")
            next_reconcile = time.monotonic() + 10.0
        pause.wait(0.5)


def check_events(env: FaultEnv, timeout: float = 20.0) -> list[str]:
    """Exactly one event per committed change, none lost.

    In MySQL: one ``psi.stock.changed`` outbox row per ledger row (by movement id), one
    ``psi.order.created`` per order, one shipped / cancelled row per order in that status.

    On Kafka: the embedded broker keeps records in memory, so a broker restart loses what
    was published before it. Records read from a topic are de-duplicated by CloudEvent id;
    then every record must be an outbox row of that topic (nothing invented), no change
    may have two distinct events, and every outbox row with an id above ``env.watermark``
    (taken right after the last broker restart, so those rows were committed, and hence
    published, after the broker came back) must be on its topic. Rows at or below the
    watermark are covered by the ``published_at`` check of ``drain_outbox``.
    """
    o, m, orders = t.outbox, t.movements, t.orders
    problems: list[str] = []
    rows = _rows(env, sa.select(o.c.id, o.c.event_id, o.c.topic, o.c.payload))
    by_topic: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    recent: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_topic[row.topic][row.event_id] = json.loads(row.payload)
        if row.id > env.watermark:
            recent[row.topic].add(row.event_id)
    movement_ids = sorted(int(row.id) for row in _rows(env, sa.select(m.c.id)))
    changed = Counter(e["data"]["movement_id"] for e in by_topic[topics.STOCK_CHANGED].values())
    if sorted(changed) != movement_ids or any(n != 1 for n in changed.values()):
        problems.append(
            f"{len(movement_ids)} ledger rows but {sum(changed.values())} stock.changed rows "
            f"for {len(changed)} movements"
        )
    status_count = Counter(row.status for row in _rows(env, sa.select(orders.c.status)))
    order_events = {
        topics.ORDER_CREATED: sum(status_count.values()),
        topics.ORDER_SHIPPED: status_count["shipped"],
        topics.ORDER_CANCELLED: status_count["cancelled"],
        topics.ORDER_EXPIRED: status_count["expired"],
    }
    for topic, wanted in order_events.items():
        per_order = Counter(e["data"]["order_id"] for e in by_topic[topic].values())
        if sum(per_order.values()) != wanted or any(n != 1 for n in per_order.values()):
            problems.append(f"{topic}: {sum(per_order.values())} outbox rows, expected {wanted}")
    subjects = {topics.STOCK_CHANGED: "movement_id", topics.STOCK_LOW: None}
    subjects.update((topic, "order_id") for topic in order_events)
    for topic, subject in subjects.items():
        expected = recent.get(topic, set())
        seen = _read_events(env, topic, expected, timeout) if expected else {}
        missing = expected - set(seen)
        if missing:
            problems.append(f"{topic}: {len(missing)} of {len(expected)} events never arrived")
        invented = set(seen) - set(by_topic[topic])
        if invented:
            problems.append(f"{topic}: {len(invented)} events not in the outbox")
        if subject is not None:
            per_change = Counter(doc.get("data", {}).get(subject) for doc in seen.values())
            doubled = [k for k, n in per_change.items() if n > 1]
            if doubled:
                problems.append(f"{topic}: changes with two distinct events: {doubled[:5]}")
    return problems


def _read_events(
    env: FaultEnv, topic: str, expected: set[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Events read from ``topic`` (every partition, from the start), by CloudEvent id,
    once all ``expected`` ids are among them or ``timeout`` passed."""
    seen: dict[str, dict[str, Any]] = {}
    done = [0]

    def complete(records: list[Any]) -> bool:
        for record in records[done[0] :]:
            try:
                doc = json.loads(record.value)
            except ValueError:
                doc = {"id": f"<not JSON at {record.partition}:{record.offset}>"}
            seen[str(doc.get("id"))] = doc
        done[0] = len(records)
        return expected <= set(seen)

    read_topic(env.stack.kafka_bootstrap, topic, until=complete, timeout=timeout)
    return seen


def verify(env: FaultEnv, result: RunResult, tag: str) -> dict[str, list[str]]:
    """All checks after a fault: reconcile once, then compare everything."""
    report: dict[str, list[str]] = {}
    report["sampling"] = [f"negative balance sampled: {row}" for row in result.negative_rows]
    if result.samples < 10:
        report["sampling"].append(f"only {result.samples} samples taken")
    report["schema"] = check_schema_guards(env)
    report["reconcile"] = []
    answer = env.reconcile(f"{tag}-reconcile")
    if answer.get("checked", 0) < 1:
        report["reconcile"].append(f"reconcile checked nothing: {answer}")
    report["balances"] = check_balances(env)
    report["answers"] = check_answers(env, result.ops, tag)
    report["replays"] = check_replays(env, result.ops)
    report["gate"] = check_gate(env)
    report["outbox"] = drain_outbox(env, tag)
    report["events"] = check_events(env)
    return {k: v for k, v in report.items() if v}
