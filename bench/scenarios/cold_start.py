"""cold_start: process start -> first 200 of GET /health/live, per function.

Each function under functions/*/main.py is started the way a container starts it,
`python -m functions_framework --target handle --source functions/<dir>/main.py`, on a free
loopback port with PSI_AUTH_DISABLED=true and a throwaway PSI_DATA_DIR, next to a
functions-framework hello world (bench/hello/main.py). Runs are interleaved so that
background load hits every target alike; the median of the runs is compared with hello's.
The project's bytecode is compiled first, and the full run does one unmeasured start per
target (OS file cache warm), as in a container image whose layers are already on the node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchConfig,
    Scenario,
    free_port,
    http_status,
)

ROOT = Path(__file__).resolve().parents[2]
HELLO = "bench/hello/main.py"
QUICK = {"runs": 1, "warmup": 0}
FULL = {"runs": 5, "warmup": 1}
START_TIMEOUT = 60.0
TARGET_RATIO = 1.5


def targets() -> dict[str, str]:
    found = {
        p.parent.name: str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("functions/*/main.py"))
    }
    return {"hello": HELLO, **found}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server we started and its workers (its own process group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_once(source: str) -> dict[str, Any]:
    """Seconds from spawning the server to its first 200 on /health/live."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="psi-bench-cold-") as data_dir:
        # a clean start, like a new container: none of this process's PSI_* settings
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PSI_")}
        env = {
            **inherited,
            "PSI_AUTH_DISABLED": "true",
            "PSI_DATA_DIR": data_dir,
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable, "-m", "functions_framework",
            "--target", "handle", "--source", source,
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        began = time.perf_counter()
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = began + START_TIMEOUT
            while time.perf_counter() < deadline:
                status = http_status(port, "/health/live")
                if status == 200:
                    return {"ok": True, "seconds": time.perf_counter() - began}
                if proc.poll() is not None:
                    break
                time.sleep(0.005)
            _stop(proc)
            err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
            return {"ok": False, "error": err or "no 200 before the timeout"}
        finally:
            _stop(proc)
            if proc.stderr:
                proc.stderr.close()


def run(cfg: BenchConfig) -> Scenario:
    size = QUICK if cfg.quick else FULL
    found = targets()
    scenario = Scenario("cold_start", {**size, "targets": found, "probe": "GET /health/live"})
    times: dict[str, list[float]] = {name: [] for name in found}
    failures: dict[str, list[str]] = {name: [] for name in found}
    # bytecode compiled ahead, as in the image (pip compiles the installed package there and
    # the Dockerfile compiles functions/): with PYTHONDONTWRITEBYTECODE set, every start here
    # would otherwise compile the project's source again
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "shared_lib", "functions", "bench/hello"],
        cwd=ROOT,
        check=True,
    )
    for _ in range(size["warmup"]):
        for source in found.values():
            start_once(source)
    for _ in range(size["runs"]):
        for name, source in found.items():
            result = start_once(source)
            if result["ok"]:
                times[name].append(result["seconds"])
            else:
                failures[name].append(result["error"])
    hello = statistics.median(times["hello"]) if times["hello"] else None
    for name in found:
        runs = times[name]
        median = statistics.median(runs) if runs else None
        scenario.variants[name] = {
            "runs": len(runs) + len(failures[name]),
            "succeeded": len(runs),
            "failed": len(failures[name]),
            "median_ms": round(median * 1000, 1) if median is not None else None,
            "min_ms": round(min(runs) * 1000, 1) if runs else None,
            "max_ms": round(max(runs) * 1000, 1) if runs else None,
            "runs_ms": [round(x * 1000, 1) for x in runs],
            "vs_hello": round(median / hello, 3) if median and hello else None,
            **({"errors": failures[name][:2]} if failures[name] else {}),
        }
        scenario.check(f"{name}.started", len(runs), size["runs"])
        if name != "hello":
            scenario.target(
                f"{name}_vs_hello",
                scenario.variants[name]["vs_hello"],
                TARGET_RATIO,
                "<=",
                f"median cold start of {name} / median of the hello world",
            )
    return scenario
