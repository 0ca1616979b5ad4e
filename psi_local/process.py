"""One supervisor for every child process of the local stack: the functions, the embedded
Redis and the embedded broker.

A ``ManagedProcess`` starts its command with stdout and stderr appended to its log file,
waits until a readiness probe answers (failing at once, with the log's tail, when the child
exits), and stops it with a signal, a bounded wait, then SIGKILL of its process group.
Whatever an interpreter leaves running at exit is killed (``atexit``).

On Linux each child also gets a parent-death signal (``PR_SET_PDEATHSIG``, SIGKILL), so a
SIGKILL of ``psi dev`` takes its children down too. The kernel sends it when the *thread*
that forked the child exits (man-pages, man2/prctl.2), so every child is forked by one
long-lived thread of this module, never by the caller's thread, which may be short-lived.
The setting does not pass on to the child's own children: a gunicorn worker notices that
its master is gone by itself (gunicorn/workers/gthread.py, ``is_parent_alive``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_DEATH_SIGNAL = signal.SIGKILL


class ProcessError(RuntimeError):
    """A child could not be started, or exited or stayed silent before it was ready."""


# -- probes --------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (the child binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(port: int, host: str = HOST) -> bool:
    """Whether a server could bind ``port``: as gunicorn binds, a port in TIME_WAIT is free
    and a listening one is not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """Whether something accepts connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float) -> int:
    """The status a GET of ``url`` answers with; 0 when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return 0


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file ('' when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- forking from one long-lived thread ----------------------------------------------------


def _parent_death_hook() -> Callable[[], None] | None:
    """What the child runs between fork and exec to die with its parent (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return die_with_parent


class _Forker:
    """A daemon thread that forks every child and lives as long as the interpreter."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="psi-forker", daemon=True)
                self._thread.start()
        done: Future[Any] = Future()
        self._jobs.put((job, done))
        try:
            return done.result()
        except BaseException:
            # interrupted (Ctrl-C) while the child was being forked: it must not be left
            done.add_done_callback(_kill_unclaimed)
            raise

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:  # handed to the caller, the thread lives on
                done.set_exception(exc)


def _kill_unclaimed(done: Future[Any]) -> None:
    if done.exception() is None:
        child = done.result()
        child.kill()
        child.wait(timeout=5)


_FORKER = _Forker()
_LIVE: set[ManagedProcess] = set()  # started and not seen to exit: a reference keeps it


@atexit.register
def _kill_leftovers() -> None:
    # an interpreter leaving without stop() must not leave children behind
    for child in list(_LIVE):
        child.kill()


# -- the supervisor ------------------------------------------------------------------------


class ManagedProcess:
    """One child process with its log file (see the module doc)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        """``new_session``: the child leads its own session and process group, so a Ctrl-C
        in the terminal does not reach it (its owner stops it, in order) and a SIGKILL on
        escalation also reaches its own children."""
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.new_session = new_session
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise ProcessError(f"{self.name} was not started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        return tail(self.log_path, lines)

    def start(self) -> ManagedProcess:
        """Run the command (its output appended to the log, after a line that says when);
        a running one is left as it is."""
        if self.alive:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            command = " ".join(" ".join(self.command).split())  # one line
            banner = f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {command}\n"
            out.write(banner.encode())
            out.flush()
            try:
                self._popen = _FORKER.run(lambda: self._fork(out))
            except (OSError, subprocess.SubprocessError) as exc:
                raise ProcessError(f"cannot start {self.name}: {exc}") from exc
        _LIVE.add(self)
        log.info("started %s pid=%s (log %s)", self.name, self._popen.pid, self.log_path)
        return self

    def _fork(self, out: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
            preexec_fn=_parent_death_hook(),
        )

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Return once ``ready()`` is true; ProcessError if the child exits first or the
        timeout passes."""
        wait_all_ready([(self, ready)], timeout)

    def stop(self, timeout: float, stop_signal: int = signal.SIGTERM) -> None:
        """``stop_signal``, a bounded wait, then SIGKILL; idempotent."""
        stop_all([self], timeout, stop_signal)

    def kill(self) -> None:
        """SIGKILL at once (its process group too), like a crash."""
        if self.alive:
            self._kill()
        self._reap(5.0)

    def _signal(self, sig: int) -> None:
        if self.alive:
            assert self._popen is not None
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)

    def _kill(self) -> None:
        assert self._popen is not None
        if self.new_session:  # the group also holds the child's own children
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()

    def _reap(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the exit; True once it has exited."""
        if self._popen is None:
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout=max(0.0, timeout))
        if self._popen.poll() is None:
            return False
        _LIVE.discard(self)
        return True

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen is not None else None
        return f"ManagedProcess({self.name!r}, pid={pid})"


def stop_all(
    children: Iterable[ManagedProcess], timeout: float, stop_signal: int = signal.SIGTERM
) -> None:
    """Signal every child, wait for all within one ``timeout``, then SIGKILL any left."""
    children = list(children)
    for child in children:
        child._signal(stop_signal)
    deadline = time.monotonic() + timeout
    for child in children:
        if not child._reap(deadline - time.monotonic()):
            log.warning(
                "%s pid=%s still running %.1fs after %s; killing it",
                child.name,
                child.pid,
                timeout,
                signal.Signals(stop_signal).name,
            )
            child.kill()


def wait_all_ready(
    pending: Iterable[tuple[ManagedProcess, Callable[[], bool]]], timeout: float
) -> None:
    """Probe each child until its probe is true; ProcessError, with the log's tail, as soon
    as one exits or when ``timeout`` passes."""
    waiting = list(pending)
    deadline = time.monotonic() + timeout
    while True:
        for child, ready in list(waiting):
            if not child.alive:
                raise ProcessError(
                    f"{child.name} exited with {child.returncode} "
                    f"(log {child.log_path}):\n{child.tail()}"
                )
            if ready():
                waiting.remove((child, ready))
        if not waiting:
            return
        if time.monotonic() >= deadline:
            late = ", ".join(child.name for child, _ in waiting)
            first = waiting[0][0]
            raise ProcessError(
                f"not ready within {timeout:g}s: {late} (log {first.log_path}):\n{first.tail()}"
            )
        # waits on the exit of the first one, so a crash is noticed at once
        waiting[0][0]._reap(min(0.05, deadline - time.monotonic()))
