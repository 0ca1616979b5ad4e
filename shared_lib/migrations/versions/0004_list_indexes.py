"""indexes for the order list and the movement filters

The order list (newest first: created_at, then order_id) alone and by status, warehouse or
customer; movements by reference and by time. On MariaDB each index is built online
(InnoDB adds a secondary index without blocking writes).

On MariaDB/MySQL the foreign key orders.warehouse needs an index that starts with the
column. InnoDB created one for it (named as the constraint) and drops it by itself once
(warehouse, created_at, order_id) can serve instead; the downgrade gives it back first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 16:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("orders", ("created_at", "order_id")),
    ("orders", ("status", "created_at", "order_id")),
    ("orders", ("warehouse", "created_at", "order_id")),
    ("orders", ("customer", "created_at", "order_id")),
    ("movements", ("reference", "id")),
    ("movements", ("created_at",)),
)
FOREIGN_KEY_INDEX = "fk_orders_warehouse_warehouses"


def name(table: str, columns: tuple[str, ...]) -> str:
    """The name sql_tables' naming convention gives the index."""
    return f"ix_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    for table, columns in INDEXES:
        op.create_index(op.f(name(table, columns)), table, list(columns), unique=False)
    # one given back by a downgrade is not dropped by InnoDB: the same schema either way
    if _mysql() and _has_index("orders", FOREIGN_KEY_INDEX):
        op.drop_index(FOREIGN_KEY_INDEX, table_name="orders")


def downgrade() -> None:
    if _mysql():
        op.create_index(FOREIGN_KEY_INDEX, "orders", ["warehouse"], unique=False)
    for table, columns in reversed(INDEXES):
        op.drop_index(op.f(name(table, columns)), table_name=table)


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def _has_index(table: str, index: str) -> bool:
    return any(i["name"] == index for i in sa.inspect(op.get_bind()).get_indexes(table))
