"""http: the functions as deployed. Each function runs exactly as the image runs it (gunicorn
with gunicorn.conf.py and shared_lib.wsgi: its worker model, worker count and connections;
API keys on) on MariaDB and Redis, and wrk (a load generator from Debian's packages) drives
it over keep-alive connections from its own process, whose CPU is reported.

Variants, one after the other, each on its own SKU of one fresh database:
  hello             a functions-framework hello world on the same config: the floor
  flash_sale        create-order, `stock` units, every attempt for one SKU: few win, the
                    rest are refused (409) by the gate
  hot_psi           create-order, one SKU with plenty of stock: every order wins (group
                    commit, the default)
  hot_psi_one_by_one    the same with PSI_GROUP_COMMIT=false
  hot_conditional   the classic design as a function (bench/conditional/main.py): one
                    transaction per order, conditional UPDATE + ledger INSERT
  ... x2            hot_psi and hot_conditional at two instances (two gunicorns, wrk's
                    connections split between them)
  cold_start        gunicorn start to the first 200 of /health/ready (what the platform
                    waits for), create-order and reconcile against hello, median of runs

CPU per request by process class (the functions' gunicorn processes, MariaDB, Redis, wrk)
is sampled around each measured run; "ceiling" is what the stores could carry if the
functions and the client had every core (1 / the stores' CPU per request).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.clients import (
    StoreMeter,
    cpu_seconds,
)
from bench.common import (
    BenchConfig,
    Scenario,
    free_port,
    http_status,
    ratio,
)
from bench.stores import (
    Stores,
    check_invariants,
    count_rows,
    level_of,
    load_gate,
    seed_levels,
)

ROOT = Path(__file__).resolve().parents[2]
LOAD_SCRIPT = ROOT / "bench" / "http" / "load.lua"
HELLO = "bench/hello/main.py"
BASELINE = "bench/conditional/main.py"
CREATE_ORDER = "functions/create_order/main.py"
RECONCILE = "functions/reconcile/main.py"
KEY = "bench-http-admin-key-000001"
WAREHOUSE = "W1"
PLENTY = 1_000_000_000
QUICK = {"seconds": 1, "flash_seconds": 2, "connections": 16, "stock": 100, "cold_runs": 1}
FULL = {"seconds": 15, "flash_seconds": 65, "connections": 64, "stock": 1_000, "cold_runs": 5}
FLASH_ATTEMPTS = 50_000  # at least this many in the full run
START_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # gunicorn's graceful timeout is 25 s
SKUS = {
    "flash_sale": "FLASH",
    "hot_psi": "HOT-PSI",
    "hot_psi_one_by_one": "HOT-PSI-1BY1",
    "hot_conditional": "HOT-COND",
    "hot_psi_x2": "HOT-PSI-X2",
    "hot_conditional_x2": "HOT-COND-X2",
}
# warm-up orders go to their own SKUs, so that each variant's SKU counts only its run
WARM = {"psi": "WARM-PSI", "conditional": "WARM-COND"}


@dataclass
class Instance:
    """One function as one container runs it: gunicorn, gunicorn.conf.py, shared_lib.wsgi."""

    source: str
    environ: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; seconds until /health/ready first answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PSI_", "GUNICORN"))}
        env.update(self.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            FUNCTION_SOURCE=self.source,
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{self.port}",
            PYTHONDONTWRITEBYTECODE="1",
        )
        command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
        began = time.perf_counter()
        self.process = subprocess.Popen(
            [*command, "shared_lib.wsgi:app"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = began + START_TIMEOUT
        while time.perf_counter() < deadline:
            if http_status(self.port, "/health/ready", timeout=2.0) == 200:
                return time.perf_counter() - began
            if self.process.poll() is not None:
                break
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"{self.source} did not become ready under gunicorn")

    def processes(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        return []

    def stop(self, *, graceful: bool = True) -> None:
        """As the platform stops a pod: SIGTERM, the requests in flight finish; then KILL.
        One that served nothing (a cold start) is killed at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@contextlib.contextmanager
def running(source: str, environ: dict[str, str], count: int = 1) -> Iterator[list[Instance]]:
    instances = [Instance(source, environ) for _ in range(count)]
    try:
        for instance in instances:
            instance.start()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


class CpuMeter:
    """CPU seconds by process class over one measured run."""

    def __init__(self, functions: Sequence[Instance]) -> None:
        self.functions = [p for i in functions for p in i.processes()]
        self.before = cpu_seconds(self.functions)
        self.stores = StoreMeter(None)

    def seconds(self, client: float) -> dict[str, float]:
        used, _ = self.stores.stop()
        used["functions"] = round(cpu_seconds(self.functions) - self.before, 3)
        used["client"] = round(client, 3)
        return used


