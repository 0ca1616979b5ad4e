"""What every scenario shares: its own stores, seeding, a multi-process client runner,
latency statistics, invariant checks and the result record written to JSON.

Each scenario gets a fresh MariaDB database (`psi_bench_<hex>`, dropped afterwards) and a
fresh Redis key prefix (`psib<hex>`, its keys deleted afterwards). Clients are separate
processes (fork where available, else spawn); each builds its own engine and Redis client
after it starts, then waits on a start barrier so that all of them begin together.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import random
import socket
import threading
import time
import traceback
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil
import redis
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from psi_local.invariants import balance_findings, gate_findings
from shared_lib.adapters import schema
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.domain.errors import InsufficientStock
from shared_lib.domain.model import Line, PlaceOrder, RequestMeta
from shared_lib.services import Deps, place_order
from shared_lib.services.cache import rebuild_all

log = logging.getLogger("bench")

MYSQL_SERVER = os.environ.get(
    "PSI_BENCH_MYSQL_URL",
    os.environ.get("PSI_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306"),
)
REDIS_URL = os.environ.get(
    "PSI_BENCH_REDIS_URL", os.environ.get("PSI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
)
# generous: 64 client processes share 2 cores, and a slow reply must not look like an outage
REDIS_TIMEOUT = 5.0
BARRIER_TIMEOUT = 180.0
MAX_ERRORS_PER_CLIENT = 200
SEED_BATCH = 5_000


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    out: Path
    mysql_server: str = MYSQL_SERVER
    redis_url: str = REDIS_URL


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status of one GET on a new loopback connection; None when nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def sku_name(n: int) -> str:
    """The n-th seeded SKU (1-based); `seed_levels` builds the same names in SQL."""
    return f"S{n:07d}"


# ---------------------------------------------------------------------------- stores


class Stores:
    """A fresh, migrated MariaDB database and a Redis key prefix for one scenario."""

    def __init__(self, cfg: BenchConfig, label: str) -> None:
        self.cfg = cfg
        token = uuid.uuid4().hex[:10]
        self.database = f"psi_bench_{label}_{token}"[:64]
        self.url = f"{cfg.mysql_server}/{self.database}?charset=utf8mb4"
        self.redis_url = cfg.redis_url
        self.prefix = f"psib{token}"
        self._created = False

    def _on_server(self, statement: str) -> None:
        admin = sa.create_engine(self.cfg.mysql_server + "/", poolclass=NullPool)
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(statement))
        finally:
            admin.dispose()

    def __enter__(self) -> Stores:
        self._on_server(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        self._created = True
        schema.upgrade(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._created:
            self._on_server(f"DROP DATABASE IF EXISTS `{self.database}`")
            self._created = False
        client = self.redis()
        try:
            delete_prefix(client, self.prefix)
        finally:
            client.close()

    def engine(self) -> Engine:
        """An engine for the parent process: no pooled connection survives into a fork."""
        return sa.create_engine(self.url, poolclass=NullPool)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=REDIS_TIMEOUT)

    def gate(self, client: redis.Redis | None = None) -> RedisGate:
        return RedisGate(client or self.redis(), prefix=self.prefix)

    def client_config(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "redis_url": self.redis_url, "prefix": self.prefix, **extra}


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key of one bench prefix (hash-tagged `{prefix:...}` and raw `prefix:...`)."""
    deleted = 0
    for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=5_000):
            batch.append(key)
            if len(batch) >= 5_000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    return deleted


