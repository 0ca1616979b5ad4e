"""The order and movement lists are served by indexes, on MariaDB and on SQLite (the embedded
default): the statements the read model really sends (caught on their way to the driver)
are explained on a few thousand rows, and each plan must read an index (MariaDB: a key,
not a full scan) in the list's order (no filesort / temporary B-tree) where an index can
give that order. Migration 0004 builds exactly the indexes the tables declare."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared_lib.adapters import schema
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.adapters.sql_read import SqlReadModel
from shared_lib.domain.model import OrderStatus
from shared_lib.services.ports import MovementFilter, OrderFilter, TimeRange
from tests.conftest import create_mysql_database, drop_mysql_database

pytestmark = pytest.mark.integration

T0 = datetime(2026, 10, 1)
WAREHOUSES = [f"W{n:02d}" for n in range(20)]
SKUS = [f"S{n:03d}" for n in range(50)]
# MariaDB's cost model walks an index for a page only when the page is a small part of the
# table (a page of 101 of 4,000 orders is cheaper as one scan and a sort); 20,000 is enough
ORDERS = 20_000
MOVEMENTS = 6000
STATUSES = list(OrderStatus)
DAY = TimeRange(T0 + timedelta(days=10), T0 + timedelta(days=11))
PAGE = 101  # what a default page asks for: one more than it shows
# MariaDB's access types that look up the filter's values ("index" walks a whole index)
SEARCHES = {"const", "eq_ref", "ref", "ref_or_null", "range", "index_merge"}


@dataclass(frozen=True)
class Plan:
    """What one statement's plan says, in the terms the assertions need."""

    text: str
    index: str | None  # the index read (None: the table itself, row by row)
    searches: bool  # the index is searched for the filter's values (not walked whole)
    sorts: bool  # the rows are sorted after they are read

    def __str__(self) -> str:
        return self.text


def seed(engine: sa.Engine) -> None:
    """20 warehouses x 50 skus, 20,000 orders over 40 days, 6,000 movements over 40 days."""
    day_seconds = 40 * 86_400
    with engine.begin() as conn:
        conn.execute(
            t.warehouses.insert(),
            [{"code": w, "name": w, "created_at": T0, "updated_at": T0} for w in WAREHOUSES],
        )
        conn.execute(
            t.products.insert(),
            [{"sku": s, "name": s, "created_at": T0, "updated_at": T0} for s in SKUS],
        )
        conn.execute(
            t.stock_levels.insert(),
            [{"warehouse": w, "sku": s, "updated_at": T0} for w in WAREHOUSES for s in SKUS],
        )
        orders = []
        for n in range(ORDERS):
            at = T0 + timedelta(seconds=n * day_seconds // ORDERS)
            orders.append(
                {
                    "order_id": f"SO-{n:05d}",
                    "warehouse": WAREHOUSES[n % len(WAREHOUSES)],
                    "customer": f"customer {n % 300}" if n % 7 else None,
                    "status": STATUSES[n % len(STATUSES)].value,
                    "hold_until": at + timedelta(minutes=15),
                    "created_at": at,
                    "updated_at": at,
                }
            )
        conn.execute(t.orders.insert(), orders)
        conn.execute(
            t.order_lines.insert(),
            [
                {"order_id": o["order_id"], "sku": SKUS[n % len(SKUS)], "qty": 1}
                for n, o in enumerate(orders)
            ],
        )
        conn.execute(
            t.movements.insert(),
            [
                {
                    "kind": "receive",
                    "warehouse": WAREHOUSES[n % len(WAREHOUSES)],
                    "sku": SKUS[n % len(SKUS)],
                    "delta_on_hand": 1,
                    "delta_reserved": 0,
                    "on_hand_after": n,
                    "reserved_after": 0,
                    "reference": f"PO-{n % 500}" if n % 3 else None,
                    "created_at": T0 + timedelta(seconds=n * day_seconds // MOVEMENTS),
                }
                for n in range(MOVEMENTS)
            ],
        )
    if engine.dialect.name != "sqlite":
        # fresh statistics, as a server keeps them; the embedded SQLite never runs ANALYZE
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE TABLE orders, order_lines, movements").all()


@pytest.fixture(scope="module", params=["mysql", "sqlite"])
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sa.Engine]:
    """One seeded database per dialect for the module (seeding is what takes the time)."""
    server = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('lists') / 'psi.sqlite3'}"
        schema.upgrade(url)
    else:
        server = request.getfixturevalue("mysql_server")
        url = create_mysql_database(server)
    engine = make_engine(url, pool_size=1)
    try:
        seed(engine)
        yield engine
    finally:
        engine.dispose()
        if server is not None:
            drop_mysql_database(server, url)


def sent(engine: sa.Engine, read: Callable[[SqlReadModel], object]) -> list[tuple[str, Any]]:
    """The statements and parameters the read model hands the driver for one read."""
    caught: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        caught.append((statement, parameters))

    with engine.connect() as conn:
        sa.event.listen(engine, "before_cursor_execute", catch)
        try:
            read(SqlReadModel(conn))
        finally:
            sa.event.remove(engine, "before_cursor_execute", catch)
    return [(statement, p) for statement, p in caught if statement.startswith("SELECT")]


