"""reconcile: find and repair 1% drift between Redis and MySQL over N balances.

N (sku, warehouse) balances are seeded with bulk INSERTs (each with its receive movement,
so MySQL agrees with its ledger), loaded into the gate, then 1% of the gate's levels are
damaged (wrong on_hand, wrong reserved, or the key missing). The product's reconcile runs
with repair in a fresh child process (spawned, so its RSS is its own) that samples its
RSS with psutil; afterwards every balance is compared gate vs MySQL independently.

The service is `shared_lib.services.reconcile.reconcile(deps, records, gate, reports, *,
run_key, repair)`, wired as in production (SqlReconcileStore, RedisGate, LocalReports in a
throwaway directory). Arguments are matched by parameter name, so small API changes do not
break the bench. Without the module the scenario is marked skipped, after checking on a
small data set that the seeded drift is really there (the harness's own check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import multiprocessing as mp
import os
import queue as queue_mod
import random
import resource
import tempfile
import threading
import time
import traceback
import typing
import uuid
from collections import Counter
from typing import Any

from bench.common import (
    BenchConfig,
    Scenario,
    sku_name,
)
from bench.stores import (
    Stores,
    gate_check,
    ledger_check,
    load_gate,
    seed_levels,
)

QUICK = {"rows": [2_000], "drift_fraction": 0.01, "warehouses": 4}
FULL = {"rows": [100_000, 300_000, 1_000_000], "drift_fraction": 0.01, "warehouses": 4}
MODULE = "shared_lib.services.reconcile"
ENTRY_POINTS = ("reconcile", "run_reconcile", "reconcile_all")
STOCK = 500
TARGET_ROWS = 1_000_000
CHILD_TIMEOUT = {True: 180.0, False: 1_800.0}


def find_entry_point() -> tuple[Any, str | None]:
    """The reconcile callable, or None and why not."""
    try:
        module = importlib.import_module(MODULE)
    except ModuleNotFoundError as exc:
        if exc.name and MODULE.startswith(exc.name):
            return None, "reconcile service not available"
        raise
    for name in ENTRY_POINTS:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn, None
    return None, f"{MODULE} has none of {', '.join(ENTRY_POINTS)}"


def _argument(name: str, hint: Any, env: dict[str, Any]) -> Any:
    if name in env:
        return env[name]
    if name == "meta":
        from shared_lib.domain.model import RequestMeta

        return RequestMeta(env["run_key"], actor="bench")
    if name == "command" and isinstance(hint, type) and dataclasses.is_dataclass(hint):
        fields = {f.name for f in dataclasses.fields(hint)}
        return hint(**{k: v for k, v in env.items() if k in fields})
    raise TypeError(f"reconcile parameter {name!r} is not one the bench knows how to supply")


def call_reconcile(fn: Any, env: dict[str, Any]) -> Any:
    """Call fn with what its parameters ask for, by name; optional unknown ones are left out."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        known = name in env or name in ("meta", "command")
        if not known and param.default is not param.empty:
            continue
        value = _argument(name, hints.get(name), env)
        if param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return fn(*args, **kwargs)


def reported_counts(result: Any) -> dict[str, Any]:
    """The numbers a reconcile result carries, whatever its shape."""
    if result is None:
        return {}
    body: Any = getattr(result, "body", result)
    if dataclasses.is_dataclass(body) and not isinstance(body, type):
        body = dataclasses.asdict(body)
    elif not isinstance(body, dict):
        body = getattr(body, "__dict__", {})
    counts = {k: v for k, v in body.items() if isinstance(v, int | float | str | bool) or v is None}
    # the report lives in a throwaway directory: keep where under it, not the machine's path
    if isinstance(counts.get("report_uri"), str):
        counts["report_uri"] = counts["report_uri"].split("/reports/", 1)[-1]
    return counts


