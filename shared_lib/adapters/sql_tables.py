"""The system of record's schema (SQLAlchemy Core). Alembic migrations are generated from it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

MYSQL_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Quantity = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

products = sa.Table(
    "products",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("unit", sa.String(16), nullable=False, server_default="pcs"),
    sa.Column("reorder_point", Quantity, nullable=False, server_default="0"),
    sa.Column("track_inventory", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint("reorder_point >= 0", name="reorder_point_nonnegative"),
    **MYSQL_OPTIONS,
)

warehouses = sa.Table(
    "warehouses",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    **MYSQL_OPTIONS,
)

# available = on_hand - reserved is derived, never stored
stock_levels = sa.Table(
    "stock_levels",
    metadata,
    sa.Column("warehouse", sa.String(32), sa.ForeignKey("warehouses.code"), primary_key=True),
    sa.Column("sku", sa.String(64), sa.ForeignKey("products.sku"), primary_key=True),
    sa.Column("on_hand", Quantity, nullable=False, server_default="0"),
    sa.Column("reserved", Quantity, nullable=False, server_default="0"),
    sa.Column("version", Quantity, nullable=False, server_default="0"),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint("on_hand >= 0", name="on_hand_nonnegative"),
    sa.CheckConstraint("reserved >= 0", name="reserved_nonnegative"),
    sa.CheckConstraint("reserved <= on_hand", name="available_nonnegative"),
    sa.Index(None, "sku"),
    **MYSQL_OPTIONS,
)

# append-only: one row per change of a balance
movements = sa.Table(
    "movements",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("warehouse", sa.String(32), nullable=False),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("delta_on_hand", Quantity, nullable=False),
    sa.Column("delta_reserved", Quantity, nullable=False),
    sa.Column("on_hand_after", Quantity, nullable=False),
    sa.Column("reserved_after", Quantity, nullable=False),
    sa.Column("reason", sa.String(200)),
    sa.Column("reference", sa.String(100)),
    sa.Column("order_id", sa.String(64)),
    sa.Column("actor", sa.String(100)),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.ForeignKeyConstraint(["warehouse", "sku"], ["stock_levels.warehouse", "stock_levels.sku"]),
    sa.Index(None, "warehouse", "sku", "id"),
    sa.Index(None, "sku", "id"),
    sa.Index(None, "idempotency_key"),
    # the movement lists (newest first: by id) by reference and by time
    sa.Index(None, "reference", "id"),
    sa.Index(None, "created_at"),
    **MYSQL_OPTIONS,
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("warehouse", sa.String(32), sa.ForeignKey("warehouses.code"), nullable=False),
    sa.Column("customer", sa.String(100)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("hold_until", Timestamp, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint(
        "status IN ('reserved', 'shipped', 'cancelled', 'expired')", name="status_known"
    ),
    sa.Index(None, "status", "hold_until"),
    # the order list, newest first (created_at, order_id), alone and by each filter
    sa.Index(None, "created_at", "order_id"),
    sa.Index(None, "status", "created_at", "order_id"),
    sa.Index(None, "warehouse", "created_at", "order_id"),
    sa.Index(None, "customer", "created_at", "order_id"),
    **MYSQL_OPTIONS,
)

order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("sku", sa.String(64), sa.ForeignKey("products.sku"), primary_key=True),
    sa.Column("qty", Quantity, nullable=False),
    sa.CheckConstraint("qty > 0", name="qty_positive"),
    **MYSQL_OPTIONS,
)

# transactional outbox: written with the change, published after commit
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("topic", sa.String(100), nullable=False),
    sa.Column("event_key", sa.String(100), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Timestamp),
    sa.Column("last_error", sa.String(500)),
    sa.Index(None, "published_at", "id"),
    **MYSQL_OPTIONS,
)

# consumer dedupe: one row per (consumer, event id) processed
processed_events = sa.Table(
    "processed_events",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("processed_at", Timestamp, nullable=False),
    **MYSQL_OPTIONS,
)

idempotency_records = sa.Table(
    "idempotency_records",
    metadata,
    sa.Column("idempotency_key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("response", Json, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index(None, "created_at"),
    **MYSQL_OPTIONS,
)

reconciliation_runs = sa.Table(
    "reconciliation_runs",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("run_key", sa.String(100), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("repair", sa.Boolean, nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.Column("checked", Quantity, nullable=False, server_default="0"),
    sa.Column("drift_found", Quantity, nullable=False, server_default="0"),
    sa.Column("drift_repaired", Quantity, nullable=False, server_default="0"),
    sa.Column("expired_holds", Quantity, nullable=False, server_default="0"),
    sa.Column("outbox_redriven", Quantity, nullable=False, server_default="0"),
    sa.Column("gates_rebuilt", Quantity, nullable=False, server_default="0"),
    sa.Column("report_uri", sa.String(500)),
    sa.Column("error", sa.String(500)),
    **MYSQL_OPTIONS,
)
