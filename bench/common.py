"""What every scenario shares: its own stores, seeding, a multi-process client runner,
latency statistics, invariant checks and the result record written to JSON.

Each scenario gets a fresh MariaDB database (`psi_bench_<hex>`, dropped afterwards) and a
fresh Redis key prefix (`psib<hex>`, its keys deleted afterwards). Clients are separate
processes (fork where available, else spawn); each builds its own engine and Redis client
after it starts, then waits on a start barrier so that all of them begin together.
"""

from __future__ import annotations

import http.client
import logging
import os
import platform
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

log = logging.getLogger("bench")

MYSQL_SERVER = os.environ.get(
    "PSI_BENCH_MYSQL_URL",
    os.environ.get("PSI_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306"),
)
REDIS_URL = os.environ.get(
    "PSI_BENCH_REDIS_URL", os.environ.get("PSI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
)
# generous: 64 client processes share 2 cores, and a slow reply must not look like an outage
REDIS_TIMEOUT = 5.0
BARRIER_TIMEOUT = 180.0
MAX_ERRORS_PER_CLIENT = 200
SEED_BATCH = 5_000


@dataclass(frozen=True)
class BenchConfig:
    quick: bool
    out: Path
    mysql_server: str = MYSQL_SERVER
    redis_url: str = REDIS_URL


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status of one GET on a new loopback connection; None when nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def sku_name(n: int) -> str:
    """The n-th seeded SKU (1-based); `seed_levels` builds the same names in SQL."""
    return f"S{n:07d}"


# ---------------------------------------------------------------------------- results


class Scenario:
    """The record of one scenario: variants, targets (reported) and checks (asserted)."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.params = params
        self.variants: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}

    def check(self, name: str, actual: Any, expected: Any) -> bool:
        ok = actual == expected
        self.checks[name] = {"ok": ok, "actual": actual, "expected": expected}
        if not ok:
            log.error("%s: check %s failed: expected %r, got %r", self.name, name, expected, actual)
        return ok

    def target(self, name: str, value: float | None, required: float, op: str, what: str) -> None:
        met = value is not None and (value >= required if op == ">=" else value <= required)
        self.targets[name] = {
            "value": None if value is None else round(value, 3),
            "required": required,
            "op": op,
            "met": met,
            "what": what,
        }

    @property
    def correct(self) -> bool:
        return all(c["ok"] for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "variants": self.variants,
            "targets": self.targets,
            "checks": self.checks,
            "correct": self.correct,
            **self.extra,
        }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def machine_info(cfg: BenchConfig) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import psutil

        info["memory_mb"] = round(psutil.virtual_memory().total / 2**20)
    except ImportError:
        pass
    engine = sa.create_engine(cfg.mysql_server + "/", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            info["mariadb_version"] = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
            wanted = (
                "innodb_flush_log_at_trx_commit",
                "innodb_buffer_pool_size",
                "log_bin",
                "sync_binlog",
                "max_connections",
            )
            rows = conn.exec_driver_sql(
                "SHOW VARIABLES WHERE Variable_name IN (" + ",".join(f"'{w}'" for w in wanted) + ")"
            ).all()
            info["mariadb_settings"] = {r[0]: r[1] for r in rows}
    finally:
        engine.dispose()
    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=REDIS_TIMEOUT)
    try:
        info["redis_version"] = client.info("server").get("redis_version")
    finally:
        client.close()
    return info


def services_reachable(cfg: BenchConfig) -> str | None:
    """None when MariaDB and Redis answer, else what is missing."""
    try:
        engine = sa.create_engine(
            cfg.mysql_server + "/", poolclass=NullPool, connect_args={"connect_timeout": 3}
        )
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:
        return f"MariaDB/MySQL at {cfg.mysql_server} is not reachable: {exc}"
    try:
        redis.Redis.from_url(cfg.redis_url, socket_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {cfg.redis_url} is not reachable: {exc}"
    return None
