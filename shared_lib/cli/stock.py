"""psi stock show (database levels next to the gate's view) and psi cache rebuild."""

from __future__ import annotations

import argparse
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared_lib.cli.base import (
    CommandError,
    command,
    database_engine,
    open_gate,
    redis_url,
    settings,
    shown,
)
from shared_lib.config import DISABLED


def _stock_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sku")
    parser.add_argument("--warehouse", "-w", default=None, metavar="W", help="only this one")


def stock_rows(engine: Engine, sku: str, warehouse: str | None) -> list[Any]:
    from shared_lib.adapters import sql_tables as t

    s = t.stock_levels
    query = sa.select(s).where(s.c.sku == sku).order_by(s.c.warehouse)
    if warehouse is not None:
        query = query.where(s.c.warehouse == warehouse)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
        known = conn.execute(sa.select(t.products.c.sku).where(t.products.c.sku == sku)).first()
    if not rows and known is None:
        raise CommandError(f"unknown sku {sku!r}")
    return rows


def gate_state(gate: Any, row: Any) -> tuple[str, str]:
    """(Redis columns, verdict) for one database row."""
    if not gate.is_ready(row.warehouse):
        return "-", "not ready (rebuilt on first use, or psi cache rebuild)"
    cached = gate.read(row.warehouse, [row.sku]).get(row.sku)
    if cached is None:
        return "-", "DRIFT: missing in Redis"
    columns = (
        f"{cached.on_hand:>8} {cached.reserved:>8} {cached.held:>5} "
        f"{cached.available:>9} {cached.version:>7}"
    )
    if (cached.on_hand, cached.reserved) != (int(row.on_hand), int(row.reserved)):
        return columns, "DRIFT"
    return columns, "ok"


@command("stock", "show", help="stock levels: database next to Redis", arguments=_stock_arguments)
def run_stock_show(args: argparse.Namespace) -> int:
    import redis

    config = settings()
    engine = database_engine(config)
    try:
        rows = stock_rows(engine, args.sku, args.warehouse)
    finally:
        engine.dispose()
    where = f" in {args.warehouse}" if args.warehouse else ""
    if not rows:
        print(f"{args.sku}: no stock level{where} yet")
        return 0
    gate = None if config.redis_url == DISABLED else open_gate(config)
    print(f"sku {args.sku}   (database | redis {shown(redis_url(config))})")
    print(
        f"{'warehouse':<12}{'on_hand':>8} {'reserved':>8} {'available':>9} {'version':>7} | "
        f"{'on_hand':>8} {'reserved':>8} {'held':>5} {'available':>9} {'version':>7}  state"
    )
    code = 0
    try:
        for row in rows:
            available = int(row.on_hand) - int(row.reserved)
            db = (
                f"{row.warehouse:<12}{row.on_hand:>8} {row.reserved:>8} {available:>9} "
                f"{row.version:>7}"
            )
            if gate is None:
                cached, verdict = "-", "redis disabled"
            else:
                try:
                    cached, verdict = gate_state(gate, row)
                except redis.RedisError as exc:
                    cached, verdict, code = "-", f"redis unreachable: {exc}", 1
            print(f"{db} | {cached:<42}  {verdict}")
    finally:
        if gate is not None:
            gate.close()
    return code


@command("cache", "rebuild", help="reload the Redis gate from the database")
def run_cache_rebuild(args: argparse.Namespace) -> int:
    from shared_lib.adapters.sql import SqlTransactions
    from shared_lib.services.cache import rebuild_all

    config = settings()
    gate = open_gate(config)
    engine = database_engine(config)
    try:
        gate.client.ping()  # an empty catalog would otherwise never touch Redis
        tx = SqlTransactions(engine)
        warehouses = tx.run(lambda store: store.warehouse_codes())
        levels = rebuild_all(tx, gate)
    finally:
        engine.dispose()
        gate.close()
    print(
        f"cache rebuilt: {levels} levels in {len(warehouses)} warehouses "
        f"(redis {shown(redis_url(config))}, prefix {config.redis_prefix})"
    )
    return 0