def _first(counts: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = counts.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _child(url: str, redis_url: str, prefix: str, data_dir: str, results: Any) -> None:
    """Runs in a spawned process: reconcile with repair, wall time and peak RSS."""
    os.environ["PSI_DATA_DIR"] = data_dir
    try:
        import psutil
        import redis

        from shared_lib.adapters.redis_gate import RedisGate
        from shared_lib.adapters.sql import SqlTransactions
        from shared_lib.adapters.sql_engine import make_engine
        from shared_lib.services import Deps

        me = psutil.Process()
        peak = [me.memory_info().rss]
        baseline = peak[0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], me.memory_info().rss)

        fn, why = find_entry_point()
        if fn is None:
            results.put({"skipped": why})
            return
        engine = make_engine(url, pool_size=2, timeout=30)
        gate = RedisGate(redis.Redis.from_url(redis_url, socket_timeout=30), prefix=prefix)
        tx = SqlTransactions(engine)
        env: dict[str, Any] = {
            "deps": Deps(tx=tx, gate=gate),
            "tx": tx,
            "transactions": tx,
            "gate": gate,
            "engine": engine,
            "repair": True,
            "run_key": f"bench-{uuid.uuid4().hex[:12]}",
        }
        with contextlib.suppress(ImportError):
            # the production wiring: SQL run records and balance pages, reports on disk
            from shared_lib.adapters.reports import LocalReports
            from shared_lib.adapters.sql_reconcile import SqlReconcileStore

            env["records"] = SqlReconcileStore(engine)
            env["reports"] = LocalReports(os.path.join(data_dir, "reports"))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        result = call_reconcile(fn, env)
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        results.put(
            {
                "wall_s": round(wall, 3),
                "peak_rss_mb": round(max(peak[0], high_water) / 2**20, 1),
                "baseline_rss_mb": round(baseline / 2**20, 1),
                "reported": reported_counts(result),
            }
        )
        gate.close()
        engine.dispose()
    except BaseException:
        results.put({"error": traceback.format_exc(limit=8)})


def _run_child(stores: Stores, quick: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="psi-bench-reconcile-") as data_dir:
        proc = ctx.Process(
            target=_child,
            args=(stores.url, stores.redis_url, stores.prefix, data_dir, results),
            name="bench-reconcile",
        )
        proc.start()
        give_up = time.monotonic() + CHILD_TIMEOUT[quick]
        try:
            while time.monotonic() < give_up:
                try:
                    return results.get(timeout=1.0)
                except queue_mod.Empty:
                    if not proc.is_alive() and results.empty():
                        return {"error": f"reconcile child exited with code {proc.exitcode}"}
            return {"error": f"reconcile did not finish within {CHILD_TIMEOUT[quick]:.0f}s"}
        finally:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)


