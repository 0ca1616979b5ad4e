"""Graceful shutdown of a function container, with the real gunicorn.conf.py.

A real gunicorn serves the test-only slow function (fixtures/slow_fn/main.py) through
shared_lib.wsgi on a loopback port. SIGTERM arrives while a request is in flight: the
request must still complete with 200, the server must exit 0 within a bounded time, and
the worker_exit hook must have closed the pools (the fixture's stand-in for
shared_lib.bootstrap.shutdown writes a line to a file).
"""

from __future__ import annotations

import importlib
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
SLOW_FN = FIXTURES / "slow_fn" / "main.py"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
SLOW_SECONDS = 1.5
BOUND = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    stderr: Path
    started: Path
    shutdown_marker: Path

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{self.log()}")
        try:
            return get(f"{self.base_url}/ping", timeout=1.0) == (200, "ok")
        except OSError:
            return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    stderr = tmp_path / "gunicorn.stderr"
    started = tmp_path / "started"
    marker = tmp_path / "shutdown"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FUNCTION_DIR", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(FIXTURES)]),
        FUNCTION_SOURCE=str(SLOW_FN),
        FUNCTION_TARGET="handle",
        GUNICORN_SHUTDOWN_HOOK="slow_fn.main:shutdown",
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_GRACEFUL_TIMEOUT="10",
        SLOW_FN_DELAY=str(SLOW_SECONDS),
        SLOW_FN_STARTED_FILE=str(started),
        SLOW_FN_SHUTDOWN_FILE=str(marker),
    )
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                str(GUNICORN_CONF),
                "shared_lib.wsgi:app",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: the cleanup reaches its workers
        )
    running = Server(process, f"http://127.0.0.1:{port}", stderr, started, marker)
    try:
        wait_until(running.answers, timeout=30.0, interval=0.1, what="gunicorn to answer")
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=BOUND)


def test_sigterm_finishes_the_request_in_flight_then_closes_pools(server: Server) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(get, f"{server.base_url}/slow", BOUND)
        wait_until(server.started.exists, timeout=BOUND, what="the slow request to start")
        assert not slow.done()

        server.process.send_signal(signal.SIGTERM)

        assert slow.result(timeout=BOUND) == (200, "done")
    assert server.process.wait(timeout=BOUND) == 0, server.log()

    lines = server.shutdown_marker.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and lines[0].startswith("shutdown "), lines
    log = server.log()
    assert "closed its pools" in log, log
    assert "psi: server stopped" in log, log


def test_sigterm_when_idle_exits_at_once(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=BOUND) == 0, server.log()
    assert server.shutdown_marker.read_text(encoding="utf-8").startswith("shutdown ")


# ---------------------------------------------------------------- the hook, in process


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: Any) -> None:
        self.lines.append("INFO " + message % args)

    def error(self, message: str, *args: Any) -> None:
        self.lines.append("ERROR " + message % args)

    def exception(self, message: str, *args: Any) -> None:
        self.lines.append("EXCEPTION " + message % args)


@dataclass
class FakeServer:
    log: FakeLog


@dataclass
class FakeWorker:
    pid: int


def load_conf(monkeypatch: pytest.MonkeyPatch, hook: str | None) -> dict[str, Any]:
    if hook is None:
        monkeypatch.delenv("GUNICORN_SHUTDOWN_HOOK", raising=False)
    else:
        monkeypatch.setenv("GUNICORN_SHUTDOWN_HOOK", hook)
    return runpy.run_path(str(GUNICORN_CONF))


def test_default_hook_is_bootstrap_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(monkeypatch, None)
    assert conf["SHUTDOWN_HOOK"] == "shared_lib.bootstrap:shutdown"
    bootstrap = importlib.import_module("shared_lib.bootstrap")
    assert conf["load_shutdown_hook"](conf["SHUTDOWN_HOOK"]) is bootstrap.shutdown


def test_missing_hook_is_a_clear_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(monkeypatch, "no_such_module_psi:shutdown")
    log = FakeLog()
    conf["worker_exit"](FakeServer(log), FakeWorker(pid=42))
    assert len(log.lines) == 1
    assert log.lines[0].startswith(
        "ERROR psi: worker 42 cannot close its pools: no_such_module_psi:shutdown is not available"
    )


def test_failing_hook_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(monkeypatch, "json:loads")  # callable, but fails without arguments
    log = FakeLog()
    conf["worker_exit"](FakeServer(log), FakeWorker(pid=7))
    assert log.lines == ["EXCEPTION psi: worker 7 failed while closing its pools"]


def test_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_WORKER_CONNECTIONS", "5")
    monkeypatch.setenv("GUNICORN_GRACEFUL_TIMEOUT", "7")
    conf = load_conf(monkeypatch, None)
    assert conf["bind"] == ["0.0.0.0:9123"]
    assert (conf["workers"], conf["worker_connections"], conf["graceful_timeout"]) == (3, 5, 7)
    assert conf["worker_class"] == "shared_lib.serving.Worker"
    assert conf["preload_app"] is False


# ---------------------------------------------------------------- shared_lib.wsgi


@pytest.fixture
def wsgi(monkeypatch: pytest.MonkeyPatch) -> Any:
    """shared_lib.wsgi imported fresh for the slow function; sys state restored after."""
    monkeypatch.setenv("FUNCTION_SOURCE", str(SLOW_FN))
    monkeypatch.delenv("FUNCTION_TARGET", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "main", raising=False)
    monkeypatch.delitem(sys.modules, "shared_lib.wsgi", raising=False)
    return importlib.import_module("shared_lib.wsgi")


def test_wsgi_serves_the_chosen_function(wsgi: Any) -> None:
    response = wsgi.app.test_client().get("/ping")
    assert (response.status_code, response.get_data(as_text=True)) == (200, "ok")


def test_wsgi_source_from_function_dir(wsgi: Any) -> None:
    assert wsgi.function_source({"FUNCTION_DIR": "stock_in"}) == "functions/stock_in/main.py"
    assert wsgi.function_source({"FUNCTION_SOURCE": "x/main.py", "FUNCTION_DIR": "y"}) == (
        "x/main.py"
    )
    assert wsgi.function_target({}) == "handle"
    with pytest.raises(RuntimeError, match=re.escape("FUNCTION_SOURCE=functions/<dir>/main.py")):
        wsgi.function_source({})
