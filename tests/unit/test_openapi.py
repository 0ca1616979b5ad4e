"""The OpenAPI documents of the six functions: valid, typed, exact, with their headers.

The documents are built from the functions' own routes (no server needed); that real
answers conform to them is the fuzz suite's part (tests/badinput/test_openapi_fuzz.py).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from shared_lib.cli.openapi import function_apps, merged
from shared_lib.domain import errors as domain_errors
from shared_lib.domain.model import Level, Line, Order, OrderStatus, Product, Warehouse
from shared_lib.http.app import FunctionApp
from shared_lib.http.errors import PROBLEM_JSON, problem, status_of
from shared_lib.http.openapi import QUERY, document
from shared_lib.services.guard import levels_body, order_body
from shared_lib.services.ports import MovementRecord
from shared_lib.services.reconcile.ports import RunRecord

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "patch", "head")
JSON = "application/json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM = {PROBLEM_JSON: {"schema": PROBLEM_REF}}


@pytest.fixture(scope="module")
def apps() -> list[FunctionApp]:
    return function_apps()


@pytest.fixture(scope="module")
def documents(apps: list[FunctionApp]) -> dict[str, dict[str, Any]]:
    return {app.name: document(app.name, app.description, app.routes) for app in apps}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def declared(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The operations of the function's routes (not health)."""
    return [(m, p, op) for m, p, op in operations(doc) if not p.startswith("/health")]


