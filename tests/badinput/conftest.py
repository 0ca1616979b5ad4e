"""Fixtures for the bad-input tests, on a fresh MariaDB database and the real Redis under a
unique key prefix (only that prefix is ever deleted): every function in-process (WSGI apps),
and stock-in as a process behind the Kafka bridge and the embedded broker.

With CI=true a missing MariaDB, Redis or broker binary fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import psutil
import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from psi_local.stack import LocalStack
from shared_lib import bootstrap
from shared_lib.config import get_settings
from tests.conftest import (
    create_mysql_database,
    drop_mysql_database,
    free_port,
    require_broker_binary,
    stack_environ,
)
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("catalog", "stock_in", "stock_out", "create_order", "stock_query", "reconcile")


FUZZ_KEY = "in-process-admin-key-0001"
AS_ADMIN = {"Authorization": f"Bearer {FUZZ_KEY}"}


@dataclass
class InProcess:
    apps: dict[str, Flask]
    engine: sa.Engine
    database_url: str


@pytest.fixture(scope="module")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, mysql_server: str, redis_server: str
) -> Iterator[InProcess]:
    """Every function's WSGI app, as ``functions_framework.create_app`` builds it, with API
    keys on (AS_ADMIN is the key's header). Settings and the platform are cached per
    process: cleared before and after."""
    data_dir = tmp_path_factory.mktemp("badinput")
    database_url = create_mysql_database(mysql_server)
    prefix = f"psibad{uuid.uuid4().hex[:8]}"
    env = {
        "PSI_DATABASE_URL": database_url,
        "PSI_REDIS_URL": redis_server,
        "PSI_REDIS_PREFIX": prefix,
        "PSI_API_KEYS": f"{FUZZ_KEY}=admin",
        "PSI_DATA_DIR": str(data_dir / "data"),
        "PSI_SECRETS_DIR": str(data_dir / "no-secrets"),
        "PSI_LOG_LEVEL": "WARNING",
        "FUNCTION_TARGET": "handle",
    }
    engine = sa.create_engine(database_url, pool_size=2)
    client = redis.Redis.from_url(redis_server, socket_timeout=5)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("PSI_") and not name.startswith("PSI_TEST_"):
                mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        # create_app appends to sys.path: undone afterwards
        mp.setattr(sys, "path", [*sys.path])
        bootstrap.shutdown()
        get_settings.cache_clear()
        try:
            apps: dict[str, Any] = {
                fn: functions_framework.create_app(
                    target="handle", source=str(ROOT / "functions" / fn / "main.py")
                )
                for fn in FUNCTIONS
            }
            yield InProcess(apps, engine, database_url)
        finally:
            platform = bootstrap._platform
            if platform is not None and platform.rebuilder is not None:
                platform.rebuilder.join()  # background gate rebuilds end before the pools
            bootstrap.shutdown()
            get_settings.cache_clear()
            engine.dispose()
            for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
                client.delete(key)
            client.close()
            drop_mysql_database(mysql_server, database_url)


@dataclass
class KafkaStack:
    stack: LocalStack
    engine: sa.Engine
    max_body_bytes: int


MAX_BODY_BYTES = 4096


@pytest.fixture(scope="module")
def kafka_stack(
    tmp_path_factory: pytest.TempPathFactory, mysql_server: str, redis_server: str
) -> Iterator[KafkaStack]:
    """stock-in as a process behind the Kafka bridge and the embedded broker, with a small
    PSI_MAX_BODY_BYTES so that an oversized message is cheap to make."""
    require_broker_binary()
    data_dir = tmp_path_factory.mktemp("badinput-kafka")
    database_url = create_mysql_database(mysql_server)
    prefix = f"psibadk{uuid.uuid4().hex[:8]}"
    environ = stack_environ(
        database_url, redis_server, prefix, data_dir, PSI_MAX_BODY_BYTES=str(MAX_BODY_BYTES)
    )
    stack = LocalStack(
        data_dir=data_dir,
        base_port=0,
        environ=environ,
        functions=("stock_in",),
        delivery_options={"retry": 5, "backoff_delay": 0.05},
        announce=lambda line: None,
    )
    engine = sa.create_engine(database_url, pool_size=2)
    client = redis.Redis.from_url(redis_server, socket_timeout=5)
    try:
        stack.start()
        yield KafkaStack(stack, engine, MAX_BODY_BYTES)
    finally:
        stack.stop()
        engine.dispose()
        for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
            client.delete(key)
        client.close()
        drop_mysql_database(mysql_server, database_url)


KEY = "served-function-admin-key-0001"
MAX_BODY = 1024 * 1024
THREADS_BEFORE = 4  # the gthread workers this replaced: 4 threads each
READ_TIMEOUT = 6  # longer than gunicorn's keep-alive timeout (5 s), as it must be
BODY_TIMEOUT = 4


@dataclass
class Served:
    port: int
    worker: psutil.Process
    log: Path  # gunicorn's and the function's stderr

    def errors(self) -> str:
        return self.log.read_text(errors="replace")


def status(port: int, method: str, path: str, timeout: float = 5) -> int | None:
    """The status of one request on a new connection; None if none came back in time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@contextlib.contextmanager
def serving(tmp_path: Path) -> Iterator[Served]:
    """stock-in as the image runs it: gunicorn with the project's gunicorn.conf.py and
    shared_lib.wsgi, API keys on, one worker, on its embedded defaults (no services)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PSI_", "GUNICORN"))}
    env.update(
        PYTHONPATH=str(ROOT),
        FUNCTION_DIR="stock_in",
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_READ_TIMEOUT=str(READ_TIMEOUT),
        PSI_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        PSI_API_KEYS=f"{KEY}=admin",
        PSI_DATA_DIR=str(tmp_path / "data"),
        PSI_SECRETS_DIR=str(tmp_path / "no-secrets"),
        PSI_REDIS_URL="disabled",
        PSI_MAX_BODY_BYTES=str(MAX_BODY),
    )
    command = [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py")]
    log = tmp_path / "function.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "shared_lib.wsgi:app"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_until(lambda: status(port, "GET", "/health/live") == 200, timeout=30, what="up")
        (worker,) = psutil.Process(process.pid).children()
        yield Served(port, worker, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A function of its own for one test (its worker's memory is measured)."""
    with serving(tmp_path) as function:
        yield function
