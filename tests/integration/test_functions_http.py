"""Every function in-process over HTTP (functions-framework test clients) on the real stores:
MariaDB and SQLite, the real Redis. Happy paths, the contract's error statuses, replays,
Kafka deliveries, auth and each function's OpenAPI document."""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import pytest
import redis
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from shared_lib import bootstrap, topics
from shared_lib.config import get_settings
from shared_lib.services.cache import rebuild_warehouse
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("catalog", "stock_query", "stock_in", "stock_out", "create_order")
AUTO = "auto"
KAFKA_SOURCE = "/apis/v1/namespaces/default/kafkasources/psi#"
CE_JSON = "application/cloudevents+json"
READER = "reader-key-0000000001"
WRITER = "writer-key-0000000001"


@dataclass
class Api:
    """One test client per function; mutations get a fresh Idempotency-Key unless told."""

    clients: dict[str, FlaskClient]

    def call(
        self,
        function: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = AUTO,
        headers: dict[str, str] | None = None,
        data: str | bytes | None = None,
        content_type: str = "application/json",
    ) -> TestResponse:
        sent = dict(headers or {})
        if key == AUTO:
            key = None if method == "GET" else uuid.uuid4().hex
        if key is not None:
            sent["Idempotency-Key"] = key
        if body is not None:
            data = json.dumps(body)
        return self.clients[function].open(
            path,
            method=method,
            data=data,
            headers=sent,
            content_type=content_type if data is not None else None,
        )

    def get(self, function: str, path: str, **kw: Any) -> TestResponse:
        return self.call(function, "GET", path, **kw)

    def put(self, function: str, path: str, body: Any = None, **kw: Any) -> TestResponse:
        return self.call(function, "PUT", path, body, **kw)

    def post(self, function: str, path: str, body: Any = None, **kw: Any) -> TestResponse:
        return self.call(function, "POST", path, body, **kw)

    def delete(self, function: str, path: str, **kw: Any) -> TestResponse:
        return self.call(function, "DELETE", path, **kw)

    # -- what users see, through stock-query
    def levels(self, warehouse: str = "MAIN") -> dict[str, tuple[int, int]]:
        items = ok(self.get("stock_query", f"/levels?warehouse={warehouse}&limit=1000"))["items"]
        return {lv["sku"]: (lv["on_hand"], lv["reserved"]) for lv in items}

    def movement_ids(self) -> list[int]:
        return [m["id"] for m in ok(self.get("stock_query", "/movements?limit=1000"))["items"]]


