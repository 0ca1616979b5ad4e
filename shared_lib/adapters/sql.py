"""The system of record over SQLAlchemy Core: engines, one-transaction stores, retries."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from shared_lib.adapters import sql_tables as t
from shared_lib.domain.errors import StoreUnavailable
from shared_lib.domain.model import (
    Change,
    Level,
    Line,
    Order,
    OrderStatus,
    Product,
    Warehouse,
    utcnow,
)
from shared_lib.services.ports import AlreadyRecorded, MovementNote, StockStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# MySQL error codes worth a retry of the whole transaction
DEADLOCK, LOCK_WAIT_TIMEOUT = 1213, 1205
CONNECTION_LOST = {2003, 2006, 2013, 2055, 1927, 4031}
TRANSIENT = {DEADLOCK, LOCK_WAIT_TIMEOUT} | CONNECTION_LOST


def _mysql_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    code = _mysql_code(exc)
    if code is not None:
        return code in TRANSIENT
    text = str(getattr(exc, "orig", exc)).lower()
    return (
        "database is locked" in text
        or "connection" in text
        or isinstance(exc, sa.exc.InterfaceError)
    )


def is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.InterfaceError):
        return True
    return isinstance(exc, sa.exc.OperationalError) and _mysql_code(exc) in CONNECTION_LOST


def make_engine(url: str, *, pool_size: int = 5, timeout: int = 5) -> Engine:
    """An engine tuned per dialect; created once per process and reused by warm containers."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"timeout": max(timeout, 30), "check_same_thread": False}
        )
        _serialize_sqlite_writers(engine)
        return engine
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=timeout,
        isolation_level="READ COMMITTED",
        connect_args={
            "connect_timeout": timeout,
            "read_timeout": timeout * 6,
            "write_timeout": timeout * 6,
            "charset": "utf8mb4",
        },
    )


def _serialize_sqlite_writers(engine: Engine) -> None:
    """SQLite upgrades read locks lazily and then fails; take the write lock up front."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class SqlTransactions:
    """Runs one unit of work per call, retried whole on deadlocks and lost connections.

    A retry after an ambiguous commit is safe: the idempotency record written in the same
    transaction makes the second attempt answer with the first one's result.
    """

    def __init__(self, engine: Engine, *, attempts: int = 5) -> None:
        self.engine = engine
        self.attempts = attempts

    def run(self, work: Callable[[StockStore], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.02, max=1.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, self.engine.begin() as conn:
                    return work(SqlStore(conn))
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if is_unreachable(exc) or is_transient(exc):
                log.warning("database unavailable: %s", exc)
                raise StoreUnavailable("database") from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover


def _level(row: Any) -> Level:
    return Level(row.sku, row.warehouse, int(row.on_hand), int(row.reserved), int(row.version))


class SqlStore:
    """One transaction's view of the system of record (implements services.ports.StockStore)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name

    # -- idempotency
    def recall(self, key: str) -> tuple[str, dict[str, Any]] | None:
        r = t.idempotency_records
        row = self.conn.execute(
            sa.select(r.c.fingerprint, r.c.response).where(r.c.idempotency_key == key)
        ).first()
        return (row.fingerprint, json.loads(row.response)) if row else None

    def remember(self, key: str, fingerprint: str, kind: str, response: dict[str, Any]) -> None:
        try:
            self.conn.execute(
                t.idempotency_records.insert().values(
                    idempotency_key=key,
                    fingerprint=fingerprint,
                    kind=kind,
                    response=json.dumps(response, separators=(",", ":")),
                    created_at=utcnow(),
                )
            )
        except sa.exc.IntegrityError as exc:
            raise AlreadyRecorded(key) from exc

    # -- catalog
    def product(self, sku: str) -> Product | None:
        return self.products([sku]).get(sku)

    def products(self, skus: Iterable[str]) -> dict[str, Product]:
        p = t.products
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = self.conn.execute(sa.select(p).where(p.c.sku.in_(wanted)))
        return {
            r.sku: Product(r.sku, r.name, r.unit, int(r.reorder_point), bool(r.track_inventory))
            for r in rows
        }

    def warehouse(self, code: str) -> Warehouse | None:
        w = t.warehouses
        row = self.conn.execute(sa.select(w.c.code, w.c.name).where(w.c.code == code)).first()
        return Warehouse(row.code, row.name) if row else None

    # -- balances
    def level(self, warehouse: str, sku: str) -> Level | None:
        s = t.stock_levels
        row = self.conn.execute(
            sa.select(s).where(s.c.warehouse == warehouse, s.c.sku == sku)
        ).first()
        return _level(row) if row else None

    def apply(self, change: Change) -> Level | None:
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
        return [_level(r) for r in self.conn.execute(query.order_by(s.c.sku).limit(limit))]

    def warehouse_codes(self) -> list[str]:
        w = t.warehouses
        return list(self.conn.execute(sa.select(w.c.code).order_by(w.c.code)).scalars())

    # -- ledger
    def append_movement(self, change: Change, after: Level, note: MovementNote) -> int:
        result = self.conn.execute(
            t.movements.insert().values(
                kind=change.movement.value,
                warehouse=change.warehouse,
                sku=change.sku,
                delta_on_hand=change.d_on_hand,
                delta_reserved=change.d_reserved,
                on_hand_after=after.on_hand,
                reserved_after=after.reserved,
                reason=note.reason,
                reference=note.reference,
                order_id=note.order_id,
                actor=note.meta.actor,
                idempotency_key=note.meta.idempotency_key,
                created_at=note.at,
            )
        )
        return int(result.inserted_primary_key[0])

    # -- orders
    def add_order(self, order: Order, at: datetime) -> None:
        self.conn.execute(
            t.orders.insert().values(
                order_id=order.order_id,
                warehouse=order.warehouse,
                customer=order.customer,
                status=order.status.value,
                hold_until=order.hold_until,
                created_at=at,
                updated_at=at,
            )
        )
        self.conn.execute(
            t.order_lines.insert(),
            [{"order_id": order.order_id, "sku": ln.sku, "qty": ln.qty} for ln in order.lines],
        )

    def order(self, order_id: str, *, lock: bool = False) -> Order | None:
        o, ol = t.orders, t.order_lines
        query = sa.select(o).where(o.c.order_id == order_id)
        row = self.conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            return None
        lines = self.conn.execute(
            sa.select(ol.c.sku, ol.c.qty).where(ol.c.order_id == order_id).order_by(ol.c.sku)
        )
        return Order(
            row.order_id,
            row.warehouse,
            OrderStatus(row.status),
            tuple(Line(r.sku, int(r.qty)) for r in lines),
            row.hold_until,
            row.customer,
        )

    def set_order_status(self, order_id: str, status: OrderStatus, at: datetime) -> None:
        o = t.orders
        self.conn.execute(
            sa.update(o).where(o.c.order_id == order_id).values(status=status.value, updated_at=at)
        )

    # -- outbox
    def add_event(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self.conn.execute(
            t.outbox.insert().values(
                event_id=event["id"],
                topic=topic,
                event_key=key,
                payload=json.dumps(event, separators=(",", ":")),
                created_at=utcnow(),
            )
        )
