"""Migrations on MariaDB and SQLite: from 0002 to 0003, a database that has records keeps
them, ends up as the tables declare it, and holds idempotency keys scoped to a principal
(0003); and 0003 goes back down to 0002 and up again."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared_lib.adapters import schema
from shared_lib.adapters import sql_tables as t

pytestmark = pytest.mark.integration
SCOPED = "key-0123456789ab/" + "k" * 200  # the longest key a caller can have recorded


def record(conn: sa.Connection, key: str) -> None:
    conn.execute(
        t.idempotency_records.insert().values(
            idempotency_key=key,
            fingerprint="f" * 64,
            kind="receive",
            response='{"levels":[]}',
            created_at=datetime(2026, 11, 1),
        )
    )


def keys(conn: sa.Connection) -> list[str]:
    column = t.idempotency_records.c.idempotency_key
    return [row[0] for row in conn.execute(sa.select(column).order_by(column))]


def test_0003_keeps_records_and_holds_scoped_keys(empty_database: str) -> None:
    schema.upgrade(empty_database, "0002")
    engine = sa.create_engine(empty_database)
    try:
        with engine.begin() as conn:
            record(conn, "bare-key-of-an-earlier-release")
        schema.upgrade(empty_database, "0003")
        assert schema.current_revision(empty_database) == "0003"
        with engine.begin() as conn:
            record(conn, SCOPED)
            assert keys(conn) == sorted(["bare-key-of-an-earlier-release", SCOPED])
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), t.metadata)
        widths = [d for d in differences if "idempotency_key" in repr(d)]
        assert widths == [], widths
    finally:
        engine.dispose()


def test_0003_goes_down_and_up_again(empty_database: str) -> None:
    schema.upgrade(empty_database, "0003")
    command.downgrade(schema.alembic_config(empty_database), "0002")
    assert schema.current_revision(empty_database) == "0002"
    schema.upgrade(empty_database, "0003")
    assert schema.current_revision(empty_database) == "0003"
