"""The catalog and stock-query functions in-process over HTTP (functions-framework test
clients): products and warehouses, levels, low stock and movements, their error statuses.
On the real stores: MariaDB and SQLite, the real Redis. The harness is
tests/integration/functions_api.py; Kafka deliveries are in test_function_deliveries.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from werkzeug.test import TestResponse

from tests.integration.functions_api import Api, catalog, ok, receive, refused

# ---- catalog ----------------------------------------------------------------------------


def test_catalog_products_create_replace_read_page_and_delete(api: Api) -> None:
    created = api.put("catalog", "/products/A", {"name": "Apple", "reorder_point": 5}, key="p1")
    apple = {
        "sku": "A",
        "name": "Apple",
        "unit": "pcs",
        "reorder_point": 5,
        "track_inventory": True,
    }
    assert ok(created, 201) == apple and "Idempotent-Replayed" not in created.headers
    replay = api.put("catalog", "/products/A", {"name": "Apple", "reorder_point": 5}, key="p1")
    assert ok(replay, 201) == apple and replay.headers["Idempotent-Replayed"] == "true"
    refused(
        api.put("catalog", "/products/A", {"name": "Pear"}, key="p1"), 409, "idempotency_key_reused"
    )
    replaced = ok(api.put("catalog", "/products/A", {"name": "Green apple", "unit": "kg"}))
    assert replaced == {
        "sku": "A",
        "name": "Green apple",
        "unit": "kg",
        "reorder_point": 0,
        "track_inventory": True,
    }
    assert ok(api.get("catalog", "/products/A")) == replaced
    assert refused(api.get("catalog", "/products/NOPE"), 404, "unknown_sku")["sku"] == "NOPE"

    for sku in ("C", "B"):
        ok(api.put("catalog", f"/products/{sku}", {"name": sku}), 201)
    first = ok(api.get("catalog", "/products?limit=2"))
    assert [p["sku"] for p in first["items"]] == ["A", "B"] and first["next_cursor"]
    rest = ok(api.get("catalog", f"/products?limit=2&cursor={first['next_cursor']}"))
    assert [p["sku"] for p in rest["items"]] == ["C"] and rest["next_cursor"] is None

    deleted = api.delete("catalog", "/products/C", key="d1")
    assert ok(deleted) == {"deleted": "C"}
    again = api.delete("catalog", "/products/C", key="d1")
    assert ok(again) == {"deleted": "C"} and again.headers["Idempotent-Replayed"] == "true"
    refused(api.get("catalog", "/products/C"), 404, "unknown_sku")
    refused(api.delete("catalog", "/products/C"), 404, "unknown_sku")


def test_catalog_refuses_deleting_a_product_with_stock_or_history(api: Api) -> None:
    catalog(api, {"A": 0, "B": 0})
    receive(api, A=2, B=1)
    ok(
        api.post(
            "stock_out",
            "/",
            {"warehouse": "MAIN", "lines": [{"sku": "B", "qty": 1}], "reason": "scrap"},
        )
    )
    assert api.levels() == {"A": (2, 0), "B": (0, 0)}
    for sku in ("A", "B"):
        refused(api.delete("catalog", f"/products/{sku}"), 409, "stock_exists")
        ok(api.get("catalog", f"/products/{sku}"))
    assert api.levels() == {"A": (2, 0), "B": (0, 0)}


def test_concurrent_creates_of_one_product_create_it_once(api: Api) -> None:
    writers = 8
    start = threading.Barrier(writers)

    def put(n: int) -> int:
        start.wait(timeout=10)
        response = api.put("catalog", "/products/RACE", {"name": f"writer {n}"})
        return response.status_code

    with ThreadPoolExecutor(writers) as pool:
        statuses = sorted(pool.map(put, range(writers)))
    assert statuses == [200] * (writers - 1) + [201]
    assert ok(api.get("catalog", "/products/RACE"))["name"].startswith("writer ")


def test_catalog_warehouses_create_rename_and_list(api: Api) -> None:
    assert ok(api.put("catalog", "/warehouses/MAIN", {"name": "Main"}), 201) == {
        "code": "MAIN",
        "name": "Main",
    }
    assert ok(api.put("catalog", "/warehouses/MAIN", {"name": "Central"}))["name"] == "Central"
    ok(api.put("catalog", "/warehouses/EAST", {"name": "East"}), 201)
    listed = ok(api.get("catalog", "/warehouses"))
    assert listed == {
        "items": [{"code": "EAST", "name": "East"}, {"code": "MAIN", "name": "Central"}],
        "next_cursor": None,
    }
    first = ok(api.get("catalog", "/warehouses?limit=1"))
    assert [w["code"] for w in first["items"]] == ["EAST"] and first["next_cursor"]
    assert ok(api.get("catalog", "/warehouses/MAIN"))["name"] == "Central"
    refused(api.get("catalog", "/warehouses/NOPE"), 404, "unknown_warehouse")


def test_catalog_rejects_bad_requests_naming_the_field(api: Api) -> None:
    def field_of(response: TestResponse) -> str:
        return refused(response, 422, "invalid_request")["field"]

    assert field_of(api.put("catalog", "/products/A", {"name": ""})) == "name"
    assert field_of(api.put("catalog", "/products/A", {"name": "x", "reorder_point": -1})) == (
        "reorder_point"
    )
    assert field_of(api.put("catalog", "/products/A", {"name": "x", "colour": "red"})) == "colour"
    assert field_of(api.put("catalog", "/products/A", {"name": "x", "track_inventory": "no"})) == (
        "track_inventory"
    )
    assert field_of(api.put("catalog", "/products/A", [1])) == "body"
    assert field_of(api.put("catalog", "/products/bad%20sku", {"name": "x"})) == "sku"
    assert field_of(api.put("catalog", f"/products/{'X' * 65}", {"name": "x"})) == "sku"
    assert field_of(api.put("catalog", "/warehouses/bad%20code", {"name": "x"})) == "code"
    assert field_of(api.get("catalog", "/products?limit=0")) == "limit"
    assert field_of(api.get("catalog", "/products?limit=1001")) == "limit"
    assert field_of(api.get("catalog", "/products?limit=ten")) == "limit"
    assert field_of(api.get("catalog", "/warehouses?cursor=not-a-cursor")) == "cursor"

    bad_json = api.put("catalog", "/products/A", data="{name:", key="k-json")
    assert refused(bad_json, 400, "invalid_json")["field"] == "body"
    no_key = api.put("catalog", "/products/A", {"name": "x"}, key=None)
    assert refused(no_key, 400, "invalid_request")["field"] == "Idempotency-Key"
    refused(api.delete("catalog", "/products/A", key=None), 400, "invalid_request")

    patch = refused(
        api.call("catalog", "PATCH", "/products/A", {"name": "x"}), 405, "method_not_allowed"
    )
    assert patch["allowed"] == "DELETE, GET, HEAD, PUT"
    assert api.post("catalog", "/warehouses", {"name": "x"}).headers["Allow"] == "GET, HEAD"
    refused(api.get("catalog", "/nothing-here"), 404, "not_found")
    assert ok(api.get("catalog", "/products")) == {"items": [], "next_cursor": None}


# ---- stock-query ------------------------------------------------------------------------


def test_stock_query_levels_low_stock_and_movements(api: Api) -> None:
    catalog(api, {"A": 5, "B": 0, "C": 1}, ("MAIN", "EAST"))
    receive(api, "MAIN", A=10, B=2, C=1)
    receive(api, "EAST", A=3)
    ok(
        api.post(
            "create_order",
            "/",
            {"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 6}]},
        ),
        201,
    )

    everything = ok(api.get("stock_query", "/levels"))
    assert everything["next_cursor"] is None
    assert [(lv["warehouse"], lv["sku"]) for lv in everything["items"]] == [
        ("EAST", "A"),
        ("MAIN", "A"),
        ("MAIN", "B"),
        ("MAIN", "C"),
    ]
    assert everything["items"][1] == {
        "sku": "A",
        "warehouse": "MAIN",
        "on_hand": 10,
        "reserved": 6,
        "available": 4,
    }
    first = ok(api.get("stock_query", "/levels?limit=3"))
    rest = ok(api.get("stock_query", f"/levels?limit=3&cursor={first['next_cursor']}"))
    assert len(first["items"]) == 3 and rest["next_cursor"] is None
    assert first["items"] + rest["items"] == everything["items"]
    by_sku = ok(api.get("stock_query", "/levels?sku=A"))["items"]
    assert [(lv["warehouse"], lv["available"]) for lv in by_sku] == [("EAST", 3), ("MAIN", 4)]
    one = ok(api.get("stock_query", "/levels?warehouse=MAIN&sku=B"))["items"]
    assert one == [{"sku": "B", "warehouse": "MAIN", "on_hand": 2, "reserved": 0, "available": 2}]
    assert ok(api.get("stock_query", "/levels?sku=NOPE")) == {"items": [], "next_cursor": None}
    assert ok(api.get("stock_query", "/levels?warehouse=NOPE"))["items"] == []

    totals = ok(api.get("stock_query", "/levels/A"))
    assert (totals["on_hand"], totals["reserved"], totals["available"]) == (13, 6, 7)
    assert [lv["warehouse"] for lv in totals["levels"]] == ["EAST", "MAIN"]
    refused(api.get("stock_query", "/levels/NOPE"), 404, "unknown_sku")

    low = ok(api.get("stock_query", "/low-stock"))["items"]
    assert [(r["warehouse"], r["sku"], r["available"], r["reorder_point"]) for r in low] == [
        ("EAST", "A", 3, 5),
        ("MAIN", "A", 4, 5),
        ("MAIN", "C", 1, 1),
    ]
    main_low = ok(api.get("stock_query", "/low-stock?warehouse=MAIN"))["items"]
    assert [r["sku"] for r in main_low] == ["A", "C"]

    moves = ok(api.get("stock_query", "/movements?sku=A&warehouse=MAIN"))["items"]
    assert [(m["kind"], m["delta_on_hand"], m["delta_reserved"]) for m in moves] == [
        ("reserve", 0, 6),
        ("receive", 10, 0),
    ]
    assert moves[0]["order_id"] == "SO-1" and moves[0]["reserved_after"] == 6
    assert moves[0]["created_at"].endswith("Z")
    first = ok(api.get("stock_query", "/movements?limit=2"))
    rest = ok(api.get("stock_query", f"/movements?limit=1000&cursor={first['next_cursor']}"))
    ids = [m["id"] for m in first["items"] + rest["items"]]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True) and rest["next_cursor"] is None
    assert ok(api.get("stock_query", "/movements?sku=NOPE"))["items"] == []

    def field_of(response: TestResponse) -> str:
        return refused(response, 422, "invalid_request")["field"]

    assert field_of(api.get("stock_query", "/levels?limit=0")) == "limit"
    assert field_of(api.get("stock_query", "/movements?limit=5000")) == "limit"
    assert field_of(api.get("stock_query", "/low-stock?limit=x")) == "limit"
    assert field_of(api.get("stock_query", "/levels?sku=bad%20sku")) == "sku"
    assert field_of(api.get("stock_query", "/movements?warehouse=bad%20wh")) == "warehouse"
    assert field_of(api.get("stock_query", "/movements?cursor=zzz")) == "cursor"
    assert field_of(api.get("stock_query", "/levels/bad%20sku")) == "sku"
    refused(api.post("stock_query", "/levels", {}), 405, "method_not_allowed")
