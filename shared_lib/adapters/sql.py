"""The system of record over SQLAlchemy Core: one transaction per unit of work (retried
whole), and the store a use case writes through."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from shared_lib.adapters import sql_bulk
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.sql_catalog import SqlCatalogWrites
from shared_lib.adapters.sql_engine import is_duplicate, is_transient, is_unreachable
from shared_lib.adapters.sql_read import (
    SqlReadModel,
    level_from_row,
    order_from_row,
    product_from_row,
)
from shared_lib.domain.errors import StoreUnavailable
from shared_lib.domain.model import (
    Change,
    Level,
    Order,
    OrderStatus,
    Product,
    Warehouse,
    utcnow,
)
from shared_lib.services.ports import AlreadyRecorded, MovementNote, StockStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class SqlTransactions:
    """Runs one unit of work per call, retried whole on deadlocks and lost connections.

    A retry after an ambiguous commit is safe: the idempotency record written in the same
    transaction makes the second attempt answer with the first one's result.
    """

    def __init__(self, engine: Engine, *, attempts: int = 5) -> None:
        self.engine = engine
        self.attempts = attempts

    def run(self, work: Callable[[StockStore], T]) -> T:
        return self.run_on_connection(lambda conn: work(SqlStore(conn)))

    def run_on_connection(self, work: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        """`snapshot`: every statement reads one consistent snapshot (MySQL REPEATABLE READ)."""
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.02, max=1.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, self.engine.connect() as conn:
                    if snapshot and conn.dialect.name in ("mysql", "mariadb"):
                        conn.execution_options(isolation_level="REPEATABLE READ")
                    with conn.begin():
                        return work(conn)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if is_unreachable(exc) or is_transient(exc):
                log.warning("database unavailable: %s", exc)
                raise StoreUnavailable("database") from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover


# the hot path's statements on MySQL and MariaDB, as plain SQL text (no statement building)
LEVEL_SQL = (
    "SELECT sku, warehouse, on_hand, reserved, version FROM stock_levels"
    " WHERE warehouse = %s AND sku = %s"
)
# conditional: never below zero, never more reserved than on hand
APPLY_SQL = (
    "UPDATE stock_levels SET on_hand = on_hand + %s, reserved = reserved + %s,"
    " version = version + 1, updated_at = %s WHERE warehouse = %s AND sku = %s"
    " AND on_hand + %s >= 0 AND reserved + %s >= 0 AND on_hand + %s - (reserved + %s) >= 0"
)


class SqlStore(SqlCatalogWrites, SqlReadModel):
    """One transaction's view of the system of record (implements services.ports.StockStore)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.dialect = conn.dialect.name
        # MySQL and MariaDB: the group-commit path's statements are plain SQL text
        self.mysql = self.dialect in ("mysql", "mariadb")
        self.json_table = sql_bulk.has_json_table(conn)
        self.insert_returning = self.json_table and sql_bulk.has_insert_returning(conn)

    def _insert_many(self, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
        """One multi-row INSERT: with JSON_TABLE the rows travel as one JSON document
        (sql_bulk); on an older MySQL they go to the driver's executemany, which renders
        them as one statement; elsewhere through SQLAlchemy."""
        if not rows:
            return
        if self.json_table:
            sql_bulk.insert_rows(self.conn, table, rows)
            return
        if not self.mysql:
            self.conn.execute(table.insert(), list(rows))
            return
        columns = list(rows[0])
        statement = "INSERT INTO {} ({}) VALUES ({})".format(
            table.name, ", ".join(columns), ", ".join(["%s"] * len(columns))
        )
        self.conn.exec_driver_sql(statement, [tuple(r[c] for c in columns) for r in rows])

    # -- idempotency
    def recall(self, key: str) -> tuple[str, dict[str, Any]] | None:
        r = t.idempotency_records
        row = self.conn.execute(
            sa.select(r.c.fingerprint, r.c.response).where(r.c.idempotency_key == key)
        ).first()
        return (row.fingerprint, json.loads(row.response)) if row else None

    def remember(self, key: str, fingerprint: str, kind: str, response: dict[str, Any]) -> None:
        self.remember_many([(key, fingerprint, kind, response)])

    def recall_many(self, keys: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        r = t.idempotency_records
        if not keys:
            return {}
        if self.mysql:
            rows = sql_bulk.select_in(
                self.conn,
                "SELECT idempotency_key, fingerprint, response FROM idempotency_records",
                "idempotency_key",
                sorted(set(keys)),
            )
            return {row[0]: (row[1], json.loads(row[2])) for row in rows}
        query = sa.select(r.c.idempotency_key, r.c.fingerprint, r.c.response).where(
            r.c.idempotency_key.in_(sorted(set(keys)))
        )
        return {
            row.idempotency_key: (row.fingerprint, json.loads(row.response))
            for row in self.conn.execute(query)
        }

    def remember_many(self, records: Sequence[tuple[str, str, str, dict[str, Any]]]) -> None:
        now = utcnow()
        rows = [
            {
                "idempotency_key": key,
                "fingerprint": fingerprint,
                "kind": kind,
                "response": json.dumps(response, separators=(",", ":")),
                "created_at": now,
            }
            for key, fingerprint, kind, response in records
        ]
        try:
            self._insert_many(t.idempotency_records, rows)
        except sa.exc.IntegrityError as exc:
            raise AlreadyRecorded(rows[0]["idempotency_key"]) from exc

    # -- catalog
    def product(self, sku: str) -> Product | None:
        return self.products([sku]).get(sku)

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        p = t.products
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        if self.mysql:
            columns = "sku, name, unit, reorder_point, track_inventory"
            rows = sql_bulk.select_in(self.conn, f"SELECT {columns} FROM products", "sku", wanted)
        else:
            rows = list(self.conn.execute(sa.select(p).where(p.c.sku.in_(wanted))))
        return {r.sku: product_from_row(r) for r in rows}

    def warehouse(self, code: str) -> Warehouse | None:
        w = t.warehouses
        if self.mysql:
            sql = "SELECT code, name FROM warehouses WHERE code = %s"
            row = self.conn.exec_driver_sql(sql, (code,)).first()
        else:
            row = self.conn.execute(sa.select(w.c.code, w.c.name).where(w.c.code == code)).first()
        return Warehouse(row.code, row.name) if row else None

    # -- balances
    def level(self, warehouse: str, sku: str) -> Level | None:
        s = t.stock_levels
        if self.mysql:
            row = self.conn.exec_driver_sql(LEVEL_SQL, (warehouse, sku)).first()
        else:
            query = sa.select(s).where(s.c.warehouse == warehouse, s.c.sku == sku)
            row = self.conn.execute(query).first()
        return level_from_row(row) if row else None

    def apply(self, change: Change) -> Level | None:
        if self.mysql and change.expect_on_hand is None:
            deltas = (change.d_on_hand, change.d_reserved)
            where = (change.warehouse, change.sku, *deltas, *deltas)
            changed = self.conn.exec_driver_sql(APPLY_SQL, (*deltas, utcnow(), *where))
            return self.level(change.warehouse, change.sku) if changed.rowcount == 1 else None
        s = t.stock_levels
        on_hand = s.c.on_hand + change.d_on_hand
        reserved = s.c.reserved + change.d_reserved
        guard = [
            s.c.warehouse == change.warehouse,
            s.c.sku == change.sku,
            on_hand >= 0,
            reserved >= 0,
            on_hand - reserved >= 0,
        ]
        if change.expect_on_hand is not None:
            guard.append(s.c.on_hand == change.expect_on_hand)
        result = self.conn.execute(
            sa.update(s)
            .where(*guard)
            .values(
                on_hand=on_hand, reserved=reserved, version=s.c.version + 1, updated_at=utcnow()
            )
        )
        if result.rowcount != 1:
            return None
        return self.level(change.warehouse, change.sku)

    def create_level(self, warehouse: str, sku: str) -> None:
        ignore = "OR IGNORE" if self.dialect == "sqlite" else "IGNORE"
        self.conn.execute(
            t.stock_levels.insert()
            .prefix_with(ignore)
            .values(
                warehouse=warehouse, sku=sku, on_hand=0, reserved=0, version=0, updated_at=utcnow()
            )
        )

    def levels_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Level]:
        s = t.stock_levels
        query = sa.select(s).where(s.c.warehouse == warehouse)
        if after_sku is not None:
            query = query.where(s.c.sku > after_sku)
        return [level_from_row(r) for r in self.conn.execute(query.order_by(s.c.sku).limit(limit))]

    def recent_requests(
        self, warehouse: str, since: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[tuple[str, str, datetime]]:
        """Recorded requests since ``since`` that changed a level of the warehouse, in the
        order of the ``created_at`` index (a keyset page after ``after``: time, key)."""
        r, m = t.idempotency_records, t.movements
        touched = sa.exists().where(
            m.c.idempotency_key == r.c.idempotency_key, m.c.warehouse == warehouse
        )
        query = sa.select(r.c.idempotency_key, r.c.fingerprint, r.c.created_at).where(touched)
        if after is None:
            query = query.where(r.c.created_at >= since)
        else:
            at, key = after
            query = query.where(
                sa.or_(
                    r.c.created_at > at,
                    sa.and_(r.c.created_at == at, r.c.idempotency_key > key),
                )
            )
        query = query.order_by(r.c.created_at, r.c.idempotency_key).limit(limit)
        return [
            (row.idempotency_key, row.fingerprint, row.created_at)
            for row in self.conn.execute(query)
        ]

    def warehouse_codes(self) -> list[str]:
        w = t.warehouses
        return list(self.conn.execute(sa.select(w.c.code).order_by(w.c.code)).scalars())

    # -- ledger
    def append_movement(self, change: Change, after: Level, note: MovementNote) -> int:
        result = self.conn.execute(t.movements.insert().values(_movement(change, after, note)))
        return int(result.inserted_primary_key[0])

    def append_movements(self, rows: Sequence[tuple[Change, Level, MovementNote]]) -> list[int]:
        """One multi-row INSERT ... RETURNING where the server has it (MariaDB, SQLite)."""
        if self.insert_returning:
            movements = [_movement(*row) for row in rows]
            returned = sql_bulk.insert_rows(self.conn, t.movements, movements, returning=("id",))
            if len(returned) != len(rows):
                raise RuntimeError("the ledger insert returned another number of rows")
            return [int(r[0]) for r in returned]
        if not self.conn.dialect.insert_executemany_returning_sort_by_parameter_order:
            return [self.append_movement(*row) for row in rows]
        insert = t.movements.insert().returning(t.movements.c.id, sort_by_parameter_order=True)
        result = self.conn.execute(insert, [_movement(*row) for row in rows])
        return [int(r[0]) for r in result]

    # -- orders
    def add_order(self, order: Order, at: datetime) -> None:
        try:
            self.conn.execute(t.orders.insert().values(_order_row(order, at)))
        except sa.exc.IntegrityError as exc:
            if not is_duplicate(exc):
                raise
            # a concurrent transaction created it: the retry finds it (or its idempotency record)
            raise AlreadyRecorded(order.order_id) from exc
        self.conn.execute(
            t.order_lines.insert(),
            [{"order_id": order.order_id, "sku": ln.sku, "qty": ln.qty} for ln in order.lines],
        )

    def add_orders(self, orders: Sequence[tuple[Order, datetime]]) -> None:
        if not orders:
            return
        try:
            self._insert_many(t.orders, [_order_row(order, at) for order, at in orders])
        except sa.exc.IntegrityError as exc:
            if not is_duplicate(exc):
                raise
            raise AlreadyRecorded(orders[0][0].order_id) from exc
        self._insert_many(
            t.order_lines,
            [
                {"order_id": order.order_id, "sku": ln.sku, "qty": ln.qty}
                for order, _ in orders
                for ln in order.lines
            ],
        )

    def existing_orders(self, order_ids: Sequence[str]) -> set[str]:
        o = t.orders
        if not order_ids:
            return set()
        if self.mysql:
            ids = sorted(set(order_ids))
            return {
                r[0]
                for r in sql_bulk.select_in(
                    self.conn, "SELECT order_id FROM orders", "order_id", ids
                )
            }
        query = sa.select(o.c.order_id).where(o.c.order_id.in_(sorted(set(order_ids))))
        return set(self.conn.execute(query).scalars())

    def order(self, order_id: str, *, lock: bool = False) -> Order | None:
        o = t.orders
        query = sa.select(o).where(o.c.order_id == order_id)
        row = self.conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            return None
        return order_from_row(row, self._lines_of([order_id])[order_id])

    def set_order_status(self, order_id: str, status: OrderStatus, at: datetime) -> None:
        o = t.orders
        self.conn.execute(
            sa.update(o).where(o.c.order_id == order_id).values(status=status.value, updated_at=at)
        )

    # -- outbox
    def add_event(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self.add_events([(topic, key, event)])

    def add_events(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        now = utcnow()
        rows = [
            {
                "event_id": event["id"],
                "topic": topic,
                "event_key": key,
                "payload": json.dumps(event, separators=(",", ":")),
                "created_at": now,
            }
            for topic, key, event in events
        ]
        self._insert_many(t.outbox, rows)


def _movement(change: Change, after: Level, note: MovementNote) -> dict[str, Any]:
    return {
        "kind": change.movement.value,
        "warehouse": change.warehouse,
        "sku": change.sku,
        "delta_on_hand": change.d_on_hand,
        "delta_reserved": change.d_reserved,
        "on_hand_after": after.on_hand,
        "reserved_after": after.reserved,
        "reason": note.reason,
        "reference": note.reference,
        "order_id": note.order_id,
        "actor": note.meta.actor,
        "idempotency_key": note.meta.idempotency_key,
        "created_at": note.at,
    }


def _order_row(order: Order, at: datetime) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "warehouse": order.warehouse,
        "customer": order.customer,
        "status": order.status.value,
        "hold_until": order.hold_until,
        "created_at": at,
        "updated_at": at,
    }