def has_sequence_engine(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT seq FROM seq_1_to_2")
        return True
    except sa.exc.DBAPIError:
        return False


def seed_levels(
    engine: Engine,
    warehouses: Sequence[str],
    n_skus: int,
    on_hand: int,
    *,
    extra_skus: Sequence[str] = (),
) -> int:
    """Warehouses, products S0000001.., one balance per (sku, warehouse) holding `on_hand`,
    and its receive movement (so balance == ledger sum). Bulk INSERT ... SELECT from
    MariaDB's sequence engine; multi-row INSERT batches where that engine is missing."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            t.warehouses.insert(),
            [
                {"code": w, "name": f"warehouse {w}", "created_at": now, "updated_at": now}
                for w in warehouses
            ],
        )
        if extra_skus:
            conn.execute(t.products.insert(), [_product(s, now) for s in extra_skus])
    if n_skus and has_sequence_engine(engine):
        for start in range(1, n_skus + 1, 250_000):
            stop = min(n_skus, start + 249_999)
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO products (sku, name, unit, reorder_point, track_inventory,"
                    " created_at, updated_at)"
                    " SELECT CONCAT('S', LPAD(seq, 7, '0')), CONCAT('product ', seq), 'pcs', 0,"
                    f" 1, NOW(6), NOW(6) FROM seq_{start}_to_{stop}"
                )
    else:
        for start in range(1, n_skus + 1, SEED_BATCH):
            rows = [
                _product(sku_name(n), now)
                for n in range(start, min(n_skus + 1, start + SEED_BATCH))
            ]
            with engine.begin() as conn:
                conn.execute(t.products.insert(), rows)
    levels = 0
    for warehouse in warehouses:
        with engine.begin() as conn:
            levels += conn.execute(
                sa.text(
                    "INSERT INTO stock_levels (warehouse, sku, on_hand, reserved, version,"
                    " updated_at) SELECT :wh, sku, :oh, 0, 1, NOW(6) FROM products"
                ),
                {"wh": warehouse, "oh": on_hand},
            ).rowcount
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO movements (kind, warehouse, sku, delta_on_hand, delta_reserved,"
                    " on_hand_after, reserved_after, reason, actor, created_at)"
                    " SELECT 'receive', warehouse, sku, on_hand, 0, on_hand, 0, 'bench seed',"
                    " 'bench', NOW(6) FROM stock_levels WHERE warehouse = :wh"
                ),
                {"wh": warehouse},
            )
    return levels


def _product(sku: str, now: datetime) -> dict[str, Any]:
    return {"sku": sku, "name": f"product {sku}", "created_at": now, "updated_at": now}


def load_gate(stores: Stores) -> int:
    """Rebuild the gate from the database the way `psi cache rebuild` does."""
    engine = make_engine(stores.url, pool_size=1)
    gate = stores.gate()
    try:
        return rebuild_all(SqlTransactions(engine), gate)
    finally:
        gate.close()
        engine.dispose()


# ---------------------------------------------------------------------------- invariants


def ledger_check(engine: Engine) -> dict[str, int]:
    """Balances vs ledger, added up by the database: mismatches and negative balances."""
    found = balance_findings(engine)
    return {
        "levels_checked": found.checked,
        "ledger_mismatches": found.broken["ledger"] + found.broken["ledger_orphan"],
        "negative_available": found.broken["negative"],
    }


def gate_check(
    engine: Engine,
    gate: RedisGate,
    *,
    only_skus: Collection[str] | None = None,
    settled: bool = True,
) -> dict[str, Any]:
    """Gate == database for every balance (or those of `only_skus`), no hold left behind."""
    found = gate_findings(engine, gate, settled=settled, only_skus=only_skus)
    return {
        "gate_levels_checked": found.checked,
        "gate_mismatches": found.broken["missing"] + found.broken["mismatch"],
        "gate_holds_left": found.broken["held"] + found.broken["holds_left"],
        "gate_not_ready": found.broken["not_ready"],
        "gate_mismatch_sample": found.sample[:5],
    }


def check_invariants(
    scenario: Scenario,
    engine: Engine,
    stores: Stores,
    *,
    only_skus: Collection[str] | None = None,
) -> None:
    """Ledger == balances, nothing negative, gate == database, no hold left: recorded as checks."""
    ledger = ledger_check(engine)
    gate = stores.gate()
    try:
        cached = gate_check(engine, gate, only_skus=only_skus)
    finally:
        gate.close()
    scenario.extra["invariants"] = {**ledger, **cached}
    scenario.check("ledger_mismatches", ledger["ledger_mismatches"], 0)
    scenario.check("negative_available", ledger["negative_available"], 0)
    scenario.check("gate_mismatches", cached["gate_mismatches"], 0)
    scenario.check("gate_holds_left", cached["gate_holds_left"], 0)
    scenario.check("gate_not_ready", cached["gate_not_ready"], 0)


def count_rows(engine: Engine, table: str, where: str = "", **params: Any) -> int:
    with engine.connect() as conn:
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(conn.execute(sa.text(sql), params).scalar_one())


def level_of(engine: Engine, warehouse: str, sku: str) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT on_hand, reserved FROM stock_levels WHERE warehouse = :w AND sku = :s"),
            {"w": warehouse, "s": sku},
        ).one()
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------------------- clients


class Client(Protocol):
    """One client process's workload: `op` runs one attempt and names its outcome."""

    def op(self, i: int) -> str: ...

    def close(self) -> dict[str, int]: ...


ClientFactory = Callable[[dict[str, Any], int], Client]

DECREMENT_LUA = """
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
local qty = tonumber(ARGV[1])
if left < qty then return -1 end
return redis.call('DECRBY', KEYS[1], qty)
"""


def decrement_key(prefix: str, name: str) -> str:
    return f"{{{prefix}:raw}}:{name}"


class RawRedisDecrement:
    """The ceiling: one EVALSHA of a tiny check-and-decrement script per attempt."""

    def __init__(self, config: dict[str, Any], index: int) -> None:
        self.client = redis.Redis.from_url(config["redis_url"], socket_timeout=REDIS_TIMEOUT)
        self.sha = self.client.script_load(DECREMENT_LUA)
        self.key = config["key"]
        self.client.ping()

    def op(self, i: int) -> str:
        return "ok" if int(self.client.evalsha(self.sha, 1, self.key, 1)) >= 0 else "short"

    def close(self) -> dict[str, int]:
        self.client.close()
        return {}


class PsiOrders:
    """The product's order path: `place_order` with RedisGate + SqlTransactions, one
    single-line order of qty 1 per attempt. Counts the SQL statements and connection
    checkouts of each attempt, split by whether the attempt won or lost."""

    def __init__(self, config: dict[str, Any], index: int) -> None:
        self.engine = make_engine(config["url"], pool_size=1)
        self.client = redis.Redis.from_url(config["redis_url"], socket_timeout=REDIS_TIMEOUT)
        self.gate = RedisGate(self.client, prefix=config["prefix"])
        self.deps = Deps(tx=SqlTransactions(self.engine), gate=self.gate, journal=self.gate)
        self.warehouse: str = config["warehouse"]
        self.skus: list[str] = list(config["skus"])
        self.tag = f"{config['tag']}-{index}"
        self.rng = random.Random(f"{config.get('seed', 0)}-{index}")
        self.statements = 0
        self.checkouts = 0
        self.locked_at: int | None = None
        self.counters: Counter[str] = Counter()
        event.listen(self.engine, "before_cursor_execute", self._on_statement)
        event.listen(self.engine, "checkout", self._on_checkout)
        with self.engine.connect() as conn:  # connect before the start barrier
            conn.exec_driver_sql("SELECT 1")
        self.client.ping()
        self.statements = self.checkouts = 0

    def _on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements += 1
        if self.locked_at is None and statement.startswith("UPDATE stock_levels"):
            self.locked_at = self.statements

    def _on_checkout(self, *_: Any) -> None:
        self.checkouts += 1

    def op(self, i: int) -> str:
        sku = self.skus[0] if len(self.skus) == 1 else self.rng.choice(self.skus)
        name = f"{self.tag}-{i}"
        statements, checkouts = self.statements, self.checkouts
        self.locked_at = None
        outcome = "error"
        try:
            result = place_order(
                self.deps,
                PlaceOrder(name, self.warehouse, (Line(sku, 1),)),
                RequestMeta(name, actor="bench"),
            )
            outcome = "ok_degraded" if result.degraded else "ok"
        except InsufficientStock:
            outcome = "short"
        finally:
            side = "won" if outcome.startswith("ok") else "lost"
            self.counters[f"statements_{side}"] += self.statements - statements
            self.counters[f"checkouts_{side}"] += self.checkouts - checkouts
            if self.locked_at is not None and side == "won":
                # statements sent while the balance row is locked (the UPDATE itself and after)
                self.counters["statements_holding_row_lock"] += self.statements - self.locked_at + 1
        return outcome

    def close(self) -> dict[str, int]:
        self.gate.close()
        self.engine.dispose()
        return dict(self.counters)


@dataclass
class RunResult:
    clients: int
    wall_s: float
    outcomes: Counter[str]
    latencies_ms: dict[str, array]
    counters: Counter[str]
    errors: list[str] = field(default_factory=list)
    # CPU seconds of the run by process class: clients, mariadb, redis
    cpu_s: dict[str, float] = field(default_factory=dict)
    # milliseconds the server's transactions waited for row locks during the run
    row_lock_wait_ms: float | None = None

    @property
    def ops(self) -> int:
        return sum(self.outcomes.values())


def processes_named(*names: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "") in names]


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


