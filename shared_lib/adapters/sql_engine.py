"""The database engine: how a connection is made (pool, TLS, SQL mode, SQLite's writer
lock) and which errors mean retry, duplicate or unreachable."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

# MySQL error codes worth a retry of the whole transaction
DEADLOCK, LOCK_WAIT_TIMEOUT, DUPLICATE_KEY = 1213, 1205, 1062
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


def is_duplicate(exc: BaseException) -> bool:
    """A unique key refused the row: another transaction wrote it first."""
    if not isinstance(exc, sa.exc.IntegrityError):
        return False
    code = _mysql_code(exc)
    if code is not None:
        return code == DUPLICATE_KEY
    return "UNIQUE constraint failed" in str(exc.orig)


def is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.InterfaceError):
        return True
    return isinstance(exc, sa.exc.OperationalError) and _mysql_code(exc) in CONNECTION_LOST


# URL query parameters by which a database URL asks for TLS (pymysql's names)
TLS_PARAMETERS = frozenset(
    {"ssl", "ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_cipher", "ssl_check_hostname",
     "ssl_verify_cert", "ssl_verify_identity"}
)  # fmt: skip


SQL_MODE = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"


def tls_requested(url: str) -> bool:
    return not TLS_PARAMETERS.isdisjoint(sa.engine.make_url(url).query)


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
            # the SQL mode the product's statements are written for, whatever the server's
            # default: a value too long or out of range fails its statement, never cut
            "sql_mode": SQL_MODE,
            # TLS when the URL asks for it (ssl_ca=...: verified). Otherwise none: pymysql's
            # "preferred" TLS, unverified, builds a new TLS context for every connection
            # (about 50 ms of CPU), on a cold start's first query and on every pool refill.
            **({} if tls_requested(url) else {"ssl_disabled": True}),
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