def explain(engine: sa.Engine, statement: str, parameters: Any) -> Plan:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            details = [str(r[-1]) for r in rows]
            text = "; ".join(details)
            used = [d.split(" USING ", 1)[1] for d in details if " USING " in d]
            searches = details[0].startswith("SEARCH")
            sorts = "TEMP B-TREE" in text
            # a bare scan in the list's order walks the rowid: movements' INTEGER PRIMARY KEY
            index = used[0] if used else (None if sorts else "rowid")
            return Plan(text, index, searches, sorts)
        rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).mappings().all()
        assert len(rows) == 1, rows
        row = rows[0]
        text = f"type={row['type']} key={row['key']} rows={row['rows']} extra={row['Extra']}"
        index = row["key"] if row["type"] != "ALL" else None
        searches = row["type"] in SEARCHES
        return Plan(text, index, searches, "filesort" in (row["Extra"] or ""))


def list_plan(engine: sa.Engine, read: Callable[[SqlReadModel], object]) -> Plan:
    statements = sent(engine, read)
    assert statements, "the read sent nothing"
    return explain(engine, *statements[0])


ORDER_READS: dict[str, Callable[[SqlReadModel], object]] = {
    "no filter": lambda r: r.orders_page(OrderFilter(), None, PAGE),
    "no filter, a later page": lambda r: r.orders_page(
        OrderFilter(), (T0 + timedelta(days=20), "SO-10000"), PAGE
    ),
    "status": lambda r: r.orders_page(OrderFilter(status=OrderStatus.SHIPPED), None, PAGE),
    "warehouse": lambda r: r.orders_page(OrderFilter(warehouse="W07"), None, PAGE),
    "customer": lambda r: r.orders_page(OrderFilter(customer="customer 42"), None, PAGE),
    "created range": lambda r: r.orders_page(OrderFilter(created=DAY), None, PAGE),
    "status in a created range, a later page": lambda r: r.orders_page(
        OrderFilter(status=OrderStatus.RESERVED, created=DAY),
        (T0 + timedelta(days=10, hours=12), "SO-05250"),
        PAGE,
    ),
}


@pytest.mark.parametrize("case", list(ORDER_READS))
def test_order_lists_read_an_index_in_the_lists_order(seeded: sa.Engine, case: str) -> None:
    plan = list_plan(seeded, ORDER_READS[case])
    assert plan.index is not None, f"{case}: {plan}"
    assert plan.searches or case == "no filter", f"{case}: {plan}"
    assert not plan.sorts, f"{case}: {plan}"


def test_the_lines_of_a_page_come_in_one_statement_by_the_primary_key(seeded: sa.Engine) -> None:
    statements = sent(seeded, ORDER_READS["no filter"])
    assert len(statements) == 2, statements  # the orders, then all their lines
    plan = explain(seeded, *statements[1])
    # SQLite keeps a primary key that is not the rowid as an automatic index
    primary = "sqlite_autoindex_order_lines" if seeded.dialect.name == "sqlite" else "PRIMARY"
    assert plan.index is not None and primary in plan.index, plan


MOVEMENT_READS: dict[str, Callable[[SqlReadModel], object]] = {
    "no filter": lambda r: r.movements_page(MovementFilter(), None, PAGE),
    "sku and warehouse": lambda r: r.movements_page(
        MovementFilter(sku="S007", warehouse="W07"), None, PAGE
    ),
    "reference": lambda r: r.movements_page(MovementFilter(reference="PO-42"), None, PAGE),
    "reference, a later page": lambda r: r.movements_page(
        MovementFilter(reference="PO-42"), 3000, PAGE
    ),
}


@pytest.mark.parametrize("case", list(MOVEMENT_READS))
def test_movement_lists_read_an_index_in_the_lists_order(seeded: sa.Engine, case: str) -> None:
    plan = list_plan(seeded, MOVEMENT_READS[case])
    assert plan.index is not None, f"{case}: {plan}"
    assert plan.searches or case == "no filter", f"{case}: {plan}"
    assert not plan.sorts, f"{case}: {plan}"


def test_movements_in_a_time_range_read_an_index(seeded: sa.Engine) -> None:
    """The ledger's order is its id; no index on the time can give it, so the rows of the
    range are sorted (a range of a day here, the size of what a caller asks for)."""
    plan = list_plan(seeded, lambda r: r.movements_page(MovementFilter(created=DAY), None, PAGE))
    assert plan.index is not None and plan.searches, plan


# ---- migration 0004 ---------------------------------------------------------------------

NEW = {
    "ix_orders_created_at_order_id",
    "ix_orders_status_created_at_order_id",
    "ix_orders_warehouse_created_at_order_id",
    "ix_orders_customer_created_at_order_id",
    "ix_movements_reference_id",
    "ix_movements_created_at",
}


def test_0004_builds_the_declared_indexes_and_goes_down_and_up(empty_database: str) -> None:
    engine = sa.create_engine(empty_database)

    def indexes() -> set[tuple[str, str, tuple[str, ...]]]:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                (table, i["name"], tuple(i["column_names"]))
                for table in ("orders", "movements")
                for i in inspector.get_indexes(table)
            }

    try:
        schema.upgrade(empty_database, "0003")
        at_0003 = indexes()
        schema.upgrade(empty_database, "0004")
        at_0004 = indexes()
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), t.metadata)
        assert [d for d in differences if any(name in repr(d) for name in NEW)] == []
        assert {name for _, name, _ in at_0004} >= NEW
        command.downgrade(schema.alembic_config(empty_database), "0003")
        assert indexes() == at_0003
        schema.upgrade(empty_database, "0004")
        assert indexes() == at_0004
    finally:
        engine.dispose()