class StoreMeter:
    """CPU seconds of the stores' server processes (MariaDB, Redis on this machine) and the
    row-lock waits InnoDB counted, between start and stop."""

    def __init__(self, url: str | None) -> None:
        self.classes = {
            "mariadb": processes_named("mariadbd", "mysqld"),
            "redis": processes_named("redis-server"),
        }
        self.url = url if url and url.startswith("mysql") else None
        self.before = {name: cpu_seconds(procs) for name, procs in self.classes.items()}
        self.lock_before = self._row_lock_time()

    def _row_lock_time(self) -> float | None:
        if self.url is None:
            return None
        engine = sa.create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                row = conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_time'").first()
            return float(row[1]) if row else None
        finally:
            engine.dispose()

    def stop(self) -> tuple[dict[str, float], float | None]:
        used = {n: round(cpu_seconds(p) - self.before[n], 3) for n, p in self.classes.items()}
        after = self._row_lock_time()
        waited = None if after is None or self.lock_before is None else after - self.lock_before
        return used, waited


def _context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _client_main(
    factory: ClientFactory,
    config: dict[str, Any],
    index: int,
    quota: int,
    duration: float | None,
    barrier: Any,
    results: Any,
) -> None:
    report: dict[str, Any] = {"index": index, "setup_error": None}
    client: Client | None = None
    try:
        client = factory(config, index)
    except BaseException:
        report["setup_error"] = traceback.format_exc(limit=5)
    try:
        barrier.wait(timeout=BARRIER_TIMEOUT)
    except threading.BrokenBarrierError:
        report["setup_error"] = report["setup_error"] or "start barrier broken"
    if client is None or report["setup_error"]:
        results.put(report)
        return
    latencies: dict[str, array] = {}
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    start = time.monotonic()
    cpu_start = time.process_time()
    deadline = start + duration if duration is not None else float("inf")
    i = failures = 0
    while i < quota and time.monotonic() < deadline and failures < MAX_ERRORS_PER_CLIENT:
        began = time.perf_counter()
        try:
            outcome = client.op(i)
        except Exception as exc:
            outcome = f"error:{type(exc).__name__}"
            failures += 1
            if len(errors) < 3:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
        elapsed = (time.perf_counter() - began) * 1000.0
        latencies.setdefault(outcome, array("d")).append(elapsed)
        outcomes[outcome] += 1
        i += 1
    end = time.monotonic()
    cpu = time.process_time() - cpu_start
    try:
        counters = client.close()
    except Exception:
        counters = {}
    report.update(
        start=start,
        end=end,
        latencies=latencies,
        outcomes=outcomes,
        counters=counters,
        errors=errors,
        cpu_s=cpu,
    )
    results.put(report)


