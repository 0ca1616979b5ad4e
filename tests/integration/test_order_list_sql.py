"""The order list and the movement filters on the real stores (MariaDB and the embedded
SQLite): what the SQL read model answers for each filter, in the list's order, keyset pages
across a batch placed at one instant, and time bounds exact to the microsecond."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain.model import Change, Level, Line, Movement, Order, OrderStatus, RequestMeta
from shared_lib.services import Deps
from shared_lib.services.ports import MovementNote, StockStore
from shared_lib.services.queries import Page, movements_list, orders_list, time_range
from tests.conftest import seed_catalog

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 30, 8, 0, 0, 250_000)
US = timedelta(microseconds=1)


def order(order_id: str, wh: str = "W1", customer: str | None = None, **lines: int) -> Order:
    placed = tuple(Line(sku, qty) for sku, qty in sorted((lines or {"A": 1}).items()))
    return Order(order_id, wh, OrderStatus.RESERVED, placed, T0 + timedelta(hours=1), customer)


def all_pages(fetch: Callable[[Page], dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = fetch(Page(limit, cursor))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def ids(body: dict[str, Any]) -> list[str]:
    return [item["order_id"] for item in body["items"]]


@pytest.fixture
def deps(engine: sa.Engine, tx: SqlTransactions) -> Deps:
    seed_catalog(engine, {"A": 0, "B": 0, "C": 0}, ("W1", "W2"))
    return Deps(tx=tx)


def test_orders_come_newest_first_with_their_lines_and_filters(
    deps: Deps, tx: SqlTransactions
) -> None:
    def write(store: StockStore) -> None:
        store.add_order(order("o1", "W1", "ACME", A=2, C=1), T0)
        store.add_order(order("o2", "W2", "ACME", B=5), T0 + timedelta(seconds=1))
        store.add_order(order("o3", "W1", "Zoë", A=1), T0 + timedelta(seconds=2))
        store.set_order_status("o2", OrderStatus.SHIPPED, T0 + timedelta(seconds=3))

    tx.run(write)
    body = orders_list(deps, Page())
    assert ids(body) == ["o3", "o2", "o1"] and body["next_cursor"] is None
    assert body["items"][2] == {
        "order_id": "o1",
        "warehouse": "W1",
        "status": "reserved",
        "customer": "ACME",
        "lines": [{"sku": "A", "qty": 2}, {"sku": "C", "qty": 1}],
        "hold_until": "2026-11-30T09:00:00Z",
    }
    assert body["items"][1]["lines"] == [{"sku": "B", "qty": 5}]
    assert ids(orders_list(deps, Page(), status=OrderStatus.SHIPPED)) == ["o2"]
    assert ids(orders_list(deps, Page(), status=OrderStatus.RESERVED)) == ["o3", "o1"]
    assert ids(orders_list(deps, Page(), warehouse="W1")) == ["o3", "o1"]
    assert ids(orders_list(deps, Page(), customer="ACME")) == ["o2", "o1"]
    assert ids(orders_list(deps, Page(), customer="Zoë")) == ["o3"]
    assert ids(orders_list(deps, Page(), customer="Zoe")) == []
    assert ids(orders_list(deps, Page(), warehouse="W2", status=OrderStatus.RESERVED)) == []


def test_pages_across_a_batch_placed_at_one_instant(deps: Deps, tx: SqlTransactions) -> None:
    """A group commit writes its batch with one timestamp; the order id orders the batch."""
    batch = [f"b{n:02d}" for n in range(9)]
    tx.run(lambda store: store.add_order(order("early"), T0 - US))
    tx.run(lambda store: store.add_orders([(order(o, B=1), T0) for o in reversed(batch)]))
    tx.run(lambda store: store.add_order(order("late"), T0 + US))
    expected = ["late", *reversed(batch), "early"]
    for limit in (1, 2, 4, 9, 11):
        paged = all_pages(lambda page: orders_list(deps, page), limit)
        assert [item["order_id"] for item in paged] == expected, limit
        assert all(item["lines"] for item in paged)
    in_batch = all_pages(lambda page: orders_list(deps, page, warehouse="W1"), 2)
    assert [item["order_id"] for item in in_batch] == expected


def test_created_bounds_are_exact_to_the_microsecond(deps: Deps, tx: SqlTransactions) -> None:
    tx.run(
        lambda store: store.add_orders(
            [(order("before"), T0 - US), (order("at"), T0), (order("after"), T0 + US)]
        )
    )

    def within(**query: str) -> list[str]:
        window = time_range(query, "created_from", "created_to")
        return ids(orders_list(deps, Page(), created=window))

    assert within(created_from="2026-11-30T08:00:00.25Z") == ["after", "at"]
    assert within(created_to="2026-11-30T08:00:00.25Z") == ["before"]
    assert within(created_from="2026-11-30T10:00:00.250000+02:00") == ["after", "at"]
    # beyond the microsecond: 08:00:00.2500001 is after "at" and not after "after"
    assert within(created_from="2026-11-30T08:00:00.2500001Z") == ["after"]
    assert within(created_to="2026-11-30T08:00:00.2500001Z") == ["at", "before"]
    assert within(
        created_from="2026-11-30T08:00:00.250Z", created_to="2026-11-30T08:00:00.250001Z"
    ) == ["at"]


def test_movements_by_reference_and_time_with_sku_and_warehouse(
    deps: Deps, tx: SqlTransactions
) -> None:
    meta = RequestMeta(idempotency_key="k", actor="tester")

    def write(store: StockStore) -> None:
        for n, (wh, sku, reference) in enumerate(
            [("W1", "A", "PO-1"), ("W1", "B", "PO-1"), ("W2", "A", "PO-2"), ("W1", "A", None)]
        ):
            store.create_level(wh, sku)
            after = Level(sku, wh, n + 1, 0, n + 1)
            change = Change(wh, sku, Movement.RECEIVE, 1, 0)
            at = T0 + timedelta(minutes=n)
            store.append_movement(change, after, MovementNote(meta, at, "count", reference))

    tx.run(write)

    def moves(**filters: Any) -> list[tuple[str, str, str | None]]:
        items = movements_list(deps, Page(), **filters)["items"]
        return [(m["warehouse"], m["sku"], m["reference"]) for m in items]

    assert moves(reference="PO-1") == [("W1", "B", "PO-1"), ("W1", "A", "PO-1")]
    assert moves(reference="PO-1", sku="A", warehouse="W1") == [("W1", "A", "PO-1")]
    assert moves(reference="PO-3") == []
    window = time_range(
        {"from": "2026-11-30T08:01:00.25Z", "to": "2026-11-30T08:03:00.25Z"}, "from", "to"
    )
    assert moves(created=window) == [("W2", "A", "PO-2"), ("W1", "B", "PO-1")]
    assert moves(created=window, warehouse="W1") == [("W1", "B", "PO-1")]
    paged = all_pages(lambda page: movements_list(deps, page, warehouse="W1"), 1)
    assert [(m["sku"], m["reference"]) for m in paged] == [
        ("A", None),
        ("B", "PO-1"),
        ("A", "PO-1"),
    ]