def seed_drift(stores: Stores, warehouses: list[str], per_wh: int, fraction: float) -> Counter[str]:
    """Damage `fraction` of the gate's levels: 80% wrong on_hand, 10% wrong reserved,
    10% key missing. Versions are left alone: only the values lie."""
    total = per_wh * len(warehouses)
    rng = random.Random(total)
    picked = rng.sample(range(total), max(1, int(total * fraction)))
    gate = stores.gate()
    kinds: Counter[str] = Counter()
    pipe = gate.client.pipeline(transaction=False)
    for n, k in enumerate(picked):
        key = gate.level_key(warehouses[k // per_wh], sku_name(k % per_wh + 1))
        if n % 10 == 8:
            pipe.hincrby(key, "rs", 1)
            kinds["reserved"] += 1
        elif n % 10 == 9:
            pipe.delete(key)
            kinds["missing"] += 1
        else:
            pipe.hincrby(key, "oh", 5)
            kinds["on_hand"] += 1
        if len(pipe) >= 5_000:
            pipe.execute()
    pipe.execute()
    gate.close()
    return kinds


def _one_size(cfg: BenchConfig, scenario: Scenario, rows: int, fn_ready: bool) -> dict[str, Any]:
    size = QUICK if cfg.quick else FULL
    warehouses = [f"W{i:02d}" for i in range(1, size["warehouses"] + 1)]
    per_wh = rows // len(warehouses)
    label = f"rows_{rows}"
    with Stores(cfg, "recon") as stores:
        engine = stores.engine()
        began = time.perf_counter()
        seeded = seed_levels(engine, warehouses, per_wh, STOCK)
        loaded = load_gate(stores)
        drift = seed_drift(stores, warehouses, per_wh, size["drift_fraction"])
        drift_total = sum(drift.values())
        out: dict[str, Any] = {
            "rows": seeded,
            "loaded_into_gate": loaded,
            "drift_seeded": drift_total,
            "drift_kinds": dict(drift),
            "seed_s": round(time.perf_counter() - began, 1),
        }
        gate = stores.gate()
        try:
            # the harness's own check that the drift is really there before the run
            before = gate_check(engine, gate, settled=False)
            out["drift_detected_by_bench"] = before["gate_mismatches"]
            scenario.check(
                f"{label}.bench_sees_seeded_drift", before["gate_mismatches"], drift_total
            )
            if not fn_ready:
                return out
            child = _run_child(stores, cfg.quick)
            out.update(child)
            if "error" in child or "skipped" in child:
                scenario.check(f"{label}.reconcile_ran", False, True)
                return out
            after = gate_check(engine, gate)
            ledger = ledger_check(engine)
        finally:
            gate.close()
            engine.dispose()
        reported = child.get("reported", {})
        found = _first(reported, "drift_found", "found", "drifted", "mismatches")
        repaired = _first(reported, "drift_repaired", "repaired", "fixed")
        out.update(
            drift_found=found,
            drift_repaired=repaired,
            drift_left=after["gate_mismatches"],
            holds_left=after["gate_holds_left"],
            ledger_mismatches=ledger["ledger_mismatches"],
            rows_per_s=round(seeded / child["wall_s"], 1) if child.get("wall_s") else None,
        )
        scenario.check(f"{label}.drift_left", after["gate_mismatches"], 0)
        scenario.check(f"{label}.ledger_mismatches", ledger["ledger_mismatches"], 0)
        if found is not None:
            scenario.check(f"{label}.drift_found", found, drift_total)
        if repaired is not None:
            scenario.check(f"{label}.drift_repaired", repaired, drift_total)
        return out


def run(cfg: BenchConfig) -> Scenario:
    size = QUICK if cfg.quick else FULL
    fn, why = find_entry_point()
    sizes = size["rows"] if fn is not None else QUICK["rows"]
    scenario = Scenario("reconcile", {**size, "rows": sizes, "repair": True})
    if fn is not None:
        scenario.extra["entry_point"] = f"{MODULE}.{fn.__name__}{inspect.signature(fn)}"
    for rows in sizes:
        scenario.variants[f"rows_{rows}"] = _one_size(cfg, scenario, rows, fn is not None)
    if fn is None:
        scenario.extra["skipped"] = why
        return scenario
    largest = scenario.variants[f"rows_{max(sizes)}"]
    at = "at 1M rows" if max(sizes) >= TARGET_ROWS else f"at {max(sizes)} rows (quick)"
    scenario.target("wall_s", largest.get("wall_s"), 60.0, "<=", f"reconcile wall time {at}")
    scenario.target(
        "peak_rss_mb", largest.get("peak_rss_mb"), 300.0, "<=", f"reconcile peak RSS {at}"
    )
    with contextlib.suppress(Exception):
        xs = [v["rows"] for v in scenario.variants.values() if v.get("wall_s")]
        ys = [v["wall_s"] for v in scenario.variants.values() if v.get("wall_s")]
        if len(xs) >= 2:
            scenario.extra["seconds_per_100k_rows"] = [
                round(y / x * 100_000, 2) for x, y in zip(xs, ys, strict=True)
            ]
    return scenario
