"""The functions of the local stack as processes: which function runs on which port, and each
one as functions-framework (on gunicorn) under a ``ManagedProcess``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from psi_local.process import (
    HOST,
    ManagedProcess,
    ProcessError,
    free_port,
    http_status,
    port_free,
    wait_all_ready,
)
from shared_lib.http.routes import READY_PATHS

DEFAULT_BASE_PORT = 8081
READY_PATH = READY_PATHS[0]


class StackError(RuntimeError):
    """The local stack could not start; the message says which part and why."""


@dataclass(frozen=True)
class FunctionSpec:
    directory: str  # functions/<directory>/main.py
    name: str  # deployed name
    offset: int  # port = base port + offset


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("stock_in", "stock-in", 0),
    FunctionSpec("stock_out", "stock-out", 1),
    FunctionSpec("create_order", "create-order", 2),
    FunctionSpec("reconcile", "reconcile", 3),
    FunctionSpec("stock_query", "stock-query", 4),
    FunctionSpec("catalog", "catalog", 5),
)


def functions_root() -> Path:
    """The ``functions/`` package directory (works from a checkout or an editable install)."""
    import functions

    # __path__, not __file__: an editable install may expose it as a namespace package
    for entry in functions.__path__:
        if Path(entry).is_dir():
            return Path(entry).resolve()
    raise StackError("the functions package has no directory on disk")


@dataclass(frozen=True)
class PlannedFunction:
    """A function to run: its source and its port."""

    spec: FunctionSpec
    source: Path
    port: int

    @property
    def project_root(self) -> Path:
        # the working directory of the process: events/ and relative paths resolve there
        return self.source.parent.parent.parent


def plan_functions(
    wanted: Sequence[str] | None, base_port: int, announce: Callable[[str], None]
) -> tuple[list[PlannedFunction], list[str]]:
    """Which functions run on which port, and the directories skipped (no main.py); checked
    before any store is started. ``base_port`` 0 picks a free port per function."""
    root = functions_root()
    plan, skipped = [], []
    for spec in FUNCTIONS:
        if wanted is not None and spec.directory not in wanted:
            continue
        source = root / spec.directory / "main.py"
        if not source.is_file():
            skipped.append(spec.directory)
            announce(f"warning: functions/{spec.directory}/main.py not found; skipped")
            continue
        port = base_port + spec.offset if base_port else free_port()
        if not port_free(port):
            raise StackError(
                f"port {port} for {spec.name} is in use (another psi dev?); "
                "choose another --base-port"
            )
        plan.append(PlannedFunction(spec, source, port))
    if not plan:
        raise StackError("no function to run: functions/*/main.py not found")
    return plan, skipped


@dataclass
class FunctionProcess:
    plan: PlannedFunction
    process: ManagedProcess

    @property
    def spec(self) -> FunctionSpec:
        return self.plan.spec

    @property
    def port(self) -> int:
        return self.plan.port

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    @property
    def alive(self) -> bool:
        return self.process.alive

    def ready(self) -> bool:
        return http_status(self.url.rstrip("/") + READY_PATH, timeout=2.0) == 200


def start_function(plan: PlannedFunction, env: Mapping[str, str], log_dir: Path) -> FunctionProcess:
    """Start one function on its port (not waiting until it is ready)."""
    cmd = [
        sys.executable, "-m", "functions_framework",
        "--target", "handle",
        "--source", str(plan.source),
        "--host", HOST,
        "--port", str(plan.port),
    ]  # fmt: skip
    process = ManagedProcess(
        plan.spec.name,
        cmd,
        log_path=log_dir / f"{plan.spec.name}.log",
        cwd=plan.project_root,
        env=env,
        new_session=True,  # Ctrl-C reaches psi, which stops children in order
    )
    try:
        process.start()
    except ProcessError as exc:
        raise StackError(str(exc)) from exc
    return FunctionProcess(plan, process)


def wait_until_ready(functions: Iterable[FunctionProcess], timeout: float) -> None:
    """Every function answers its readiness route; StackError with the log's tail if one
    exits first or the timeout passes."""
    try:
        wait_all_ready([(f.process, f.ready) for f in functions], timeout)
    except ProcessError as exc:
        raise StackError(str(exc)) from exc
