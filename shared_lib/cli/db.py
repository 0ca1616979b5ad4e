"""psi db upgrade (alembic) and psi seed --demo."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared_lib.cli.base import (
    command,
    database_engine,
    settings,
    shown,
)


def _upgrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default="head", help="target revision (default head)")


@command("db", "upgrade", help="migrate the database schema", arguments=_upgrade_arguments)
def run_db_upgrade(args: argparse.Namespace) -> int:
    from shared_lib.adapters import schema

    config = settings()
    if config.embedded_database:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    url = config.sqlalchemy_url
    schema.upgrade(url, args.revision)
    print(f"database {shown(url)} at revision {schema.current_revision(url)}")
    return 0


DEMO_WAREHOUSES = (("MAIN", "Main warehouse"), ("EAST", "East depot"))
# sku, name, unit, reorder point
DEMO_PRODUCTS = (
    ("TEA-GREEN-100G", "Green tea 100 g", "pcs", 20),
    ("COFFEE-BEANS-1KG", "Coffee beans 1 kg", "bag", 10),
    ("MUG-CERAMIC", "Ceramic mug", "pcs", 15),
    ("KETTLE-1L", "Electric kettle 1 L", "pcs", 5),
    ("FILTER-PAPER-100", "Coffee filter papers (100)", "box", 30),
)


def seed_demo(engine: Engine) -> tuple[int, int]:
    """Insert the demo warehouses and products that are missing; (new warehouses, new
    products). Rows already there are left as they are."""
    from shared_lib.adapters import sql_tables as t

    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        have_w = set(conn.execute(sa.select(t.warehouses.c.code)).scalars())
        new_w = [
            {"code": code, "name": name, "created_at": now, "updated_at": now}
            for code, name in DEMO_WAREHOUSES
            if code not in have_w
        ]
        have_p = set(conn.execute(sa.select(t.products.c.sku)).scalars())
        new_p = [
            {
                "sku": sku,
                "name": name,
                "unit": unit,
                "reorder_point": reorder_point,
                "created_at": now,
                "updated_at": now,
            }
            for sku, name, unit, reorder_point in DEMO_PRODUCTS
            if sku not in have_p
        ]
        if new_w:
            conn.execute(t.warehouses.insert(), new_w)
        if new_p:
            conn.execute(t.products.insert(), new_p)
    return len(new_w), len(new_p)


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo", action="store_true", required=True, help="the demo catalog (required)"
    )


@command("seed", help="create demo warehouses and products", arguments=_seed_arguments)
def run_seed(args: argparse.Namespace) -> int:
    engine = database_engine(settings())
    try:
        new_w, new_p = seed_demo(engine)
    finally:
        engine.dispose()
    print(f"warehouses: {', '.join(c for c, _ in DEMO_WAREHOUSES)} ({new_w} new)")
    print(f"products:   {', '.join(s for s, *_ in DEMO_PRODUCTS)} ({new_p} new)")
    return 0
