"""Catalog writes and the read side on in-memory fakes: upserts, deletes, keyset pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shared_lib.domain.catalog import DeleteProduct, PutProduct, PutWarehouse
from shared_lib.domain.errors import (
    IdempotencyConflict,
    InvalidRequest,
    StockStillHeld,
    UnknownSku,
)
from shared_lib.domain.model import (
    IssueStock,
    Level,
    Line,
    PlaceOrder,
    Product,
    ReceiveStock,
    RequestMeta,
    Warehouse,
)
from shared_lib.services import Deps, issue_stock, place_order, receive_stock
from shared_lib.services.catalog import delete_product, put_product, put_warehouse
from shared_lib.services.queries import (
    Page,
    code_filter,
    decode_cursor,
    encode_cursor,
    levels_list,
    low_stock_list,
    movements_list,
    product_view,
    products_list,
    sku_levels,
    warehouse_view,
    warehouses_list,
)
from tests.fakes import FakeTransactions


@pytest.fixture
def tx() -> FakeTransactions:
    return FakeTransactions()


@pytest.fixture
def deps(tx: FakeTransactions) -> Deps:
    return Deps(tx=tx)


def key(name: str) -> RequestMeta:
    return RequestMeta(idempotency_key=name, actor="tester")


def stocked(deps: Deps, skus: dict[str, int], warehouses: tuple[str, ...] = ("W1",)) -> None:
    """Products with these reorder points, the warehouses, and nothing received yet."""
    for sku, reorder_point in skus.items():
        put_product(
            deps, PutProduct(sku, f"product {sku}", reorder_point=reorder_point), key(f"p-{sku}")
        )
    for code in warehouses:
        put_warehouse(deps, PutWarehouse(code, f"warehouse {code}"), key(f"w-{code}"))


def receive(deps: Deps, name: str, wh: str = "W1", **qty: int) -> None:
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    receive_stock(deps, ReceiveStock(wh, lines), key(name))


def all_pages(fetch: Callable[[Page], dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = fetch(Page(limit, cursor))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# ---- products and warehouses ---------------------------------------------------------


def test_put_product_creates_then_replaces_every_field(deps, tx):
    first = put_product(deps, PutProduct("A", "Apple", "kg", 5, True), key("k1"))
    assert first.body == {
        "created": True,
        "product": {
            "sku": "A",
            "name": "Apple",
            "unit": "kg",
            "reorder_point": 5,
            "track_inventory": True,
        },
    }
    second = put_product(deps, PutProduct("A", "Green apple"), key("k2"))
    assert second.body["created"] is False
    assert tx.state.products["A"] == Product("A", "Green apple", "pcs", 0, True)
    assert product_view(deps, "A") == second.body["product"]


def test_put_product_replay_answers_the_first_call_and_reuse_is_refused(deps, tx):
    first = put_product(deps, PutProduct("A", "Apple"), key("k1"))
    put_product(deps, PutProduct("A", "Renamed"), key("k2"))
    replay = put_product(deps, PutProduct("A", "Apple"), key("k1"))
    assert replay.replayed and replay.body == first.body and replay.body["created"] is True
    assert tx.state.products["A"].name == "Renamed"
    with pytest.raises(IdempotencyConflict):
        put_product(deps, PutProduct("A", "Other"), key("k1"))
    with pytest.raises(IdempotencyConflict):
        put_product(deps, PutProduct("B", "Apple"), key("k1"))
    assert "B" not in tx.state.products


def test_put_warehouse_creates_then_renames(deps, tx):
    assert put_warehouse(deps, PutWarehouse("W1", "Main"), key("w1")).body == {
        "created": True,
        "warehouse": {"code": "W1", "name": "Main"},
    }
    assert put_warehouse(deps, PutWarehouse("W1", "North"), key("w2")).body["created"] is False
    assert tx.state.warehouses["W1"] == Warehouse("W1", "North")
    assert warehouse_view(deps, "W1") == {"code": "W1", "name": "North"}
    assert warehouse_view(deps, "W9") is None


def test_delete_unknown_product_is_not_found(deps):
    with pytest.raises(UnknownSku):
        delete_product(deps, DeleteProduct("NOPE"), key("d1"))


def test_delete_product_never_moved_removes_it_and_replays(deps, tx):
    stocked(deps, {"A": 0})
    tx.state.levels[("W1", "A")] = Level("A", "W1", 0, 0)  # an empty balance, no history
    out = delete_product(deps, DeleteProduct("A"), key("d1"))
    assert out.body == {"deleted": "A"}
    assert "A" not in tx.state.products and ("W1", "A") not in tx.state.levels
    replay = delete_product(deps, DeleteProduct("A"), key("d1"))
    assert replay.replayed and replay.body == {"deleted": "A"}
    with pytest.raises(UnknownSku):
        delete_product(deps, DeleteProduct("A"), key("d2"))


def test_delete_product_with_stock_is_refused_and_changes_nothing(deps, tx):
    stocked(deps, {"A": 0})
    receive(deps, "r1", A=3)
    with pytest.raises(StockStillHeld) as refused:
        delete_product(deps, DeleteProduct("A"), key("d1"))
    assert refused.value.code == "stock_exists"
    assert "A" in tx.state.products and "d1" not in tx.state.records


def test_delete_product_with_only_history_is_refused(deps, tx):
    stocked(deps, {"A": 0})
    receive(deps, "r1", A=3)
    issue_stock(deps, IssueStock("W1", (Line("A", 3),), "scrap"), key("i1"))
    assert tx.state.levels[("W1", "A")].on_hand == 0
    with pytest.raises(StockStillHeld):
        delete_product(deps, DeleteProduct("A"), key("d1"))


def test_products_and_warehouses_come_in_keyset_pages(deps):
    stocked(deps, {s: 0 for s in ("E", "A", "D", "B", "C")}, ("W3", "W1", "W2"))
    first = products_list(deps, Page(2))
    assert [p["sku"] for p in first["items"]] == ["A", "B"]
    assert first["next_cursor"] is not None
    skus = [p["sku"] for p in all_pages(lambda page: products_list(deps, page), 2)]
    assert skus == ["A", "B", "C", "D", "E"]
    assert products_list(deps, Page(5))["next_cursor"] is None
    codes = [w["code"] for w in all_pages(lambda page: warehouses_list(deps, page), 1)]
    assert codes == ["W1", "W2", "W3"]


# ---- levels, low stock, movements ------------------------------------------------------


def test_levels_filter_by_warehouse_and_sku_and_page(deps):
    stocked(deps, {"A": 0, "B": 0, "C": 0}, ("W1", "W2"))
    receive(deps, "r1", "W1", A=5, B=2, C=1)
    receive(deps, "r2", "W2", A=7)
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 2),)), key("o1"))
    everything = all_pages(lambda page: levels_list(deps, page), 2)
    assert [(lv["warehouse"], lv["sku"]) for lv in everything] == [
        ("W1", "A"),
        ("W1", "B"),
        ("W1", "C"),
        ("W2", "A"),
    ]
    assert everything[0] == {
        "sku": "A",
        "warehouse": "W1",
        "on_hand": 5,
        "reserved": 2,
        "available": 3,
    }
    only_a = levels_list(deps, Page(), sku="A")["items"]
    assert [(lv["warehouse"], lv["available"]) for lv in only_a] == [("W1", 3), ("W2", 7)]
    assert [lv["sku"] for lv in levels_list(deps, Page(), warehouse="W2")["items"]] == ["A"]
    assert levels_list(deps, Page(), sku="NOPE") == {"items": [], "next_cursor": None}
    assert levels_list(deps, Page(), warehouse="W1", sku="B")["items"][0]["on_hand"] == 2


def test_sku_levels_totals_every_warehouse(deps):
    stocked(deps, {"A": 0}, ("W1", "W2"))
    receive(deps, "r1", "W1", A=5)
    receive(deps, "r2", "W2", A=7)
    view = sku_levels(deps, "A")
    assert (view["on_hand"], view["reserved"], view["available"]) == (12, 0, 12)
    assert [lv["warehouse"] for lv in view["levels"]] == ["W1", "W2"]
    assert sku_levels(deps, "NOPE") is None


def test_low_stock_lists_levels_at_or_below_the_reorder_point(deps, tx):
    stocked(deps, {"A": 5, "B": 5, "C": 0, "D": 9}, ("W1", "W2"))
    receive(deps, "r1", "W1", A=10, B=5, C=1, D=1)
    receive(deps, "r2", "W2", A=1)
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 6),)), key("o1"))
    put_product(
        deps, PutProduct("D", "not tracked", reorder_point=9, track_inventory=False), key("p-D2")
    )
    low = low_stock_list(deps, Page())["items"]
    assert [(r["warehouse"], r["sku"], r["available"], r["reorder_point"]) for r in low] == [
        ("W1", "A", 4, 5),
        ("W1", "B", 5, 5),
        ("W2", "A", 1, 5),
    ]
    assert [r["sku"] for r in low_stock_list(deps, Page(), warehouse="W2")["items"]] == ["A"]
    paged = all_pages(lambda page: low_stock_list(deps, page), 1)
    assert paged == low


def test_movements_newest_first_with_filters_and_cursor(deps):
    stocked(deps, {"A": 0, "B": 0})
    receive(deps, "r1", A=5, B=1)
    place_order(deps, PlaceOrder("o1", "W1", (Line("A", 2),)), key("o1"))
    moves = movements_list(deps, Page(), sku="A")["items"]
    assert [(m["kind"], m["delta_on_hand"], m["delta_reserved"]) for m in moves] == [
        ("reserve", 0, 2),
        ("receive", 5, 0),
    ]
    assert moves[0]["order_id"] == "o1" and moves[0]["idempotency_key"] == "o1"
    assert moves[0]["created_at"].endswith("Z")
    ids = [m["id"] for m in all_pages(lambda page: movements_list(deps, page), 1)]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert movements_list(deps, Page(), sku="B", warehouse="W1")["items"][0]["sku"] == "B"
    assert movements_list(deps, Page(), warehouse="W9")["items"] == []


# ---- query parameters -----------------------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "ten", "1.5"])
def test_page_limit_out_of_range_names_the_parameter(raw):
    with pytest.raises(InvalidRequest) as bad:
        Page.from_query({"limit": raw})
    assert bad.value.field == "limit"


def test_page_defaults_and_accepts_the_bounds():
    assert Page.from_query({}) == Page(100, None)
    assert Page.from_query({"limit": "1", "cursor": "abc"}) == Page(1, "abc")
    assert Page.from_query({"limit": "1000"}).limit == 1000


def test_cursors_round_trip_and_foreign_ones_are_refused():
    assert decode_cursor(encode_cursor("W1", "A"), str, str) == ("W1", "A")
    assert decode_cursor(encode_cursor(42), int) == (42,)
    assert decode_cursor(None, int) is None
    for bad in ("!!!", "e30", encode_cursor("x"), encode_cursor(1, 2)):
        with pytest.raises(InvalidRequest) as refused:
            decode_cursor(bad, int)
        assert refused.value.field == "cursor"


def test_code_filter_is_optional_and_checked():
    assert code_filter({}, "sku", 64) is None
    assert code_filter({"sku": ""}, "sku", 64) is None
    assert code_filter({"sku": "A-1"}, "sku", 64) == "A-1"
    with pytest.raises(InvalidRequest) as bad:
        code_filter({"warehouse": "no spaces"}, "warehouse", 32)
    assert bad.value.field == "warehouse"
