"""The stock functions (stock-in, stock-out, create-order) in-process over HTTP
(functions-framework test clients): the contract's error statuses, replays, the body limit
and a walkthrough from catalog to movement history.
On the real stores: MariaDB and SQLite, the real Redis. The harness is
tests/integration/functions_api.py; Kafka deliveries are in test_function_deliveries.py."""

from __future__ import annotations

import redis

from shared_lib import bootstrap
from tests.integration.functions_api import Api, Boot, catalog, gate_rebuilt, ok, receive, refused

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
