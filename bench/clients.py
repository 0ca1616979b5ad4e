"""Client processes: the workloads (the product's order path, the raw Redis ceiling), how
they are run at once, timed, and summarized with the CPU of every process class."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue as queue_mod
import random
import threading
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil
import redis
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool

from bench.common import BARRIER_TIMEOUT, MAX_ERRORS_PER_CLIENT, REDIS_TIMEOUT
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.redis_journal import RedisJournal
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.domain.errors import InsufficientStock
from shared_lib.domain.model import Line, PlaceOrder, RequestMeta
from shared_lib.services import Deps, place_order


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
        self.deps = Deps(
            tx=SqlTransactions(self.engine), gate=self.gate, journal=RedisJournal(self.gate)
        )
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
