"""The local stack's process supervisor with small Python children: the log file, readiness,
stop with escalation to SIGKILL, and that no child outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from psi_local.process import ManagedProcess, ProcessError, stop_all
from tests.support import wait_until

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal")

# ignores SIGTERM, starts a grandchild that ignores it too, and says so in its log
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print("ready", grandchild.pid, flush=True)
time.sleep(600)
"""
SLEEPER = "import time; print('ready', flush=True); time.sleep(600)"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def said_ready(child: ManagedProcess) -> bool:
    return child.tail(1).startswith("ready")  # the line above it is the command


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    children: list[ManagedProcess] = []
    yield children
    for child in children:
        child.kill()


def start(
    started: list[ManagedProcess], tmp_path: Path, code: str, **options: bool
) -> ManagedProcess:
    child = ManagedProcess("child", python(code), log_path=tmp_path / "child.log", **options)
    started.append(child.start())
    return child


def test_output_goes_to_the_log_after_a_line_that_says_what_ran(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    child = start(started, tmp_path, SLEEPER)
    child.wait_ready(lambda: said_ready(child), timeout=10)
    first, second = child.log_path.read_text().strip().splitlines()
    assert first.startswith("--- ") and sys.executable in first
    assert second == "ready"


def test_stop_escalates_to_sigkill_of_the_whole_group(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    child = start(started, tmp_path, STUBBORN, new_session=True)
    child.wait_ready(lambda: said_ready(child), timeout=10)
    grandchild = int(child.tail().split()[-1])
    began = time.monotonic()
    child.stop(timeout=0.5)
    assert time.monotonic() - began < 3
    assert not child.alive and child.returncode == -signal.SIGKILL
    wait_until(lambda: not alive(grandchild), timeout=5, what="the grandchild to be killed")


def test_stop_all_waits_once_for_every_child(tmp_path: Path, started: list[ManagedProcess]) -> None:
    children = [start(started, tmp_path / str(n), STUBBORN, new_session=True) for n in range(3)]
    for child in children:
        child.wait_ready(lambda c=child: said_ready(c), timeout=10)
    began = time.monotonic()
    stop_all(children, timeout=1.0)
    assert time.monotonic() - began < 3  # one shared deadline, not one per child
    assert not any(child.alive for child in children)


def test_a_child_that_exits_fails_the_wait_at_once_with_its_log(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    child = start(started, tmp_path, "import sys; print('no config here'); sys.exit(3)")
    began = time.monotonic()
    with pytest.raises(ProcessError) as failed:
        child.wait_ready(lambda: False, timeout=30)
    assert time.monotonic() - began < 10
    assert "child exited with 3" in str(failed.value)
    assert "no config here" in str(failed.value)


def test_a_silent_child_fails_the_wait_after_the_timeout(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    child = start(started, tmp_path, SLEEPER)
    began = time.monotonic()
    with pytest.raises(ProcessError, match=r"not ready within 0\.3s: child"):
        child.wait_ready(lambda: False, timeout=0.3)
    assert time.monotonic() - began < 3
    assert child.alive  # the owner decides what to do with it


def test_a_child_that_cannot_run_is_a_process_error(tmp_path: Path) -> None:
    child = ManagedProcess("ghost", [str(tmp_path / "no-such-binary")], log_path=tmp_path / "g.log")
    with pytest.raises(ProcessError, match="cannot start ghost"):
        child.start()


@linux_only
def test_a_child_outlives_the_short_lived_thread_that_started_it(
    tmp_path: Path, started: list[ManagedProcess]
) -> None:
    # the parent-death signal fires when the forking *thread* exits: the supervisor forks
    # from a thread of its own, so a caller's thread may come and go
    native: list[int] = []

    def caller() -> None:
        native.append(threading.get_native_id())
        start(started, tmp_path, SLEEPER)

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join()
    wait_until(
        lambda: not Path(f"/proc/self/task/{native[0]}").exists(),
        timeout=5,
        what="the caller's thread to be gone from the kernel",
    )
    child = started[0]
    child.wait_ready(lambda: said_ready(child), timeout=10)
    with pytest.raises(psutil.TimeoutExpired):  # a parent-death SIGKILL lands at once
        psutil.Process(child.pid).wait(timeout=0.5)
    assert child.alive


OWNER = """
import sys, time
from pathlib import Path
from psi_local.process import ManagedProcess
child = ManagedProcess("stubborn", [sys.executable, "-c", sys.argv[3]],
                       log_path=Path(sys.argv[1]), new_session=True).start()
child.wait_ready(lambda: child.tail(1).startswith("ready"), timeout=10)
print(child.pid, child.tail(1).split()[1], flush=True)
if sys.argv[2] == "block":
    time.sleep(600)
"""


def run_owner(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int, int]:
    """A Python process that starts a child (which starts a grandchild), then blocks or
    exits without stopping it; returns it and the pids of its child and grandchild."""
    owner = subprocess.Popen(
        [*python(OWNER), str(tmp_path / "stubborn.log"), mode, textwrap.dedent(STUBBORN)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    child, grandchild = (int(pid) for pid in owner.stdout.readline().split())
    return owner, child, grandchild


def kill_if_alive(*pids: int) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@linux_only
def test_a_child_dies_with_its_sigkilled_owner(tmp_path: Path) -> None:
    owner, child, grandchild = run_owner(tmp_path, "block")
    try:
        assert alive(child)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        wait_until(lambda: not alive(child), timeout=5, what="the child of the killed owner")
    finally:
        owner.kill()
        owner.wait(timeout=10)
        # the grandchild is the child's to end (gunicorn's workers watch their master)
        kill_if_alive(child, grandchild)


def test_an_owner_that_exits_without_stop_leaves_no_child_nor_grandchild(
    tmp_path: Path,
) -> None:
    owner, child, grandchild = run_owner(tmp_path, "exit")
    try:
        assert owner.wait(timeout=30) == 0
        # killed with its process group at exit: the grandchild has no parent-death signal
        wait_until(
            lambda: not alive(child) and not alive(grandchild),
            timeout=5,
            what="the child and grandchild of the exited owner",
        )
    finally:
        kill_if_alive(child, grandchild)
