"""The group-commit batch's rows as one JSON document expanded by the server (JSON_TABLE):
every value arrives exactly as written, a value that does not fit fails the statement,
and the ledger ids come back in the rows' order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa

from shared_lib.adapters import sql_bulk
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.sql_engine import make_engine
from tests.conftest import create_mysql_database, drop_mysql_database

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 30, 13, 14, 15, 123456)
# quotes, backslashes, a NUL, new lines, non-BMP characters, SQL and JSON syntax
AWKWARD = (
    'it\'s "quoted" \\ back\\slash \x00 nul\n\r\t 漢字 😀 \'); DROP TABLE outbox; -- {"a":[1]}'
)


@pytest.fixture
def mysql_engine(mysql_server: str) -> Iterator[sa.Engine]:
    url = create_mysql_database(mysql_server)
    engine = make_engine(url, pool_size=1)
    yield engine
    engine.dispose()
    drop_mysql_database(mysql_server, url)


def test_mariadb_expands_the_document_itself(mysql_engine: sa.Engine) -> None:
    with mysql_engine.connect() as conn:
        assert sql_bulk.has_json_table(conn)
        assert sql_bulk.has_insert_returning(conn)


def test_every_value_arrives_exactly_as_written(mysql_engine: sa.Engine) -> None:
    rows = [
        {
            "event_id": f"e-{n}",
            "topic": "psi.stock.changed",
            "event_key": AWKWARD[:100],
            "payload": AWKWARD * 50,
            "created_at": AT,
        }
        for n in range(3)
    ]
    with mysql_engine.begin() as conn:
        sql_bulk.insert_rows(conn, t.outbox, rows)
    with mysql_engine.connect() as conn:
        stored = conn.execute(
            sa.select(t.outbox.c.event_id, t.outbox.c.event_key, t.outbox.c.payload,
                      t.outbox.c.created_at).order_by(t.outbox.c.id)
        ).all()  # fmt: skip
    assert [tuple(r) for r in stored] == [
        (f"e-{n}", AWKWARD[:100], AWKWARD * 50, AT) for n in range(3)
    ]


def test_a_value_that_does_not_fit_fails_the_statement_and_writes_nothing(
    mysql_engine: sa.Engine,
) -> None:
    rows = [
        {"event_id": "ok", "topic": "t", "event_key": "k", "payload": "{}", "created_at": AT},
        {"event_id": "x" * 37, "topic": "t", "event_key": "k", "payload": "{}", "created_at": AT},
    ]
    with pytest.raises(sa.exc.DBAPIError), mysql_engine.begin() as conn:
        sql_bulk.insert_rows(conn, t.outbox, rows)
    with mysql_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar() == 0


def test_returned_ids_follow_the_rows_order(mysql_engine: sa.Engine) -> None:
    now = AT
    with mysql_engine.begin() as conn:
        conn.execute(t.warehouses.insert().values(code="W1", name="W1", created_at=now,
                                                  updated_at=now))  # fmt: skip
        for sku in ("A", "B", "C"):
            conn.execute(t.products.insert().values(sku=sku, name=sku, created_at=now,
                                                    updated_at=now))  # fmt: skip
            conn.execute(t.stock_levels.insert().values(warehouse="W1", sku=sku, updated_at=now))
    skus = ["C", "A", "B", "A", "C", "B"] * 20
    rows = [
        {
            "kind": "reserve",
            "warehouse": "W1",
            "sku": sku,
            "delta_on_hand": 0,
            "delta_reserved": 1,
            "on_hand_after": 10,
            "reserved_after": n,
            "idempotency_key": f"k-{n}",
            "created_at": now,
        }
        for n, sku in enumerate(skus)
    ]
    with mysql_engine.begin() as conn:
        returned = sql_bulk.insert_rows(conn, t.movements, rows, returning=("id",))
    ids = [int(r[0]) for r in returned]
    with mysql_engine.connect() as conn:
        by_id = dict(conn.execute(sa.select(t.movements.c.id, t.movements.c.idempotency_key)).all())
    assert [by_id[i] for i in ids] == [f"k-{n}" for n in range(len(skus))]
