"""Workload, fault injectors and invariant checks shared by the fault tests.

Clients (threads, bounded in time and count) place, ship and cancel orders, receive and issue
stock over HTTP. A request that fails because of the fault (connection refused or reset,
503, 409 ``request_in_progress``) is retried with the SAME Idempotency-Key a bounded number
of times, so most keys end with a definitive answer that the checks can hold against MySQL.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
import sqlalchemy as sa

from psi_local.invariants import balance_findings, gate_findings
from psi_local.stack import LocalStack
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import read_topic
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.domain.model import utcnow
from tests.conftest import PrivateRedis
from tests.support import http, wait_until

HTTP_TIMEOUT = 15.0
WAREHOUSES = ("W1", "W2")
PLENTY_UNITS = 1_000_000  # never short: in-flight demand is a few hundred units at most
SCARCE_UNITS = 6  # runs out now and then: insufficient_stock is exercised too
MAX_ATTEMPTS = 8
RETRY_WINDOW = 30.0  # seconds one operation may spend on retries
AMBIGUOUS_ERRORS = {"request_in_progress"}
ALLOWED_409 = {"insufficient_stock", "request_in_progress", "order_exists"}
CHECKS = {
    "ck_stock_levels_on_hand_nonnegative",
    "ck_stock_levels_reserved_nonnegative",
    "ck_stock_levels_available_nonnegative",
}


@dataclass
class Attempt:
    status: int | None  # None: no HTTP answer (refused, reset, timeout)
    body: Any
    error: str | None = None
    degraded: bool = False
    at: float = 0.0  # time.monotonic() when the answer came

    @property
    def code(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None

    @property
    def ambiguous(self) -> bool:
        """The request may or may not have taken effect."""
        return (
            self.status is None
            or self.status >= 500
            or (self.status == 409 and self.code in AMBIGUOUS_ERRORS)
        )


@dataclass
class Op:
    kind: str  # place | ship | cancel | receive | issue
    key: str
    function: str
    path: str
    body: dict[str, Any]
    order_id: str | None = None
    plenty: bool = False  # every line is a never-short SKU
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def succeeded(self) -> bool:
        status = self.final.status
        return status is not None and 200 <= status < 300

    @property
    def ambiguous(self) -> bool:
        """No definitive answer, or an earlier attempt may have committed."""
        return any(a.ambiguous for a in self.attempts)

    @property
    def rejected(self) -> bool:
        """A definitive 4xx for a key no earlier attempt can have committed."""
        status = self.final.status
        return status is not None and 400 <= status < 500 and not self.ambiguous


@dataclass
class FaultEnv:
    stack: LocalStack
    private_redis: PrivateRedis
    database_url: str
    database: str
    engine: sa.Engine
    admin: sa.Engine
    redis: redis.Redis
    gate: RedisGate
    watermark: int = 0  # outbox id when the broker last came back (0: never restarted)
    broker_restarts: int = 0

    # -- HTTP
    def url(self, function: str, path: str = "") -> str:
        return self.stack.url(function) + path.lstrip("/")

    def reconcile(self, run_key: str, timeout: float = 60.0) -> dict[str, Any]:
        """One reconcile run over HTTP (retried on 503 / no answer, bounded)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        with http() as session:
            while time.monotonic() < deadline:
                try:
                    reply = session.post(
                        self.url("reconcile"),
                        json={"run_key": run_key},
                        headers={"Idempotency-Key": f"reconcile-{run_key}"},
                        timeout=HTTP_TIMEOUT * 2,
                    )
                except requests.RequestException as exc:
                    last = repr(exc)
                else:
                    if reply.status_code == 200:
                        return dict(reply.json())
                    last = (reply.status_code, reply.text)
                    if reply.status_code < 500 and reply.json().get("error") != (
                        "request_in_progress"
                    ):
                        break
                threading.Event().wait(0.5)
        raise AssertionError(f"reconcile {run_key} did not answer 200: {last}")

    # -- catalog and stock, written for each test
    def seed(self, tag: str) -> Catalog:
        catalog = Catalog(
            plenty=[f"{tag}-P{i}" for i in range(3)], scarce=[f"{tag}-S{i}" for i in range(2)]
        )
        now = utcnow()
        with self.engine.begin() as conn:
            existing = set(conn.execute(sa.select(t.warehouses.c.code)).scalars())
            missing = [w for w in WAREHOUSES if w not in existing]
            if missing:
                conn.execute(
                    t.warehouses.insert(),
                    [{"code": w, "name": w, "created_at": now, "updated_at": now} for w in missing],
                )
            conn.execute(
                t.products.insert(),
                [
                    {
                        "sku": sku,
                        "name": sku,
                        "reorder_point": 5,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for sku in catalog.all
                ],
            )
        with http() as session:
            for warehouse in WAREHOUSES:
                lines = [{"sku": s, "qty": PLENTY_UNITS} for s in catalog.plenty]
                lines += [{"sku": s, "qty": SCARCE_UNITS} for s in catalog.scarce]
                body = {"warehouse": warehouse, "lines": lines, "reason": "opening stock"}
                reply = session.post(
                    self.url("stock_in"),
                    json=body,
                    headers={"Idempotency-Key": f"{tag}-open-{warehouse}"},
                    timeout=HTTP_TIMEOUT,
                )
                assert reply.status_code == 201, reply.text
        return catalog

    # -- faults
    def flushall(self) -> None:
        """FLUSHALL of the PRIVATE redis-server only."""
        assert self.redis.connection_pool.connection_kwargs["port"] == self.private_redis.port
        self.redis.flushall()

    def restart_redis(self) -> None:
        self.private_redis.stop()
        self.private_redis.start()

    def kill_db_connections(self) -> int:
        """KILL every MariaDB connection whose current database is the test's database."""
        killed = 0
        with self.admin.connect() as conn:
            ids = conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = :db AND id <> CONNECTION_ID()"
                ),
                {"db": self.database},
            ).scalars()
            for connection_id in list(ids):
                with contextlib.suppress(sa.exc.DBAPIError):  # gone already
                    conn.execute(sa.text(f"KILL {int(connection_id)}"))
                    killed += 1
        return killed

    def restart_broker(self, down_for: float = 0.0) -> list[str]:
        """Stop the broker (every record is lost: memory storage), leave it down for
        ``down_for`` seconds, start it again on its port with its topics (``restart()``),
        and remember the outbox watermark (see ``check_events``).

        While the broker is down every function process is SIGKILLed and started again:
        the embedded broker also forgets the idempotent producer ids it handed out and
        numbers them from 1 again, so a producer created before the restart can share its
        id with one created after it, and the broker then acks the older producer's records
        as duplicates and drops them (reported; Apache Kafka keeps producer ids). Fresh
        processes have no producer from before the restart."""
        broker = self.stack.broker
        assert broker is not None, "the stack runs no embedded broker"
        notes = []
        broker.stop(graceful=False)
        notes.append("broker stopped")
        started = time.monotonic()
        for name in list(self.stack.processes):
            self.stack.kill_function(name)
        for name in list(self.stack.processes):
            self.stack.restart_function(name)
        notes.append(f"functions restarted in {time.monotonic() - started:.1f}s")
        threading.Event().wait(max(0.0, down_for - (time.monotonic() - started)))
        broker.restart()
        notes.append("broker started again")
        with self.engine.connect() as conn:
            self.watermark = int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.outbox.c.id), 0))).scalar()
            )
        self.broker_restarts += 1
        return notes