def wrk(
    instances: Sequence[Instance],
    *,
    connections: int,
    seconds: float,
    body: dict[str, Any] | None = None,
    key: str = KEY,
) -> dict[str, Any]:
    """One wrk per instance, all at once, the connections split between them: POST ``body``
    (each request with its own Idempotency-Key), or GET / without one."""
    method = "POST" if body else "GET"
    run = uuid.uuid4().hex[:8]
    share = max(1, connections // len(instances))
    meter = CpuMeter(instances)
    procs = []
    for n, instance in enumerate(instances):
        command = [
            "wrk", "-t2", f"-c{share}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(LOAD_SCRIPT), instance.url, "--",
            method, json.dumps(body, separators=(",", ":")) if body else "", key, f"{run}{n}",
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    client = 0.0
    reports: list[dict[str, Any]] = []
    refusals: list[str] = []
    for proc in procs:
        handle = psutil.Process(proc.pid)
        last = 0.0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                times = handle.cpu_times()
                last = times.user + times.system
            time.sleep(0.05)
        client += last
        out, err = proc.communicate()
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed: {err.decode()[-300:]}")
        reports.append(json.loads(lines[-1]))
        refusals.extend(ln for ln in err.decode().splitlines() if ln.startswith("status "))
    cpu = meter.seconds(client)
    requests = sum(r["requests"] for r in reports)
    duration = max(r["duration_us"] for r in reports) / 1e6
    result: dict[str, Any] = {
        "instances": len(instances),
        "connections": share * len(instances),
        "requests": requests,
        "duration_s": round(duration, 2),
        "requests_per_s": round(sum(r["requests"] / (r["duration_us"] / 1e6) for r in reports)),
        "ok": sum(r["ok"] for r in reports),
        "refused": sum(r["refused"] for r in reports),
        "other": sum(r["other"] for r in reports),
        "socket_errors": sum(r["socket_errors"] for r in reports),
        "p50_ms": max(r["p50_ms"] for r in reports),
        "p99_ms": max(r["p99_ms"] for r in reports),
        "cpu_s": cpu,
        "refusals_seen": sorted(set(refusals))[:5],
    }
    if requests:
        per = {name: round(s / requests * 1000, 3) for name, s in cpu.items()}
        result["cpu_ms_per_request"] = per
        stores = per["mariadb"] + per["redis"]
        # no ceiling for what does not use the stores (the hello world)
        result["ceiling_requests_per_s"] = round(1000 / stores) if stores >= 0.01 else None
    return result


def order(sku: str) -> dict[str, Any]:
    return {"warehouse": WAREHOUSE, "lines": [{"sku": sku, "qty": 1}]}


def have_wrk() -> str | None:
    return shutil.which("wrk")


def run(cfg: BenchConfig) -> Scenario:
    size = QUICK if cfg.quick else FULL
    scenario = Scenario("http", {**size, "warehouse": WAREHOUSE, "load_generator": "wrk"})
    if have_wrk() is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    connections, seconds = size["connections"], size["seconds"]
    data_dir = tempfile.mkdtemp(prefix="psi-bench-http-")
    try:
        with Stores(cfg, "http") as stores:
            engine = stores.engine()
            skus = [*SKUS.values(), *WARM.values()]
            seed_levels(engine, [WAREHOUSE], 0, PLENTY, extra_skus=skus)
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "UPDATE stock_levels SET on_hand = %s WHERE sku = %s",
                    (size["stock"], SKUS["flash_sale"]),
                )
                conn.exec_driver_sql(
                    "UPDATE movements SET delta_on_hand = %s, on_hand_after = %s WHERE sku = %s",
                    (size["stock"], size["stock"], SKUS["flash_sale"]),
                )
            load_gate(stores)
            environ = {
                "PSI_DATABASE_URL": stores.url,
                "PSI_REDIS_URL": stores.redis_url,
                "PSI_REDIS_PREFIX": stores.prefix,
                "PSI_API_KEYS": f"{KEY}=admin",
                "PSI_DATA_DIR": data_dir,
                "PSI_LOG_LEVEL": "WARNING",
            }

            def measure(
                variant: str, source: str, body: dict[str, Any] | None, count: int = 1, **env: str
            ) -> dict[str, Any]:
                with running(source, {**environ, **env}, count) as instances:
                    # warm, as a container that has served is: imports done, pools filled
                    warm_sku = WARM["conditional" if source == BASELINE else "psi"]
                    warm_body = order(warm_sku) if body else None
                    wrk(instances, connections=connections, seconds=1, body=warm_body)
                    result = wrk(
                        instances,
                        connections=connections,
                        seconds=size["flash_seconds"] if variant == "flash_sale" else seconds,
                        body=body,
                    )
                scenario.variants[variant] = result
                scenario.check(f"{variant}.errors", result["other"] + result["socket_errors"], 0)
                return result

            measure("hello", HELLO, None)
            flash = measure("flash_sale", CREATE_ORDER, order(SKUS["flash_sale"]))
            for variant, source, count, env in (
                ("hot_psi", CREATE_ORDER, 1, {}),
                ("hot_psi_one_by_one", CREATE_ORDER, 1, {"PSI_GROUP_COMMIT": "false"}),
                ("hot_conditional", BASELINE, 1, {}),
                ("hot_psi_x2", CREATE_ORDER, 2, {}),
                ("hot_conditional_x2", BASELINE, 2, {}),
            ):
                measure(variant, source, order(SKUS[variant]), count, **env)

            _check_winners(scenario, engine, size["stock"], connections)
            check_invariants(
                scenario,
                engine,
                stores,
                only_skus={WARM["psi"], *(SKUS[v] for v in SKUS if "conditional" not in v)},
            )
            engine.dispose()

            cold = _cold_start(environ, size["cold_runs"], warm_first=not cfg.quick)
            scenario.extra["cold_start"] = cold
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    v = scenario.variants
    losers = ratio(flash["requests_per_s"], v["hello"]["requests_per_s"])
    scenario.target("flash_sale_vs_hello", losers, 0.7, ">=", "flash_sale requests/s / hello")
    scenario.check("flash_sale.attempts_enough", flash["requests"] >= _attempts(cfg), True)
    for suffix in ("", "_x2"):
        scenario.target(
            f"hot_psi{suffix}_vs_conditional",
            ratio(v[f"hot_psi{suffix}"]["ok"], v[f"hot_conditional{suffix}"]["ok"]),
            2.0,
            ">=",
            f"hot_psi{suffix} winners / hot_conditional{suffix} winners (same seconds)",
        )
    scenario.target(
        "group_commit_vs_one_by_one",
        ratio(v["hot_psi"]["ok"], v["hot_psi_one_by_one"]["ok"]),
        1.0,
        ">=",
        "hot_psi winners / hot_psi_one_by_one winners",
    )
    for function in ("create_order", "reconcile"):
        scenario.target(
            f"cold_start_{function}_vs_hello",
            ratio(cold[function]["median_ms"], cold["hello"]["median_ms"]),
            1.5,
            "<=",
            f"{function} median ms to the first ready 200 / hello's",
        )
    return scenario


def _attempts(cfg: BenchConfig) -> int:
    return 1 if cfg.quick else FLASH_ATTEMPTS


def _check_winners(scenario: Scenario, engine: Any, stock: int, connections: int) -> None:
    """Every winner is one order, one reservation and one ledger row. wrk counts the answers
    it read; requests still in flight when it stopped (at most one per connection) are
    finished by the function and committed, unanswered: the database has those too. The
    flash sale sells exactly its stock."""
    for variant, sku in SKUS.items():
        answered = scenario.variants[variant]["ok"]
        _, reserved = level_of(engine, WAREHOUSE, sku)
        ledger = count_rows(engine, "movements", "sku = :s AND kind = 'reserve'", s=sku)
        scenario.variants[variant]["won_in_mysql"] = reserved
        scenario.check(f"{variant}.ledger_rows_equal_reservations", ledger, reserved)
        if "conditional" not in variant:
            orders = count_rows(engine, "order_lines", "sku = :s", s=sku)
            scenario.check(f"{variant}.orders_equal_reservations", orders, reserved)
        unanswered = reserved - answered
        scenario.check(
            f"{variant}.winners_answered_or_in_flight", 0 <= unanswered <= connections, True
        )
    flash = scenario.variants["flash_sale"]
    scenario.check("flash_sale.sold_exactly_the_stock", flash["won_in_mysql"], stock)
    scenario.check("flash_sale.answered_winners_at_most_stock", flash["ok"] <= stock, True)


def _cold_start(
    environ: dict[str, str], runs: int, *, warm_first: bool
) -> dict[str, dict[str, Any]]:
    """Start to the first 200 of /health/ready, interleaved so that background load hits
    every target alike; in the full run one unmeasured start each first (the file cache of
    a node that has the image)."""
    targets = {"hello": HELLO, "create_order": CREATE_ORDER, "reconcile": RECONCILE}
    times: dict[str, list[float]] = {name: [] for name in targets}
    first = 0 if warm_first else 1
    for n in range(first, runs + 1):
        for name, source in targets.items():
            instance = Instance(source, environ)
            try:
                took = instance.start()
            finally:
                instance.stop(graceful=False)
            if n:
                times[name].append(took * 1000)
    return {
        name: {"median_ms": round(statistics.median(ms), 1), "runs_ms": [round(x) for x in ms]}
        for name, ms in times.items()
    }
