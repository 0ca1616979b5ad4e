"""Every function in-process over HTTP (functions-framework test clients) on the real stores:
MariaDB and SQLite, the real Redis. Happy paths, the contract's error statuses, replays,
auth and each function's OpenAPI document. The harness is tests/integration/functions_api.py;
Kafka deliveries are in test_function_deliveries.py."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import redis
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from shared_lib import bootstrap
from tests.integration.functions_api import (
    FUNCTIONS,
    READER,
    WRITER,
    Api,
    Boot,
    catalog,
    gate_rebuilt,
    ok,
    receive,
    refused,
)

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


# ---- the stock functions ----------------------------------------------------------------


def test_stock_functions_error_statuses(api: Api) -> None:
    catalog(api, {"A": 0, "B": 0})
    receive(api, A=5, B=3)
    before = (api.levels(), api.movement_ids())

    unknown_sku = api.post(
        "stock_in", "/", {"warehouse": "MAIN", "lines": [{"sku": "NOPE", "qty": 1}]}
    )
    assert refused(unknown_sku, 404, "unknown_sku")["sku"] == "NOPE"
    unknown_wh = api.post("stock_in", "/", {"warehouse": "NOPE", "lines": [{"sku": "A", "qty": 1}]})
    refused(unknown_wh, 404, "unknown_warehouse")
    zero = api.post("stock_in", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 0}]})
    assert refused(zero, 422, "invalid_request")["field"] == "lines[0].qty"
    no_lines = api.post("create_order", "/", {"warehouse": "MAIN", "lines": []})
    assert refused(no_lines, 422, "invalid_request")["field"] == "lines"
    no_reason = api.post("stock_out", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]})
    assert refused(no_reason, 422, "invalid_request")["field"] == "reason"
    refused(api.post("stock_out", "/", data="not json"), 400, "invalid_json")
    no_key = api.post(
        "create_order", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}, key=None
    )
    assert refused(no_key, 400, "invalid_request")["field"] == "Idempotency-Key"
    refused(api.get("create_order", "/SO-NOPE"), 404, "unknown_order")
    refused(api.post("create_order", "/SO-NOPE/cancel"), 404, "unknown_order")
    refused(api.post("stock_out", "/", {"order_id": "SO-NOPE"}), 404, "unknown_order")
    refused(api.get("stock_in", "/"), 405, "method_not_allowed")
    refused(api.delete("create_order", "/SO-1"), 405, "method_not_allowed")

    short = api.post(
        "create_order",
        "/",
        {
            "order_id": "SO-SHORT",
            "warehouse": "MAIN",
            "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 99}],
        },
    )
    assert refused(short, 409, "insufficient_stock")["shortfalls"] == [
        {"sku": "B", "requested": 99, "available": 3}
    ]
    over = api.post(
        "stock_out", "/", {"warehouse": "MAIN", "reason": "sale", "lines": [{"sku": "A", "qty": 6}]}
    )
    assert refused(over, 409, "insufficient_stock")["shortfalls"] == [
        {"sku": "A", "requested": 6, "available": 5}
    ]
    refused(api.get("create_order", "/SO-SHORT"), 404, "unknown_order")
    assert (api.levels(), api.movement_ids()) == before
    # nothing stayed held either: the whole balance can still be taken
    ok(
        api.post(
            "create_order",
            "/",
            {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 5}, {"sku": "B", "qty": 3}]},
        ),
        201,
    )
    assert api.levels() == {"A": (5, 5), "B": (3, 3)}


def test_replays_answer_the_first_call_and_reuse_is_refused(api: Api) -> None:
    catalog(api, {"A": 0})
    body = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 4}]}
    first = api.post("stock_in", "/", body, key="rcv-1")
    again = api.post("stock_in", "/", body, key="rcv-1")
    assert ok(again) == ok(first)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    reuse = api.post("stock_in", "/", {**body, "reference": "PO-9"}, key="rcv-1")
    refused(reuse, 409, "idempotency_key_reused")

    gate_rebuilt()
    order = {"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]}
    placed = api.post("create_order", "/", order, key="ord-1")
    assert ok(placed, 201)["status"] == "reserved" and "X-PSI-Degraded" not in placed.headers
    replayed = api.post("create_order", "/", order, key="ord-1")
    assert ok(replayed, 201) == placed.get_json()
    assert replayed.headers["Idempotent-Replayed"] == "true"
    refused(
        api.post("create_order", "/", {**order, "lines": [{"sku": "A", "qty": 1}]}, key="ord-1"),
        409,
        "idempotency_key_reused",
    )
    assert api.levels() == {"A": (4, 3)}
    assert len(api.movement_ids()) == 2


def test_replay_of_an_order_placed_before_the_gate_was_ready_answers_the_first_call(
    api: Api,
) -> None:
    catalog(api, {"A": 0})
    receive(api, A=4)
    order = {"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]}
    placed = api.post("create_order", "/", order, key="ord-1")
    # the gate was never rebuilt: the order took the degraded path and left no gate marker
    assert ok(placed, 201)["status"] == "reserved" and placed.headers["X-PSI-Degraded"] == "true"
    gate_rebuilt()
    replayed = api.post("create_order", "/", order, key="ord-1")
    assert ok(replayed, 201) == placed.get_json()
    assert replayed.headers["Idempotent-Replayed"] == "true"


def test_a_replay_after_redis_lost_everything_answers_the_first_call(
    api: Api, redis_client: redis.Redis
) -> None:
    """Order K, Redis loses its data, the gate is rebuilt, the stock sells out: K's replay
    is still its first answer, and K with another body is a reuse, not a shortage."""
    catalog(api, {"A": 0})
    receive(api, A=4)
    gate_rebuilt()
    order = {"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]}
    placed = api.post("create_order", "/", order, key="ord-k")
    assert ok(placed, 201)["status"] == "reserved" and "X-PSI-Degraded" not in placed.headers

    prefix = bootstrap.get_platform().gate.prefix
    for key in redis_client.scan_iter(match=f"{{{prefix}:*", count=1000):
        redis_client.delete(key)
    gate_rebuilt()
    rest = {"order_id": "SO-2", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
    ok(api.post("create_order", "/", rest), 201)  # sold out now

    replayed = api.post("create_order", "/", order, key="ord-k")
    assert ok(replayed, 201) == placed.get_json()
    assert replayed.headers["Idempotent-Replayed"] == "true"
    other = {**order, "order_id": "SO-3", "lines": [{"sku": "A", "qty": 1}]}
    refused(api.post("create_order", "/", other, key="ord-k"), 409, "idempotency_key_reused")
    assert api.levels() == {"A": (4, 4)}


def test_body_too_large_is_refused_before_parsing(boot: Boot) -> None:
    api = boot(PSI_MAX_BODY_BYTES="1024")
    catalog(api, {"A": 0})
    big = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}], "reference": "x" * 2000}
    too_large = refused(api.post("stock_in", "/", big), 413, "body_too_large")
    assert too_large["limit_bytes"] == 1024
    refused(api.put("catalog", "/products/B", {"name": "y" * 2000}), 413, "body_too_large")
    assert api.levels() == {}
    ok(api.post("stock_in", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}))


def test_walkthrough_from_catalog_to_movement_history(api: Api) -> None:
    catalog(api, {"A": 5, "B": 0}, ("MAIN", "EAST"))
    assert receive(api, A=10, B=3)["levels"] == [
        {"sku": "A", "warehouse": "MAIN", "on_hand": 10, "reserved": 0, "available": 10},
        {"sku": "B", "warehouse": "MAIN", "on_hand": 3, "reserved": 0, "available": 3},
    ]
    assert ok(api.get("stock_query", "/low-stock"))["items"] == []

    so1 = ok(
        api.post(
            "create_order",
            "/",
            {
                "order_id": "SO-1",
                "warehouse": "MAIN",
                "customer": "ACME",
                "lines": [{"sku": "A", "qty": 6}, {"sku": "B", "qty": 3}],
            },
        ),
        201,
    )
    assert so1["status"] == "reserved"
    assert ok(api.get("create_order", "/SO-1"))["lines"] == [
        {"sku": "A", "qty": 6},
        {"sku": "B", "qty": 3},
    ]
    assert api.levels() == {"A": (10, 6), "B": (3, 3)}
    shipped = ok(api.post("stock_out", "/", {"order_id": "SO-1", "reference": "DN-1"}))
    assert shipped["status"] == "shipped"
    assert api.levels() == {"A": (4, 0), "B": (0, 0)}

    ok(
        api.post(
            "create_order",
            "/",
            {"order_id": "SO-2", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]},
        ),
        201,
    )
    assert api.levels()["A"] == (4, 2)
    assert ok(api.post("create_order", "/SO-2/cancel"))["status"] == "cancelled"
    assert ok(api.get("create_order", "/SO-2"))["status"] == "cancelled"
    assert api.levels()["A"] == (4, 0)

    ok(api.post("stock_in", "/adjustments", {"warehouse": "MAIN", "sku": "B", "counted": 2}))
    ok(
        api.post(
            "stock_out",
            "/transfers",
            {"source": "MAIN", "destination": "EAST", "lines": [{"sku": "A", "qty": 1}]},
        )
    )
    assert api.levels() == {"A": (3, 0), "B": (2, 0)}
    assert api.levels("EAST") == {"A": (1, 0)}

    low = ok(api.get("stock_query", "/low-stock"))["items"]
    assert [(r["warehouse"], r["sku"], r["available"], r["reorder_point"]) for r in low] == [
        ("EAST", "A", 1, 5),
        ("MAIN", "A", 3, 5),
    ]

    history = ok(api.get("stock_query", "/movements?sku=A&warehouse=MAIN"))["items"]
    assert [
        (m["kind"], m["delta_on_hand"], m["delta_reserved"], m["on_hand_after"]) for m in history
    ] == [
        ("transfer_out", -1, 0, 3),
        ("release", 0, -2, 4),
        ("reserve", 0, 2, 4),
        ("ship", -6, -6, 4),
        ("reserve", 0, 6, 10),
        ("receive", 10, 0, 10),
    ]
    assert history[3]["order_id"] == "SO-1" and history[3]["reference"] == "DN-1"
    everything = ok(api.get("stock_query", "/movements?limit=1000"))["items"]
    ledger: dict[tuple[str, str], list[int]] = {}
    for m in everything:
        sums = ledger.setdefault((m["warehouse"], m["sku"]), [0, 0])
        sums[0] += m["delta_on_hand"]
        sums[1] += m["delta_reserved"]
    assert ledger == {("MAIN", "A"): [3, 0], ("MAIN", "B"): [2, 0], ("EAST", "A"): [1, 0]}
    totals = ok(api.get("stock_query", "/levels/A"))
    assert (totals["on_hand"], totals["available"]) == (4, 4)
    refused(api.delete("catalog", "/products/A"), 409, "stock_exists")


# ---- auth -------------------------------------------------------------------------------


def test_api_keys_and_scopes(boot: Boot) -> None:
    api = boot(
        PSI_AUTH_DISABLED="false",
        PSI_API_KEYS=f"{READER}=stock:read;{WRITER}=stock:write,stock:read",
    )
    reader = {"Authorization": f"Bearer {READER}"}
    writer = {"Authorization": f"Bearer {WRITER}"}
    body = {"name": "Main"}

    no_key = refused(api.put("catalog", "/warehouses/MAIN", body, key="w-1"), 401, "unauthorized")
    assert no_key["message"]
    wrong = api.put(
        "catalog",
        "/warehouses/MAIN",
        body,
        key="w-1",
        headers={"Authorization": "Bearer not-a-key-0000000000"},
    )
    refused(wrong, 401, "unauthorized")
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    refused(
        api.put("catalog", "/warehouses/MAIN", body, key="w-1", headers=reader), 403, "forbidden"
    )
    refused(api.get("catalog", "/warehouses"), 401, "unauthorized")
    assert ok(api.get("catalog", "/warehouses", headers=reader))["items"] == []

    # the refused calls left no trace: the same key now creates, it does not replay
    created = api.put("catalog", "/warehouses/MAIN", body, key="w-1", headers=writer)
    assert ok(created, 201) == {"code": "MAIN", "name": "Main"}
    assert "Idempotent-Replayed" not in created.headers
    ok(api.put("catalog", "/products/A", {"name": "A"}, headers=writer), 201)

    receipt = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
    refused(api.post("stock_in", "/", receipt, headers=reader), 403, "forbidden")
    refused(api.get("stock_query", "/levels"), 401, "unauthorized")
    assert ok(api.get("stock_query", "/levels", headers=reader))["items"] == []
    ok(api.post("stock_in", "/", receipt, headers=writer))
    levels = ok(api.get("stock_query", "/levels", headers=reader))["items"]
    assert [(lv["sku"], lv["on_hand"]) for lv in levels] == [("A", 1)]
    assert ok(api.get("catalog", "/health/live"))["status"] == "ok"


# ---- documents and health ---------------------------------------------------------------


def test_every_function_serves_a_valid_openapi_document(api: Api) -> None:
    for function in FUNCTIONS:
        document = ok(api.get(function, "/openapi.json"))
        validate(document)
        assert document["openapi"].startswith("3.1"), function
    paths = ok(api.get("catalog", "/openapi.json"))["paths"]
    assert {"put", "get", "delete"} <= set(paths["/products/{sku}"])
    assert set(ok(api.get("stock_query", "/openapi.json"))["paths"]) >= {
        "/levels",
        "/levels/{sku}",
        "/low-stock",
        "/movements",
    }


def test_read_functions_are_ready_without_redis(api: Api) -> None:
    for function in ("catalog", "stock_query"):
        ready = ok(api.get(function, "/health/ready"))
        assert ready["status"] == "ready" and ready["database"] == "ok"
        assert "redis" not in ready