def conforms(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """What is wrong with ``value`` by ``schema`` (a schema of ``doc``); [] when it conforms."""
    root = {**schema, "components": doc["components"]}
    validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [error.message for error in validator.iter_errors(value)]


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_the_six_functions_are_found(apps: list[FunctionApp]) -> None:
    assert sorted(app.name for app in apps) == [
        "catalog",
        "create-order",
        "reconcile",
        "stock-in",
        "stock-out",
        "stock-query",
    ]


def test_every_document_is_valid_openapi_3_1(documents: dict[str, dict[str, Any]]) -> None:
    for name, doc in documents.items():
        validate(doc)
        assert doc["openapi"] == "3.1.0", name


def test_operation_ids_are_unique_across_the_six_documents(
    documents: dict[str, dict[str, Any]],
) -> None:
    ids = [op["operationId"] for doc in documents.values() for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert "createOrder_place" in ids and "catalog_getProductHead" in ids


def test_every_route_names_its_response_model(apps: list[FunctionApp]) -> None:
    missing = [f"{a.name} {r.method} {r.path}" for a in apps for r in a.routes if not r.response]
    assert missing == []


def test_every_query_parameter_is_documented(apps: list[FunctionApp]) -> None:
    taken = {name for app in apps for route in app.routes for name in route.query}
    assert taken - set(QUERY) == set()


def test_every_answer_has_a_schema_of_its_own(documents: dict[str, dict[str, Any]]) -> None:
    for name, doc in documents.items():
        for method, path, op in declared(doc):
            where = f"{name} {method} {path}"
            for status, answer in op["responses"].items():
                if method == "head" or status == "304":
                    assert "content" not in answer, where
                elif int(status) < 300:
                    schema = answer["content"]["application/json"]["schema"]
                    refs = schema.get("oneOf", [schema])
                    assert all(set(ref) == {"$ref"} for ref in refs), (where, status)
                else:
                    assert set(answer["content"]) == {PROBLEM_JSON}, (where, status)
                    assert answer["content"][PROBLEM_JSON]["schema"] == PROBLEM_REF, where


def test_examples_are_given_and_validate_against_their_schemas(
    documents: dict[str, dict[str, Any]],
) -> None:
    for name, doc in documents.items():
        for method, path, op in operations(doc):
            where = f"{name} {method} {path}"
            if "requestBody" in op:
                media = op["requestBody"]["content"]["application/json"]
                assert "example" in media, where
                assert conforms(doc, media["schema"], media["example"]) == [], where
            if method == "head":
                continue
            successes = [a for s, a in op["responses"].items() if s.startswith("2")]
            assert successes, where
            for answer in successes:
                assert "example" in answer["content"][JSON], where
            for answer in op["responses"].values():
                for media in answer.get("content", {}).values():
                    if "example" in media:
                        assert conforms(doc, media["schema"], media["example"]) == [], where


def test_a_wrong_member_is_caught(documents: dict[str, dict[str, Any]]) -> None:
    doc = documents["create-order"]
    order = doc["paths"]["/{order_id}"]["get"]["responses"]["200"]["content"][JSON]
    schema, good = order["schema"], order["example"]
    assert conforms(doc, schema, good) == []
    assert conforms(doc, schema, {k: v for k, v in good.items() if k != "status"})
    assert conforms(doc, schema, {**good, "state": "reserved"})
    assert conforms(doc, schema, {**good, "status": "lost"})
    assert conforms(doc, schema, {**good, "hold_until": "tomorrow"})
    assert conforms(doc, schema, {**good, "lines": [{"sku": "SKU-1", "qty": "2"}]})
    query = documents["stock-query"]
    page = query["paths"]["/levels"]["get"]["responses"]["200"]["content"][JSON]
    item = dict(page["example"]["items"][0])
    del item["available"]
    assert conforms(query, page["schema"], {"items": [item], "next_cursor": None})
    assert conforms(query, page["schema"], {"items": []}), "next_cursor is required"


def test_the_shapes_the_code_builds_conform(documents: dict[str, dict[str, Any]]) -> None:
    """The models describe what as_dict and the services' bodies really are."""
    schemas = {k: v for d in documents.values() for k, v in d["components"]["schemas"].items()}
    doc = {"components": {"schemas": schemas}}
    level = Level("SKU-1", "MAIN", 5, 2, 3)
    order = Order("SO-1", "MAIN", OrderStatus.RESERVED, (Line("SKU-1", 2),), datetime(2026, 1, 2))
    moved = MovementRecord(
        1,
        "reserve",
        "SKU-1",
        "MAIN",
        0,
        2,
        5,
        2,
        None,
        None,
        "SO-1",
        "erp",
        "k",
        datetime(2026, 1, 2),
    )
    run = RunRecord("r-1", "nightly", "finished", True, datetime(2026, 1, 2), report_uri=None)
    shapes = {
        "Level": level.as_dict(),
        "Levels": {"levels": levels_body([level])},
        "Order": order.as_dict(),
        "OrderChange": order_body(order, [level]),
        "Product": Product("SKU-1", "Mug").as_dict(),
        "Warehouse": Warehouse("MAIN", "Main").as_dict(),
        "Movement": moved.as_dict(),
        "ReconcileRun": run.result(),
    }
    for name, body in shapes.items():
        assert conforms(doc, component(name), body) == [], name


def every_domain_error() -> list[domain_errors.PsiError]:
    e = domain_errors
    return [
        e.InvalidRequest("lines[0].qty", "must be an integer"),
        e.UnknownSku("SKU-9"),
        e.UnknownWarehouse("NOPE"),
        e.UnknownOrder("SO-9"),
        e.InsufficientStock("MAIN", [e.Shortfall("SKU-1", 5, 3)]),
        e.IdempotencyConflict("k-1"),
        e.RequestInProgress("k-1"),
        e.RunKeyConflict("nightly", True),
        e.InvalidOrderState("SO-1", "shipped", "cancel"),
        e.OrderExists("SO-1"),
        e.CountMismatch("SKU-1", "MAIN", 4, 5),
        e.StockStillHeld("product 'SKU-1'"),
        e.StoreUnavailable("database"),
    ]


def test_the_problem_of_every_domain_error_conforms(documents: dict[str, dict[str, Any]]) -> None:
    doc = documents["create-order"]
    for error in every_domain_error():
        body = problem(status_of(error), error.as_dict(), "req-1")
        assert conforms(doc, component("Problem"), body) == [], error.code
        assert body["error"] == error.code
    assert conforms(doc, component("Problem"), {"error": "x", "status": 400})


def response(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    return doc["paths"][path][method]["responses"][status]


def parameters(doc: dict[str, Any], path: str, method: str) -> set[str]:
    return {p["name"] for p in doc["paths"][path][method]["parameters"]}


def test_response_headers_are_documented(documents: dict[str, dict[str, Any]]) -> None:
    for name, doc in documents.items():
        for method, path, op in declared(doc):
            where = f"{name} {method} {path}"
            for status, answer in op["responses"].items():
                headers = answer.get("headers", {})
                if status == "201":
                    assert headers["Location"]["required"] is True, where
                if status == "503":
                    assert "Retry-After" in headers, where
                if status.startswith("2") and method in ("put", "post", "delete"):
                    assert {"Idempotent-Replayed", "X-PSI-Degraded"} <= set(headers), where
    reads = {
        "catalog": ("/products/{sku}", "/warehouses/{code}"),
        "create-order": ("/{order_id}",),
        "stock-query": ("/levels/{sku}",),
    }
    for name, paths in reads.items():
        for path in paths:
            for method in ("get", "head"):
                doc = documents[name]
                assert response(doc, path, method, "200")["headers"]["ETag"]["required"]
                assert "ETag" in response(doc, path, method, "304")["headers"]
                assert "If-None-Match" in parameters(doc, path, method)
    catalog = documents["catalog"]
    for path, method in (("/products/{sku}", "put"), ("/products/{sku}", "delete")):
        assert "If-Match" in parameters(catalog, path, method)
        assert response(catalog, path, method, "412")["content"] == PROBLEM
    assert "412" not in catalog["paths"]["/products"]["get"]["responses"]
    assert "304" not in catalog["paths"]["/products"]["get"]["responses"]


def test_every_get_has_its_head(documents: dict[str, dict[str, Any]]) -> None:
    for name, doc in documents.items():
        for path, item in doc["paths"].items():
            if "get" in item:
                head = item["head"]
                assert set(head["responses"]) == set(item["get"]["responses"]), (name, path)
                assert head["operationId"] == item["get"]["operationId"] + "Head"
            else:
                assert "head" not in item, (name, path)


def test_servers_and_one_tag_per_resource(documents: dict[str, dict[str, Any]]) -> None:
    for name, doc in documents.items():
        assert doc["servers"][0]["url"] == "/"
        assert "/function/<name>" in doc["servers"][0]["description"]
        named = {tag["name"] for tag in doc["tags"]}
        assert all(tag["description"] for tag in doc["tags"])
        used = {tag for _, _, op in operations(doc) for tag in op["tags"]}
        assert used == named, name
    assert {t["name"] for t in documents["catalog"]["tags"]} == {"products", "warehouses", "health"}
    assert {t["name"] for t in documents["stock-query"]["tags"]} == {
        "levels",
        "movements",
        "health",
    }


def test_pydantic_is_not_loaded_with_a_function() -> None:
    """Models load with the first body or document, not at a cold start."""
    code = (
        "import os, sys; os.environ['PSI_AUTH_DISABLED'] = 'true'\n"
        "import functions.catalog.main, functions.create_order.main, functions.stock_out.main\n"
        "import functions.stock_in.main, functions.stock_query.main, functions.reconcile.main\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported at start'\n"
        "assert 'shared_lib.http.responses' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_merged_document_is_valid(apps: list[FunctionApp]) -> None:
    doc = merged(apps)
    validate(doc)
    assert "/create-order/{order_id}" in doc["paths"] and "/stock-in" in doc["paths"]
    assert doc["servers"] == [{"url": "/function", "description": doc["servers"][0]["description"]}]
