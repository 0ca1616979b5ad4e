"""What a SIGKILL of `psi dev` leaves behind: nothing. Its functions (gunicorn masters and
their workers), the embedded Redis and the embedded broker go down with it and free their
ports, though `psi dev` had no chance to stop them."""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from tests.conftest import require_broker_binary
from tests.support import PsiDev, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's"),
]

GONE_WITHIN = 20.0  # a gunicorn worker notices its master's death within about a second


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(process: psutil.Process) -> bool:
    # an orphan that exited stays a zombie until the machine's init reaps it: that is gone
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stack_ports(state: dict[str, object]) -> list[int]:
    functions = state["functions"]
    assert isinstance(functions, dict)
    urls = [*functions.values(), state["redis_url"], f"//{state['kafka_bootstrap']}"]
    return [int(urlsplit(str(url)).port or 0) for url in urls]


def test_sigkill_of_psi_dev_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    require_broker_binary()
    children: list[psutil.Process] = []
    with PsiDev(tmp_path, "--base-port", "0", "--data-dir", "d") as dev:
        try:
            dev.wait_ready()
            state = json.loads((tmp_path / "d" / "stack.json").read_text(encoding="utf-8"))
            ports = stack_ports(state)
            assert len(ports) == 8 and all(ports), state  # six functions, Redis, the broker
            assert all(listening(port) for port in ports)
            children = psutil.Process(dev.process.pid).children(recursive=True)
            # every function is a gunicorn master with a worker; then Redis and the broker
            assert len(children) >= 2 * len(state["functions"]) + 2, children

            dev.process.send_signal(signal.SIGKILL)
            assert dev.process.wait(timeout=10) == -signal.SIGKILL

            wait_until(
                lambda: not any(alive(child) for child in children),
                timeout=GONE_WITHIN,
                interval=0.1,
                what=f"the children of psi dev to exit: {[c for c in children if alive(c)]}",
            )
            wait_until(
                lambda: not any(listening(port) for port in ports),
                timeout=GONE_WITHIN,
                interval=0.1,
                what=f"psi dev's ports to close: {[p for p in ports if listening(p)]}",
            )
        finally:
            for child in children:  # whatever the fix did not end, the test does
                if alive(child):
                    child.kill()