def ok(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()


def refused(response: TestResponse, status: int, error: str) -> dict[str, Any]:
    body = response.get_json()
    assert response.status_code == status, (response.status_code, body)
    assert body["error"] == error, body
    return body


Boot = Callable[..., Api]


@pytest.fixture
def boot(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_server: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> Iterator[Boot]:
    """Starts every function against this test's database and Redis key space. Settings and
    the platform are cached per process, so each start clears both and loads the modules anew."""
    prefix = f"psiht{uuid.uuid4().hex[:8]}"
    base = {
        "PSI_DATABASE_URL": database_url,
        "PSI_REDIS_URL": redis_server,
        "PSI_REDIS_PREFIX": prefix,
        "PSI_AUTH_DISABLED": "true",
        "PSI_DATA_DIR": str(tmp_path / "data"),
        "PSI_SECRETS_DIR": str(tmp_path / "no-secrets"),
    }
    for name in list(os.environ):
        if name.startswith("PSI_") and not name.startswith("PSI_TEST_"):
            monkeypatch.delenv(name)
    # create_app sets FUNCTION_TARGET and appends to sys.path: undone after the test
    monkeypatch.setenv("FUNCTION_TARGET", "handle")
    monkeypatch.setattr(sys, "path", [*sys.path])
    started = False

    def reset() -> None:
        if started:
            # background gate rebuilds must finish before the pools close
            rebuilder = bootstrap.get_platform().rebuilder
            if rebuilder is not None:
                rebuilder.join()
        bootstrap.shutdown()
        get_settings.cache_clear()

    def start(**env: str) -> Api:
        nonlocal started
        reset()
        for name, value in {**base, **env}.items():
            monkeypatch.setenv(name, value)
        clients = {
            fn: functions_framework.create_app(
                target="handle", source=str(ROOT / "functions" / fn / "main.py")
            ).test_client()
            for fn in FUNCTIONS
        }
        started = True
        return Api(clients)

    yield start
    reset()
    for key in redis_client.scan_iter(match=f"{{{prefix}:*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def api(boot: Boot) -> Api:
    return boot()


def catalog(api: Api, products: dict[str, int], warehouses: tuple[str, ...] = ("MAIN",)) -> None:
    """Products with these reorder points, and the warehouses."""
    for sku, reorder_point in products.items():
        ok(
            api.put("catalog", f"/products/{sku}", {"name": sku, "reorder_point": reorder_point}),
            201,
        )
    for code in warehouses:
        ok(api.put("catalog", f"/warehouses/{code}", {"name": f"warehouse {code}"}), 201)


def receive(api: Api, warehouse: str = "MAIN", **qty: int) -> dict[str, Any]:
    lines = [{"sku": s, "qty": q} for s, q in qty.items()]
    return ok(api.post("stock_in", "/", {"warehouse": warehouse, "lines": lines}), 201)


def gate_rebuilt(warehouse: str = "MAIN") -> None:
    """Bring the shared gate up to date now, as the background rebuild does eventually."""
    platform = bootstrap.get_platform()
    assert platform.gate is not None
    wait_until(
        lambda: rebuild_warehouse(platform.deps.tx, platform.gate, warehouse) is not None,
        what=f"gate rebuild of {warehouse}",
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
    assert patch["allowed"] == "DELETE, GET, PUT"
    assert api.post("catalog", "/warehouses", {"name": "x"}).headers["Allow"] == "GET"
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
    assert ok(again, 201) == ok(first, 201)
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
    ok(api.post("stock_in", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}), 201)


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


# ---- Kafka deliveries -------------------------------------------------------------------


def test_stock_in_deliveries_have_one_effect_per_event(api: Api) -> None:
    catalog(api, {"A": 0})
    data = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]}
    binary = {
        "ce-id": "evt-binary-1",
        "ce-source": KAFKA_SOURCE + topics.STOCK_IN_REQUESTED,
        "ce-type": "psi.stock-in.requested",
        "ce-specversion": "1.0",
    }
    answers = [api.post("stock_in", "/", data, key=None, headers=binary) for _ in range(3)]
    assert [r.status_code for r in answers] == [201, 201, 201]
    assert [r.headers.get("Idempotent-Replayed") for r in answers] == [None, "true", "true"]
    assert api.levels() == {"A": (2, 0)}

    structured = {
        "specversion": "1.0",
        "id": "evt-structured-1",
        "source": KAFKA_SOURCE + topics.STOCK_IN_REQUESTED,
        "type": "psi.stock-in.requested",
        "datacontenttype": "application/json",
        "data": {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]},
    }
    for _ in range(2):
        ok(
            api.post(
                "stock_in", "/", structured, key=None, content_type="application/cloudevents+json"
            ),
            201,
        )
    assert api.levels() == {"A": (5, 0)}

    connector = {
        **structured,
        "id": "evt-connector-1",
        "source": "/psi/test",
        "data": {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 4}]},
    }
    # kafka-connector: a record with a content-type header that says it is a CloudEvent
    as_event = {"X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Content-Type": CE_JSON}
    for offset in ("7", "8"):  # the same event produced twice: two records, one effect
        record = {**as_event, "X-Kafka-Partition": "0", "X-Kafka-Offset": offset}
        ok(api.post("stock_in", "/", connector, key=None, headers=record), 201)
    assert api.levels() == {"A": (9, 0)}
    assert len(api.movement_ids()) == 3

    # a plain record is known by (topic, partition, offset): a redelivery has one effect
    plain = {"X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Partition": "1"}
    for offset in ("5", "5", "6"):
        record = {**plain, "X-Kafka-Offset": offset}
        ok(api.post("stock_in", "/", data, key=None, headers=record), 201)
    assert api.levels() == {"A": (13, 0)}

    wrong = api.post(
        "stock_in", "/", connector, key=None, headers={"X-Topic": topics.STOCK_OUT_REQUESTED}
    )
    assert refused(wrong, 400, "unexpected_topic")["topic"] == topics.STOCK_OUT_REQUESTED
    wrong_source = {
        **binary,
        "ce-id": "evt-binary-2",
        "ce-source": KAFKA_SOURCE + topics.STOCK_OUT_REQUESTED,
    }
    refused(
        api.post("stock_in", "/", data, key=None, headers=wrong_source), 400, "unexpected_topic"
    )
    # a function that consumes no topic takes no deliveries: the header means nothing there
    no_key = api.put(
        "catalog",
        "/products/Z",
        {"name": "z"},
        key=None,
        headers={"X-Topic": topics.STOCK_IN_REQUESTED},
    )
    assert refused(no_key, 400, "invalid_request")["field"] == "Idempotency-Key"
    assert api.levels() == {"A": (13, 0)}
    refused(api.get("catalog", "/products/Z"), 404, "unknown_sku")


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
    ok(api.post("stock_in", "/", receipt, headers=writer), 201)
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


def test_a_kafka_connector_delivery_that_is_refused_is_parked_in_the_dead_letter_topic(
    boot: Boot, broker
) -> None:
    from psi_local.events_schema import validate_event
    from shared_lib.adapters.kafka import read_topic

    api = boot(PSI_KAFKA_BOOTSTRAP=broker.bootstrap)
    catalog(api, {"A": 0})
    offset = uuid.uuid4().int % 10**9  # the broker is shared by the module's tests
    connector = {
        "X-Topic": topics.STOCK_IN_REQUESTED,
        "X-Kafka-Partition": "2",
        "X-Kafka-Offset": str(offset),
    }
    poison = b'{"warehouse": "MAIN", "lines": [{"sku": "A", "qty": -1}]}'
    next_one = {**connector, "X-Kafka-Offset": str(offset + 1)}
    refused(api.post("stock_in", "/", data=poison, headers=connector), 422, "invalid_request")
    refused(api.post("stock_in", "/", data=b"\xff\xfe", headers=next_one), 400, "invalid_json")
    # the same record delivered again: the first answer, and no second letter
    again = api.post("stock_in", "/", data=poison, headers=connector)
    assert refused(again, 422, "invalid_request")["field"] == "lines[0].qty"

    def ours(records: list) -> list[dict]:
        docs = [json.loads(r.value) for r in records]
        return [d for d in docs if d["offset"] in (offset, offset + 1)]

    letters = read_topic(
        broker.bootstrap, topics.DEAD_LETTER, until=lambda rs: len(ours(rs)) >= 3, timeout=5
    )
    docs = sorted(ours(letters), key=lambda d: d["offset"])
    assert len(docs) == 2
    for doc in docs:
        validate_event(topics.DEAD_LETTER, doc)
        assert doc["topic"] == topics.STOCK_IN_REQUESTED and doc["function"] == "stock-in"
    assert docs[0]["payload"] == poison.decode() and docs[0]["status"] == 422
    assert docs[0]["partition"] == 2
    assert "lines[0].qty" in docs[0]["reason"]
    assert docs[1]["payload_base64"] == "//4="
    assert api.levels() == {}
