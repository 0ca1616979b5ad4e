"""A fresh migrated database and Redis prefix per scenario, seeding, and the invariant
checks every scenario records."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from bench.common import REDIS_TIMEOUT, SEED_BATCH, BenchConfig, Scenario, sku_name, utcnow
from psi_local.invariants import balance_findings, gate_findings
from shared_lib.adapters import schema
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.services.cache import rebuild_all


class Stores:
    """A fresh, migrated MariaDB database and a Redis key prefix for one scenario."""

    def __init__(self, cfg: BenchConfig, label: str) -> None:
        self.cfg = cfg
        token = uuid.uuid4().hex[:10]
        self.database = f"psi_bench_{label}_{token}"[:64]
        self.url = f"{cfg.mysql_server}/{self.database}?charset=utf8mb4"
        self.redis_url = cfg.redis_url
        self.prefix = f"psib{token}"
        self._created = False

    def _on_server(self, statement: str) -> None:
        admin = sa.create_engine(self.cfg.mysql_server + "/", poolclass=NullPool)
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(statement))
        finally:
            admin.dispose()

    def __enter__(self) -> Stores:
        self._on_server(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
        self._created = True
        schema.upgrade(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._created:
            self._on_server(f"DROP DATABASE IF EXISTS `{self.database}`")
            self._created = False
        client = self.redis()
        try:
            delete_prefix(client, self.prefix)
        finally:
            client.close()

    def engine(self) -> Engine:
        """An engine for the parent process: no pooled connection survives into a fork."""
        return sa.create_engine(self.url, poolclass=NullPool)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=REDIS_TIMEOUT)

    def gate(self, client: redis.Redis | None = None) -> RedisGate:
        return RedisGate(client or self.redis(), prefix=self.prefix)

    def client_config(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "redis_url": self.redis_url, "prefix": self.prefix, **extra}


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key of one bench prefix (hash-tagged `{prefix:...}` and raw `prefix:...`)."""
    deleted = 0
    for pattern in (f"{{{prefix}:*", f"{prefix}:*"):
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=5_000):
            batch.append(key)
            if len(batch) >= 5_000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    return deleted


def has_sequence_engine(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT seq FROM seq_1_to_2")
        return True
    except sa.exc.DBAPIError:
        return False


def seed_levels(
    engine: Engine,
    warehouses: Sequence[str],
    n_skus: int,
    on_hand: int,
    *,
    extra_skus: Sequence[str] = (),
) -> int:
    """Warehouses, products S0000001.., one balance per (sku, warehouse) holding `on_hand`,
    and its receive movement (so balance == ledger sum). Bulk INSERT ... SELECT from
    MariaDB's sequence engine; multi-row INSERT batches where that engine is missing."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            t.warehouses.insert(),
            [
                {"code": w, "name": f"warehouse {w}", "created_at": now, "updated_at": now}
                for w in warehouses
            ],
        )
        if extra_skus:
            conn.execute(t.products.insert(), [_product(s, now) for s in extra_skus])
    if n_skus and has_sequence_engine(engine):
        for start in range(1, n_skus + 1, 250_000):
            stop = min(n_skus, start + 249_999)
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO products (sku, name, unit, reorder_point, track_inventory,"
                    " created_at, updated_at)"
                    " SELECT CONCAT('S', LPAD(seq, 7, '0')), CONCAT('product ', seq), 'pcs', 0,"
                    f" 1, NOW(6), NOW(6) FROM seq_{start}_to_{stop}"
                )
    else:
        for start in range(1, n_skus + 1, SEED_BATCH):
            rows = [
                _product(sku_name(n), now)
                for n in range(start, min(n_skus + 1, start + SEED_BATCH))
            ]
            with engine.begin() as conn:
                conn.execute(t.products.insert(), rows)
    levels = 0
    for warehouse in warehouses:
        with engine.begin() as conn:
            levels += conn.execute(
                sa.text(
                    "INSERT INTO stock_levels (warehouse, sku, on_hand, reserved, version,"
                    " updated_at) SELECT :wh, sku, :oh, 0, 1, NOW(6) FROM products"
                ),
                {"wh": warehouse, "oh": on_hand},
            ).rowcount
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO movements (kind, warehouse, sku, delta_on_hand, delta_reserved,"
                    " on_hand_after, reserved_after, reason, actor, created_at)"
                    " SELECT 'receive', warehouse, sku, on_hand, 0, on_hand, 0, 'bench seed',"
                    " 'bench', NOW(6) FROM stock_levels WHERE warehouse = :wh"
                ),
                {"wh": warehouse},
            )
    return levels


def _product(sku: str, now: datetime) -> dict[str, Any]:
    return {"sku": sku, "name": f"product {sku}", "created_at": now, "updated_at": now}


def load_gate(stores: Stores) -> int:
    """Rebuild the gate from the database the way `psi cache rebuild` does."""
    engine = make_engine(stores.url, pool_size=1)
    gate = stores.gate()
    try:
        return rebuild_all(SqlTransactions(engine), gate)
    finally:
        gate.close()
        engine.dispose()


# ---------------------------------------------------------------------------- invariants


def ledger_check(engine: Engine) -> dict[str, int]:
    """Balances vs ledger, added up by the database: mismatches and negative balances."""
    found = balance_findings(engine)
    return {
        "levels_checked": found.checked,
        "ledger_mismatches": found.broken["ledger"] + found.broken["ledger_orphan"],
        "negative_available": found.broken["negative"],
    }


def gate_check(
    engine: Engine,
    gate: RedisGate,
    *,
    only_skus: Collection[str] | None = None,
    settled: bool = True,
) -> dict[str, Any]:
    """Gate == database for every balance (or those of `only_skus`), no hold left behind."""
    found = gate_findings(engine, gate, settled=settled, only_skus=only_skus)
    return {
        "gate_levels_checked": found.checked,
        "gate_mismatches": found.broken["missing"] + found.broken["mismatch"],
        "gate_holds_left": found.broken["held"] + found.broken["holds_left"],
        "gate_not_ready": found.broken["not_ready"],
        "gate_mismatch_sample": found.sample[:5],
    }


def check_invariants(
    scenario: Scenario,
    engine: Engine,
    stores: Stores,
    *,
    only_skus: Collection[str] | None = None,
) -> None:
    """Ledger == balances, nothing negative, gate == database, no hold left: recorded as checks."""
    ledger = ledger_check(engine)
    gate = stores.gate()
    try:
        cached = gate_check(engine, gate, only_skus=only_skus)
    finally:
        gate.close()
    scenario.extra["invariants"] = {**ledger, **cached}
    scenario.check("ledger_mismatches", ledger["ledger_mismatches"], 0)
    scenario.check("negative_available", ledger["negative_available"], 0)
    scenario.check("gate_mismatches", cached["gate_mismatches"], 0)
    scenario.check("gate_holds_left", cached["gate_holds_left"], 0)
    scenario.check("gate_not_ready", cached["gate_not_ready"], 0)


def count_rows(engine: Engine, table: str, where: str = "", **params: Any) -> int:
    with engine.connect() as conn:
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int(conn.execute(sa.text(sql), params).scalar_one())


def level_of(engine: Engine, warehouse: str, sku: str) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT on_hand, reserved FROM stock_levels WHERE warehouse = :w AND sku = :s"),
            {"w": warehouse, "s": sku},
        ).one()
    return int(row[0]), int(row[1])
