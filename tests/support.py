"""Small helpers for tests: wait on a condition with a timeout, never sleep-and-hope; read
the ledger's sums; a TCP proxy a test can cut; `psi dev` as a user runs it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def http() -> requests.Session:
    """A session that never goes through a proxy from the environment (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session


class TcpProxy:
    """A loopback TCP proxy in front of a real server that a test can cut: while cut, every
    open connection is closed and new ones are closed at once, as when the server is down."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._close_all()
        self._thread.join(5)

    def cut(self) -> None:
        self._cut.set()
        self._close_all()

    def restore(self) -> None:
        self._cut.clear()

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to another server (a failover behind a stable address)."""
        self.cut()
        self.target = (host, port)
        self.restore()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class PsiDev:
    """`psi dev` as a user runs it: the CLI in a subprocess in ``cwd``, with none of this
    machine's PSI_ settings; its stdout and stderr lines are collected as they come."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PSI_")}
        env["PSI_SECRETS_DIR"] = str(cwd / "secrets")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared_lib.cli", "dev", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=lines.extend, args=(stream,), daemon=True)
            for lines, stream in ((self.out, self.process.stdout), (self.err, self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until it says Ctrl-C stops everything; fails if it exited instead."""
        wait_until(
            lambda: any("Ctrl-C" in line for line in self.out) or self.process.poll() is not None,
            timeout=timeout,
            what="psi dev to be ready",
        )
        assert self.process.poll() is None, (self.out, self.err)

    def __enter__(self) -> PsiDev:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(5)
