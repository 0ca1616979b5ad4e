"""`python -m bench [--quick] [--only hot_sku,flash_sale] [--out bench/results]`

Runs the scenarios one after another, each on its own fresh database and Redis prefix,
writes <out>/latest.json, latest.md and charts, prints the tables. Exits 1 when a
correctness check failed or a scenario broke, 2 when MariaDB or Redis is unreachable.
Targets (speed-ups, wall-time ratios) are reported, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    BenchConfig,
    Scenario,
    machine_info,
    services_reachable,
)
from bench.scenarios import cold_start, flash_sale, hot_sku, http, many_skus, reconcile

SCENARIOS: dict[str, Callable[[BenchConfig], Scenario]] = {
    "hot_sku": hot_sku.run,
    "flash_sale": flash_sale.run,
    "many_skus": many_skus.run,
    "reconcile": reconcile.run,
    "cold_start": cold_start.run,
    "http": http.run,
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="PSI Functions benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, correctness only")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    args.scenarios = chosen or list(SCENARIOS)
    return args


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = BenchConfig(quick=args.quick, out=args.out)
    missing = services_reachable(cfg)
    if missing:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "machine": machine_info(cfg),
        "started_at": now(),
        "quick": cfg.quick,
        "scenarios": {},
    }
    ok = True
    for name in args.scenarios:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            record = SCENARIOS[name](cfg).as_dict()
        except Exception as exc:
            record = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(record["traceback"], file=sys.stderr)
        record["elapsed_s"] = round(time.perf_counter() - began, 1)
        results["scenarios"][name] = record
        ok = ok and "error" not in record and record.get("correct", False)
        print(f"bench: {name} done in {record['elapsed_s']}s", file=sys.stderr, flush=True)
    results["finished_at"] = now()
    results["correct"] = ok
    report.write_json(results, cfg.out)
    report.write_markdown(results, cfg.out)
    if not args.no_charts:
        report.charts(results, cfg.out)
    print(report.render(results))
    print(f"results in {cfg.out}/latest.json" + ("" if ok else "  -- CORRECTNESS FAILURES"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
