"""Every function in-process over HTTP (functions-framework test clients): API keys and
scopes, each function's OpenAPI document and readiness without Redis.
On the real stores: MariaDB and SQLite, the real Redis. The harness is
tests/integration/functions_api.py; Kafka deliveries are in test_function_deliveries.py."""

from __future__ import annotations

from openapi_spec_validator import validate

from tests.integration.functions_api import FUNCTIONS, READER, WRITER, Api, Boot, ok, refused

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
