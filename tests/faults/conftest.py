"""The stack the fault tests break: every writing function as a real process (LocalStack) on a
fresh MariaDB database, a PRIVATE redis-server (restarted and flushed by the tests; the
machine's shared Redis is never touched) and the embedded Kafka-compatible broker (restarted
by the tests), with the Kafka bridge.

With CI=true a missing MariaDB, redis-server or broker binary fails the tests; elsewhere they
skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from psi_local.stack import LocalStack
from shared_lib.adapters.redis_gate import RedisGate
from tests.conftest import (
    PrivateRedis,
    create_mysql_database,
    drop_mysql_database,
    require_broker_binary,
    service_missing,
    stack_environ,
)
from tests.faults.fault_env import FaultEnv

# the functions the workload and the checks talk to (catalog rows are written directly)
FUNCTIONS = ("stock_in", "stock_out", "create_order", "reconcile")


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, mysql_server: str) -> Iterator[FaultEnv]:
    require_broker_binary()
    data_dir: Path = tmp_path_factory.mktemp("faults-stack")
    private = PrivateRedis(tmp_path_factory.mktemp("faults-redis"))
    try:
        private.start()
    except Exception as exc:
        private.stop()
        service_missing("a private redis-server", exc)
    database_url = create_mysql_database(mysql_server)
    prefix = f"psif{uuid.uuid4().hex[:8]}"
    environ = stack_environ(
        database_url,
        private.url,
        prefix,
        data_dir,
        # a hold orphaned by a killed process returns its units after 5 s, not 30 s
        PSI_GATE_HOLD_MS="5000",
        PSI_GROUP_COMMIT_WAIT_MS="1500",  # an order's wait must stay inside its hold
        PSI_REDIS_RETRY_AFTER_SECONDS="1",
        # modest concurrency: the machine has 2 cores shared with other suites
        THREADS="6",
    )
    stack = LocalStack(
        data_dir=data_dir,
        base_port=0,
        environ=environ,
        functions=FUNCTIONS,
        ready_timeout=90.0,
        delivery_options={"retry": 5, "backoff_delay": 0.05},
        announce=lambda line: None,
    )
    engine = sa.create_engine(database_url, pool_size=4, pool_pre_ping=True)
    # server-level connections (no default database): the connection killer never hits them
    admin = sa.create_engine(mysql_server + "/", pool_size=2, pool_pre_ping=True)
    client = redis.Redis(port=private.port, socket_timeout=5)
    try:
        stack.start()
        yield FaultEnv(
            stack=stack,
            private_redis=private,
            database_url=database_url,
            database=database_url.rsplit("/", 1)[1].split("?")[0],
            engine=engine,
            admin=admin,
            redis=client,
            gate=RedisGate(client, prefix=prefix),
        )
    finally:
        stack.stop()
        client.close()
        engine.dispose()
        admin.dispose()
        private.stop()
        drop_mysql_database(mysql_server, database_url)