@dataclass
class Catalog:
    plenty: list[str]
    scarce: list[str]

    @property
    def all(self) -> list[str]:
        return self.plenty + self.scarce


# ---- the workload ------------------------------------------------------------------------


class Sampler:
    """Samples MySQL every ``interval`` s while the workload runs: no balance may ever have
    on_hand < 0, reserved < 0 or reserved > on_hand (available < 0)."""

    def __init__(self, env: FaultEnv, interval: float = 0.1) -> None:
        self.env = env
        self.interval = interval
        self.samples = 0
        self.errors = 0
        self.bad: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        query = sa.text(
            f"SELECT warehouse, sku, on_hand, reserved FROM `{self.env.database}`.stock_levels "
            "WHERE on_hand < 0 OR reserved < 0 OR reserved > on_hand"
        )
        while not self._stop.is_set():
            try:
                with self.env.admin.connect() as conn:
                    self.bad.extend(tuple(row) for row in conn.execute(query))
                self.samples += 1
            except sa.exc.DBAPIError:
                self.errors += 1
            self._stop.wait(self.interval)


class Client:
    def __init__(
        self, env: FaultEnv, catalog: Catalog, n: int, tag: str, seed: int, deadline: float
    ) -> None:
        self.env = env
        self.catalog = catalog
        self.n = n
        self.tag = tag
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.ops: list[Op] = []
        self.open_orders: list[str] = []
        self.placed = 0

    def run(self, max_ops: int) -> list[Op]:
        with http() as session:
            while time.monotonic() < self.deadline and len(self.ops) < max_ops:
                op = self._next_op()
                self._send(session, op)
                self.ops.append(op)
                if op.kind == "place" and op.succeeded:
                    assert op.order_id is not None
                    self.open_orders.append(op.order_id)
        return self.ops

    def _lines(self, warehouse_skus: list[str]) -> list[dict[str, Any]]:
        skus = self.rng.sample(warehouse_skus, self.rng.choice((1, 1, 2)))
        return [{"sku": sku, "qty": self.rng.randint(1, 3)} for sku in sorted(skus)]

    def _next_op(self) -> Op:
        roll = self.rng.random()
        warehouse = self.rng.choice(WAREHOUSES)
        key = f"{self.tag}-c{self.n}-{len(self.ops)}-{uuid.uuid4().hex[:8]}"
        if self.open_orders and roll < 0.35:
            order_id = self.open_orders.pop(self.rng.randrange(len(self.open_orders)))
            if self.rng.random() < 0.5:
                body = {"order_id": order_id, "reference": f"DN-{key}"}
                return Op("ship", key, "stock_out", "", body, order_id)
            return Op("cancel", key, "create_order", f"{order_id}/cancel", {}, order_id)
        if roll < 0.45:
            sku = self.rng.choice(self.catalog.scarce)
            lines = [{"sku": sku, "qty": self.rng.randint(1, 3)}]
            body = {"warehouse": warehouse, "lines": lines, "reason": "replenish"}
            return Op("receive", key, "stock_in", "", body)
        if roll < 0.5:
            sku = self.rng.choice(self.catalog.plenty)
            body = {"warehouse": warehouse, "lines": [{"sku": sku, "qty": 1}], "reason": "scrap"}
            return Op("issue", key, "stock_out", "", body, plenty=True)
        plenty = self.rng.random() < 0.7
        lines = self._lines(self.catalog.plenty if plenty else self.catalog.all)
        order_id = f"{self.tag}-o{self.n}-{self.placed}"
        self.placed += 1
        body = {"order_id": order_id, "warehouse": warehouse, "lines": lines, "customer": "fault"}
        every_plenty = all(line["sku"] in self.catalog.plenty for line in lines)
        return Op("place", key, "create_order", "", body, order_id, plenty=every_plenty)

    def _send(self, session: requests.Session, op: Op) -> None:
        url = self.env.url(op.function, op.path)
        give_up = time.monotonic() + RETRY_WINDOW
        pause = threading.Event()
        for attempt in range(MAX_ATTEMPTS):
            try:
                reply = session.post(
                    url, json=op.body, headers={"Idempotency-Key": op.key}, timeout=HTTP_TIMEOUT
                )
                try:
                    body = reply.json()
                except ValueError:
                    body = reply.text
                degraded = reply.headers.get("X-PSI-Degraded") == "true"
                op.attempts.append(
                    Attempt(reply.status_code, body, degraded=degraded, at=time.monotonic())
                )
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                op.attempts.append(Attempt(None, None, error, at=time.monotonic()))
            if not op.final.ambiguous or time.monotonic() >= give_up:
                return
            pause.wait(min(0.1 * 2**attempt, 1.5) * (0.5 + self.rng.random()))


