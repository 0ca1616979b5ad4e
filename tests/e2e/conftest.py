"""The whole product as processes: a LocalStack on the real MariaDB and Redis, with the
embedded Kafka-compatible broker, driven over real HTTP and Kafka.

With CI=true a missing MariaDB, Redis or broker binary fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa

from psi_local.stack import LocalStack
from shared_lib.adapters.redis_gate import RedisGate
from tests.conftest import (
    create_mysql_database,
    drop_mysql_database,
    require_broker_binary,
    stack_environ,
)
from tests.support import http

HTTP_TIMEOUT = 30.0


@dataclass
class E2E:
    stack: LocalStack
    database_url: str
    engine: sa.Engine
    redis: redis.Redis
    gate: RedisGate

    @property
    def bootstrap(self) -> str:
        return self.stack.kafka_bootstrap

    def url(self, function: str, path: str = "") -> str:
        return self.stack.url(function) + path.lstrip("/")

    def send(
        self,
        method: str,
        function: str,
        path: str = "",
        body: Any = None,
        key: str | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return (session or http()).request(
            method, self.url(function, path), json=body, headers=headers, timeout=HTTP_TIMEOUT
        )


def seed(env: E2E, warehouses: list[str], products: dict[str, int]) -> None:
    """The catalog, over HTTP through the catalog function."""
    with http() as session:
        for code in warehouses:
            body = {"name": f"e2e {code}"}
            reply = env.send("PUT", "catalog", f"warehouses/{code}", body, session=session)
            assert reply.status_code in (200, 201), reply.text
        for sku, reorder_point in products.items():
            body = {"name": f"e2e {sku}", "reorder_point": reorder_point}
            reply = env.send("PUT", "catalog", f"products/{sku}", body, session=session)
            assert reply.status_code in (200, 201), reply.text


@pytest.fixture(scope="module")
def e2e(
    tmp_path_factory: pytest.TempPathFactory, mysql_server: str, redis_server: str
) -> Iterator[E2E]:
    require_broker_binary()
    data_dir: Path = tmp_path_factory.mktemp("e2e-stack")
    database_url = create_mysql_database(mysql_server)
    prefix = f"psie2e{uuid.uuid4().hex[:8]}"
    environ = stack_environ(database_url, redis_server, prefix, data_dir)
    stack = LocalStack(
        data_dir=data_dir,
        base_port=0,
        environ=environ,
        delivery_options={"retry": 5, "backoff_delay": 0.05},
    )
    client = redis.Redis.from_url(redis_server, socket_timeout=5)
    engine = sa.create_engine(database_url)
    try:
        stack.start()
        yield E2E(stack, database_url, engine, client, RedisGate(client, prefix=prefix))
    finally:
        stack.stop()
        engine.dispose()
        for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
            client.delete(key)
        client.close()
        drop_mysql_database(mysql_server, database_url)
