"""Small helpers for tests: wait on a condition with a timeout, never sleep-and-hope; read
the ledger's sums."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import requests
import sqlalchemy as sa

from shared_lib.adapters import sql_tables as t

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def ledger_sums(conn: sa.Connection) -> dict[tuple[str, str], tuple[int, int]]:
    """(on_hand, reserved) that the ledger adds up to, per (warehouse, sku)."""
    m = t.movements
    query = sa.select(
        m.c.warehouse,
        m.c.sku,
        sa.func.sum(m.c.delta_on_hand).label("oh"),
        sa.func.sum(m.c.delta_reserved).label("rs"),
    ).group_by(m.c.warehouse, m.c.sku)
    return {(r.warehouse, r.sku): (int(r.oh), int(r.rs)) for r in conn.execute(query)}


def http() -> requests.Session:
    """A session that never goes through a proxy from the environment (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session
