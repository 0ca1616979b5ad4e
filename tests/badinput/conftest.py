"""Fixtures for the bad-input tests, on a fresh MariaDB database and the real Redis under a
unique key prefix (only that prefix is ever deleted): every function in-process (WSGI apps),
and stock-in as a process behind the Kafka bridge and the embedded broker.

With CI=true a missing MariaDB, Redis or broker binary fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from shared_lib import bootstrap
from shared_lib.config import get_settings
from shared_lib.devstack.stack import LocalStack
from tests.conftest import (
    create_mysql_database,
    drop_mysql_database,
    require_broker_binary,
    stack_environ,
)

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("catalog", "stock_in", "stock_out", "create_order", "stock_query", "reconcile")


@dataclass
class InProcess:
    apps: dict[str, Flask]
    engine: sa.Engine
    database_url: str


@pytest.fixture(scope="module")
def in_process(
    tmp_path_factory: pytest.TempPathFactory, mysql_server: str, redis_server: str
) -> Iterator[InProcess]:
    """Every function's WSGI app, as ``functions_framework.create_app`` builds it. Settings
    and the platform are cached per process: cleared before and after."""
    data_dir = tmp_path_factory.mktemp("badinput")
    database_url = create_mysql_database(mysql_server)
    prefix = f"psibad{uuid.uuid4().hex[:8]}"
    env = {
        "PSI_DATABASE_URL": database_url,
        "PSI_REDIS_URL": redis_server,
        "PSI_REDIS_PREFIX": prefix,
        "PSI_AUTH_DISABLED": "true",
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
