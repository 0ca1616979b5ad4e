"""The order list (create-order's GET /) and the movement filters (stock-query's
GET /movements) over HTTP, in-process on the real stores (MariaDB and SQLite, the real
Redis): filters, newest first, pages, the 422s that name the parameter, the scope, and the
parameters in each function's OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.integration.functions_api import (
    READER,
    WRITER,
    Api,
    Boot,
    catalog,
    ok,
    receive,
    refused,
)

pytestmark = pytest.mark.integration


def place(api: Api, order_id: str, warehouse: str = "MAIN", customer: str | None = None) -> None:
    body: dict[str, Any] = {
        "order_id": order_id,
        "warehouse": warehouse,
        "lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}],
    }
    if customer is not None:
        body["customer"] = customer
    ok(api.post("create_order", "/", body), 201)


def received(api: Api, sku: str, reference: str) -> None:
    receipt = {"warehouse": "MAIN", "lines": [{"sku": sku, "qty": 5}], "reference": reference}
    answer = api.post("stock_in", "/", receipt)
    assert answer.status_code < 300 and answer.get_json()["levels"], answer.get_data()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def orders(api: Api, **query: str) -> list[str]:
    body = ok(api.get("create_order", "/?" + urlencode(query)))
    return [item["order_id"] for item in body["items"]]


def field_of(api: Api, function: str, path: str) -> str:
    return refused(api.get(function, path), 422, "invalid_request")["field"]


def test_orders_list_filters_pages_and_refuses_bad_values(api: Api) -> None:
    catalog(api, {"A": 0, "B": 0}, ("MAIN", "EAST"))
    receive(api, "MAIN", A=50, B=50)
    receive(api, "EAST", A=50, B=50)
    assert ok(api.get("create_order", "/")) == {"items": [], "next_cursor": None}
    place(api, "SO-1", customer="ACME")
    place(api, "SO-2", "EAST", customer="ACME")
    between = now()  # after SO-2 was answered, before SO-3 was asked for
    place(api, "SO-3", customer="Bob")
    place(api, "SO-4", "EAST")
    ok(api.post("create_order", "/SO-3/cancel"))

    everything = ok(api.get("create_order", "/"))
    assert [o["order_id"] for o in everything["items"]] == ["SO-4", "SO-3", "SO-2", "SO-1"]
    for item in everything["items"]:
        assert item == ok(api.get("create_order", f"/{item['order_id']}"))
    assert everything["next_cursor"] is None

    assert orders(api, status="cancelled") == ["SO-3"]
    assert orders(api, status="reserved", warehouse="EAST") == ["SO-4", "SO-2"]
    assert orders(api, customer="ACME") == ["SO-2", "SO-1"]
    assert orders(api, customer="ACME", warehouse="MAIN", status="reserved") == ["SO-1"]
    assert orders(api, created_from=between) == ["SO-4", "SO-3"]
    assert orders(api, created_to=between) == ["SO-2", "SO-1"]
    assert orders(api, created_to=between, created_from="2026-01-01T00:00:00+01:00") == [
        "SO-2",
        "SO-1",
    ]
    assert orders(api, warehouse="NOPE") == []

    first = ok(api.get("create_order", "/?limit=3"))
    rest = ok(api.get("create_order", "/?" + urlencode({"cursor": first["next_cursor"]})))
    assert first["items"] + rest["items"] == everything["items"]
    assert rest["next_cursor"] is None

    assert field_of(api, "create_order", "/?status=open") == "status"
    assert field_of(api, "create_order", "/?status=") == "status"
    assert field_of(api, "create_order", "/?created_from=yesterday") == "created_from"
    # a '+' a client did not encode arrives as a space: refused, not read as another time
    assert field_of(api, "create_order", "/?created_to=2026-11-30T08:00:00+01:00") == "created_to"
    assert field_of(api, "create_order", "/?created_from=2026-11-30T08:00:00") == "created_from"
    later_first = urlencode(
        {"created_from": "2026-11-30T09:00:00Z", "created_to": "2026-11-30T10:00:00+02:00"}
    )
    assert field_of(api, "create_order", "/?" + later_first) == "created_to"
    assert field_of(api, "create_order", "/?customer=" + "c" * 101) == "customer"
    assert field_of(api, "create_order", "/?warehouse=bad%20wh") == "warehouse"
    assert field_of(api, "create_order", "/?limit=0") == "limit"
    movements_cursor = ok(api.get("stock_query", "/movements?limit=1"))["next_cursor"]
    assert field_of(api, "create_order", f"/?cursor={movements_cursor}") == "cursor"


def test_movements_filter_by_reference_and_time(api: Api) -> None:
    catalog(api, {"A": 0, "B": 0}, ("MAIN",))
    received(api, "A", "PO-7")
    between = now()
    received(api, "B", "PO 8/ü")
    place(api, "SO-1")

    def moves(**query: str) -> list[tuple[str, str, str | None]]:
        body = ok(api.get("stock_query", "/movements?" + urlencode(query)))
        return [(m["kind"], m["sku"], m["reference"]) for m in body["items"]]

    assert moves(reference="PO-7") == [("receive", "A", "PO-7")]
    assert moves(reference="PO 8/ü", sku="B", warehouse="MAIN") == [("receive", "B", "PO 8/ü")]
    assert moves(reference="PO-7", sku="B") == []
    assert moves(**{"to": between}) == [("receive", "A", "PO-7")]
    assert moves(**{"from": between}) == [
        ("reserve", "B", None),
        ("reserve", "A", None),
        ("receive", "B", "PO 8/ü"),
    ]
    assert moves(**{"from": between, "sku": "A"}) == [("reserve", "A", None)]
    assert field_of(api, "stock_query", "/movements?from=2026-11-30") == "from"
    assert field_of(api, "stock_query", "/movements?reference=" + "r" * 101) == "reference"
    backwards = urlencode({"from": "2026-11-30T09:00:00Z", "to": "2026-11-30T08:00:00Z"})
    assert field_of(api, "stock_query", "/movements?" + backwards) == "to"


def test_the_order_list_needs_the_read_scope(boot: Boot) -> None:
    api = boot(
        PSI_AUTH_DISABLED="false",
        PSI_API_KEYS=f"{READER}=stock:read;{WRITER}=orders:write",
    )
    refused(api.get("create_order", "/"), 401, "unauthorized")
    writer = {"Authorization": f"Bearer {WRITER}"}
    refused(api.get("create_order", "/", headers=writer), 403, "forbidden")
    reader = {"Authorization": f"Bearer {READER}"}
    assert ok(api.get("create_order", "/", headers=reader)) == {"items": [], "next_cursor": None}


def test_the_documents_describe_the_new_parameters(api: Api) -> None:
    def parameters(function: str, path: str) -> dict[str, dict[str, Any]]:
        document = ok(api.get(function, "/openapi.json"))
        operation = document["paths"][path]["get"]
        return {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}

    listed = parameters("create_order", "/")
    assert set(listed) == {
        "status",
        "warehouse",
        "customer",
        "created_from",
        "created_to",
        "limit",
        "cursor",
    }
    assert listed["status"]["schema"]["enum"] == ["reserved", "shipped", "cancelled", "expired"]
    assert listed["created_from"]["schema"]["format"] == "date-time"
    assert all(p["description"] for p in listed.values())
    movements = parameters("stock_query", "/movements")
    assert {"reference", "from", "to"} <= set(movements)
    assert movements["to"]["schema"]["format"] == "date-time"
