"""idempotency keys are scoped to the API key that sent them: room for the principal

A client's key is now recorded as ``<principal>/<key>`` (up to 16 + 1 + 200 characters).
Records written before keep their bare keys; they are still found for the same request
(see ``RequestMeta.legacy_key``) until they expire.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:05:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDENED = (("idempotency_records", False), ("movements", True))


def upgrade() -> None:
    for table, nullable in WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "idempotency_key",
                existing_type=sa.String(200),
                type_=sa.String(255),
                existing_nullable=nullable,
            )


def downgrade() -> None:
    for table, nullable in WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "idempotency_key",
                existing_type=sa.String(255),
                type_=sa.String(200),
                existing_nullable=nullable,
            )