@dataclass
class RunResult:
    ops: list[Op]
    samples: int
    sample_errors: int
    negative_rows: list[tuple[Any, ...]]
    fault_notes: list[str]

    def statuses(self) -> Counter[str]:
        return Counter(
            f"{op.kind}:{a.status}:{a.code or ''}" if a.status else f"{op.kind}:no-answer"
            for op in self.ops
            for a in op.attempts
        )


def run_workload(
    env: FaultEnv,
    catalog: Catalog,
    tag: str,
    fault: Callable[[], Iterable[str]],
    *,
    clients: int = 8,
    seconds: float = 10.0,
    fault_after: float = 3.0,
    max_ops_per_client: int = 400,
) -> RunResult:
    """Run ``clients`` threads for ``seconds``; call ``fault`` (it may block while it heals
    the fault, yielding notes) after ``fault_after`` seconds, from this thread."""
    deadline = time.monotonic() + seconds
    workers = [
        Client(env, catalog, n, tag, seed=zlib.crc32(f"{tag}-{n}".encode()), deadline=deadline)
        for n in range(clients)
    ]
    results: dict[int, list[Op]] = {}
    errors: list[BaseException] = []

    def work(client: Client) -> None:
        try:
            results[client.n] = client.run(max_ops_per_client)
        except BaseException as exc:  # surfaced below, never swallowed
            errors.append(exc)

    notes: list[str] = []
    with Sampler(env) as sampler:
        threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in workers]
        for thread in threads:
            thread.start()
        threading.Event().wait(fault_after)
        notes.extend(fault())
        for thread in threads:
            thread.join(seconds + RETRY_WINDOW + 60)
        assert not any(th.is_alive() for th in threads), "a client thread did not finish"
    if errors:
        raise errors[0]
    ops = [op for n in sorted(results) for op in results[n]]
    return RunResult(ops, sampler.samples, sampler.errors, sampler.bad, notes)


# ---- the checks -------------------------------------------------------------------------


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
