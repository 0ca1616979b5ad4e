"""The stack a fault test runs against, and the faults it can strike: HTTP to the functions
(a bounded reconcile run, the opening stock of each test), a FLUSHALL or restart of the
PRIVATE redis-server, killed MariaDB connections and a broker restart."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
import requests
import sqlalchemy as sa

from psi_local.stack import LocalStack
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.domain.model import utcnow
from tests.conftest import PrivateRedis
from tests.support import http

HTTP_TIMEOUT = 15.0
WAREHOUSES = ("W1", "W2")
PLENTY_UNITS = 1_000_000  # never short: in-flight demand is a few hundred units at most
SCARCE_UNITS = 6  # runs out now and then: insufficient_stock is exercised too


@dataclass
class FaultEnv:
    stack: LocalStack
    private_redis: PrivateRedis
    database_url: str
    database: str
    engine: sa.Engine
    admin: sa.Engine
    redis: redis.Redis
    gate: RedisGate
    watermark: int = 0  # outbox id when the broker last came back (0: never restarted)
    broker_restarts: int = 0

    # -- HTTP
    def url(self, function: str, path: str = "") -> str:
        return self.stack.url(function) + path.lstrip("/")

    def reconcile(self, run_key: str, timeout: float = 60.0) -> dict[str, Any]:
        """One reconcile run over HTTP (retried on 503 / no answer, bounded)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        with http() as session:
            while time.monotonic() < deadline:
                try:
                    reply = session.post(
                        self.url("reconcile"),
                        json={"run_key": run_key},
                        headers={"Idempotency-Key": f"reconcile-{run_key}"},
                        timeout=HTTP_TIMEOUT * 2,
                    )
                except requests.RequestException as exc:
                    last = repr(exc)
                else:
                    if reply.status_code == 200:
                        return dict(reply.json())
                    last = (reply.status_code, reply.text)
                    if reply.status_code < 500 and reply.json().get("error") != (
                        "request_in_progress"
                    ):
                        break
                threading.Event().wait(0.5)
        raise AssertionError(f"reconcile {run_key} did not answer 200: {last}")

    # -- catalog and stock, written for each test
    def seed(self, tag: str) -> Catalog:
        catalog = Catalog(
            plenty=[f"{tag}-P{i}" for i in range(3)], scarce=[f"{tag}-S{i}" for i in range(2)]
        )
        now = utcnow()
        with self.engine.begin() as conn:
            existing = set(conn.execute(sa.select(t.warehouses.c.code)).scalars())
            missing = [w for w in WAREHOUSES if w not in existing]
            if missing:
                conn.execute(
                    t.warehouses.insert(),
                    [{"code": w, "name": w, "created_at": now, "updated_at": now} for w in missing],
                )
            conn.execute(
                t.products.insert(),
                [
                    {
                        "sku": sku,
                        "name": sku,
                        "reorder_point": 5,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for sku in catalog.all
                ],
            )
        with http() as session:
            for warehouse in WAREHOUSES:
                lines = [{"sku": s, "qty": PLENTY_UNITS} for s in catalog.plenty]
                lines += [{"sku": s, "qty": SCARCE_UNITS} for s in catalog.scarce]
                body = {"warehouse": warehouse, "lines": lines, "reason": "opening stock"}
                reply = session.post(
                    self.url("stock_in"),
                    json=body,
                    headers={"Idempotency-Key": f"{tag}-open-{warehouse}"},
                    timeout=HTTP_TIMEOUT,
                )
                assert reply.status_code == 200, reply.text
        return catalog

    # -- faults
    def flushall(self) -> None:
        """FLUSHALL of the PRIVATE redis-server only."""
        assert self.redis.connection_pool.connection_kwargs["port"] == self.private_redis.port
        self.redis.flushall()

    def restart_redis(self) -> None:
        self.private_redis.stop()
        self.private_redis.start()

    def kill_db_connections(self) -> int:
        """KILL every MariaDB connection whose current database is the test's database."""
        killed = 0
        with self.admin.connect() as conn:
            ids = conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = :db AND id <> CONNECTION_ID()"
                ),
                {"db": self.database},
            ).scalars()
            for connection_id in list(ids):
                with contextlib.suppress(sa.exc.DBAPIError):  # gone already
                    conn.execute(sa.text(f"KILL {int(connection_id)}"))
                    killed += 1
        return killed

    def restart_broker(self, down_for: float = 0.0) -> list[str]:
        """Stop the broker (every record is lost: memory storage), leave it down for
        ``down_for`` seconds, start it again on its port with its topics (``restart()``),
        and remember the outbox watermark (see ``check_events``).

        While the broker is down every function process is SIGKILLed and started again:
        the embedded broker also forgets the idempotent producer ids it handed out and
        numbers them from 1 again, so a producer created before the restart can share its
        id with one created after it, and the broker then acks the older producer's records
        as duplicates and drops them (reported; Apache Kafka keeps producer ids). Fresh
        processes have no producer from before the restart."""
        broker = self.stack.broker
        assert broker is not None, "the stack runs no embedded broker"
        notes = []
        broker.stop(graceful=False)
        notes.append("broker stopped")
        started = time.monotonic()
        for name in list(self.stack.processes):
            self.stack.kill_function(name)
        for name in list(self.stack.processes):
            self.stack.restart_function(name)
        notes.append(f"functions restarted in {time.monotonic() - started:.1f}s")
        threading.Event().wait(max(0.0, down_for - (time.monotonic() - started)))
        broker.restart()
        notes.append("broker started again")
        with self.engine.connect() as conn:
            self.watermark = int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.outbox.c.id), 0))).scalar()
            )
        self.broker_restarts += 1
        return notes


@dataclass
class Catalog:
    plenty: list[str]
    scarce: list[str]

    @property
    def all(self) -> list[str]:
        return self.plenty + self.scarce
