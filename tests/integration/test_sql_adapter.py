"""How the adapter connects to MariaDB: TLS only when the URL asks for it, so a connection
costs no TLS context of its own (pymysql's "preferred" mode built one per connection, about
50 ms of CPU on a cold start's first query and on every pool refill)."""

from __future__ import annotations

import pytest

from shared_lib.adapters.sql_engine import make_engine, tls_requested
from tests.conftest import create_mysql_database, drop_mysql_database

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("url", "asked"),
    [
        ("mysql+pymysql://u@db/psi?charset=utf8mb4", False),
        ("mysql+pymysql://u@db/psi?ssl_ca=/etc/psi/ca.pem", True),
        ("mysql+pymysql://u@db/psi?charset=utf8mb4&ssl_verify_identity=true", True),
    ],
)
def test_tls_is_what_the_url_asks_for(url: str, asked: bool) -> None:
    assert tls_requested(url) is asked


def test_a_plain_url_connects_without_a_tls_context(mysql_server: str) -> None:
    url = create_mysql_database(mysql_server)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None and driver.ssl is False
            assert getattr(driver, "ctx", None) is None
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        engine.dispose()
        drop_mysql_database(mysql_server, url)


def test_connections_run_in_strict_mode_whatever_the_servers_default(mysql_server: str) -> None:
    """A value too long for its column fails its statement; a non-strict server default
    would cut it silently (and the batch path's documents rely on the server's checks)."""
    url = create_mysql_database(mysql_server)
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            modes = set(str(conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()).split(","))
        assert "STRICT_ALL_TABLES" in modes
    finally:
        engine.dispose()
        drop_mysql_database(mysql_server, url)