def run_clients(
    factory: ClientFactory,
    config: dict[str, Any],
    *,
    clients: int,
    ops: int | None = None,
    duration: float | None = None,
    timeout: float = 600.0,
) -> RunResult:
    """Run `clients` processes at once, for `ops` attempts in total or `duration` seconds."""
    if ops is None and duration is None:
        raise ValueError("give ops or duration")
    ctx = _context()
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    cap = ops if ops is not None else 10_000_000
    quotas = [cap // clients + (1 if k < cap % clients else 0) for k in range(clients)]
    procs = [
        ctx.Process(
            target=_client_main,
            args=(factory, config, k, quotas[k], duration, barrier, results),
            name=f"bench-client-{k}",
            daemon=True,
        )
        for k in range(clients)
    ]
    for proc in procs:
        proc.start()
    reports: list[dict[str, Any]] = []
    meter: StoreMeter | None = None
    try:
        # a client that failed to start breaks the barrier; its report says why
        with contextlib.suppress(threading.BrokenBarrierError):
            meter = StoreMeter(config.get("url"))
            barrier.wait(timeout=BARRIER_TIMEOUT)
        give_up = time.monotonic() + (duration or 0.0) + timeout
        while len(reports) < clients and time.monotonic() < give_up:
            try:
                reports.append(results.get(timeout=1.0))
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        results.close()
    broken = [r["setup_error"] for r in reports if r.get("setup_error")]
    if broken or len(reports) < clients:
        detail = broken[0] if broken else f"only {len(reports)} of {clients} clients reported"
        raise RuntimeError(f"bench clients failed: {detail}")
    outcomes: Counter[str] = Counter()
    counters: Counter[str] = Counter()
    latencies: dict[str, array] = {}
    errors: list[str] = []
    for r in reports:
        outcomes.update(r["outcomes"])
        counters.update(r["counters"])
        errors.extend(r["errors"])
        for outcome, values in r["latencies"].items():
            latencies.setdefault(outcome, array("d")).extend(values)
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    cpu, waited = meter.stop() if meter is not None else ({}, None)
    cpu["clients"] = round(sum(r.get("cpu_s", 0.0) for r in reports), 3)
    return RunResult(clients, wall, outcomes, latencies, counters, errors[:10], cpu, waited)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarize(run: RunResult, *, won: Sequence[str] = ("ok", "ok_degraded")) -> dict[str, Any]:
    """ops/s, p50/p99 over all attempts, and per-outcome counts and latencies."""
    every = array("d")
    for values in run.latencies_ms.values():
        every.extend(values)
    succeeded = sum(n for o, n in run.outcomes.items() if o in won)
    errors = sum(n for o, n in run.outcomes.items() if o.startswith("error"))
    out: dict[str, Any] = {
        "clients": run.clients,
        "ops": run.ops,
        "succeeded": succeeded,
        "failed": run.ops - succeeded,
        "errors": errors,
        "wall_s": round(run.wall_s, 3),
        "ops_per_s": round(run.ops / run.wall_s, 1) if run.wall_s > 0 else None,
        "p50_ms": _ms(percentile(every, 50)),
        "p99_ms": _ms(percentile(every, 99)),
        "outcomes": dict(sorted(run.outcomes.items())),
    }
    if len(run.latencies_ms) > 1:
        out["latency_by_outcome"] = {
            o: {"p50_ms": _ms(percentile(v, 50)), "p99_ms": _ms(percentile(v, 99))}
            for o, v in sorted(run.latencies_ms.items())
        }
    if run.ops and run.cpu_s:
        per = {name: round(s / run.ops * 1000, 4) for name, s in run.cpu_s.items()}
        out["cpu_ms_per_op"] = per
        stores = per.get("mariadb", 0.0) + per.get("redis", 0.0)
        # what the stores could carry if the clients had every core: 1 / their CPU per op
        out["ceiling_ops_per_s"] = round(1000 / stores) if stores >= 0.001 else None
    if run.row_lock_wait_ms is not None and run.wall_s > 0:
        # the share of the clients' time spent waiting for a row lock
        share = run.row_lock_wait_ms / 1000 / (run.clients * run.wall_s)
        out["row_lock_wait_share"] = round(min(share, 1.0), 3)
    if run.counters:
        out["counters"] = dict(sorted(run.counters.items()))
    if run.errors:
        out["error_samples"] = run.errors
    return out


# ---------------------------------------------------------------------------- results


class Scenario:
    """The record of one scenario: variants, targets (reported) and checks (asserted)."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.params = params
        self.variants: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def check(self, name: str, actual: Any, expected: Any) -> bool:
        ok = actual == expected
        self.checks[name] = {"ok": ok, "actual": actual, "expected": expected}
        if not ok:
            log.error("%s: check %s failed: expected %r, got %r", self.name, name, expected, actual)
        return ok

    def target(self, name: str, value: float | None, required: float, op: str, what: str) -> None:
        met = value is not None and (value >= required if op == ">=" else value <= required)
        self.targets[name] = {
            "value": None if value is None else round(value, 3),
            "required": required,
            "op": op,
            "met": met,
            "what": what,
        }

    @property
    def correct(self) -> bool:
        return all(c["ok"] for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "variants": self.variants,
            "targets": self.targets,
            "checks": self.checks,
            "correct": self.correct,
            **self.extra,
        }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def machine_info(cfg: BenchConfig) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["memory_mb"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:
        pass
    engine = sa.create_engine(cfg.mysql_server + "/", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            info["mariadb_version"] = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
            wanted = (
                "innodb_flush_log_at_trx_commit",
                "innodb_buffer_pool_size",
                "log_bin",
                "sync_binlog",
                "max_connections",
            )
            rows = conn.exec_driver_sql(
                "SHOW VARIABLES WHERE Variable_name IN (" + ",".join(f"'{w}'" for w in wanted) + ")"
            ).all()
            info["mariadb_settings"] = {r[0]: r[1] for r in rows}
    finally:
        engine.dispose()
    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=REDIS_TIMEOUT)
    try:
        info["redis_version"] = client.info("server").get("redis_version")
    finally:
        client.close()
    return info


def services_reachable(cfg: BenchConfig) -> str | None:
    """None when MariaDB and Redis answer, else what is missing."""
    try:
        engine = sa.create_engine(
            cfg.mysql_server + "/", poolclass=NullPool, connect_args={"connect_timeout": 3}
        )
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:
        return f"MariaDB/MySQL at {cfg.mysql_server} is not reachable: {exc}"
    try:
        redis.Redis.from_url(cfg.redis_url, socket_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {cfg.redis_url} is not reachable: {exc}"
    return None
