"""The HTTP contract clients and gateways rely on, in-process on the real stores: RFC 9457
problem documents, Location on 201, ETag with If-None-Match (304) and If-Match (412), HEAD
wherever GET is, and unknown query parameters refused by name."""

from __future__ import annotations

import threading
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from shared_lib.adapters.sql_engine import make_engine
from shared_lib.http.errors import PROBLEM_JSON, PROBLEM_TYPES
from tests.integration.functions_api import Api, Boot, catalog, ok, receive, refused
from tests.support import wait_until

PRODUCT = {"name": "Apple", "reorder_point": 5}


def problem_of(response: object, status: int, error: str) -> dict[str, object]:
    body = refused(response, status, error)  # type: ignore[arg-type]
    assert response.content_type == PROBLEM_JSON  # type: ignore[attr-defined]
    assert body["type"] == f"{PROBLEM_TYPES}#{error}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["message"] == body["detail"]  # the member clients of earlier releases read
    return body


# -- problem documents -------------------------------------------------------------------


def test_every_kind_of_error_is_a_problem_document(api: Api) -> None:
    catalog(api, {"A": 0})
    unknown = api.get("catalog", "/nowhere", headers={"X-Request-Id": "req 42/a"})
    body = problem_of(unknown, 404, "not_found")
    assert body["instance"] == quote("req 42/a", safe="")
    assert unknown.headers["X-Request-Id"] == "req 42/a"

    invalid = problem_of(api.put("catalog", "/products/B", {"name": ""}), 422, "invalid_request")
    assert invalid["field"] == "name"

    short = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]}
    refusal = problem_of(api.post("create_order", "/", short), 409, "insufficient_stock")
    assert refusal["warehouse"] == "MAIN"
    assert refusal["shortfalls"] == [{"sku": "A", "requested": 3, "available": 0}]

    keyless = problem_of(api.post("stock_in", "/", short, key=None), 400, "invalid_request")
    assert keyless["field"] == "Idempotency-Key"
    problem_of(
        api.call("catalog", "PATCH", "/products/A", {"name": "x"}), 405, "method_not_allowed"
    )
    media = api.post("stock_in", "/", data="x", content_type="text/plain")
    problem_of(media, 415, "unsupported_media_type")


def test_a_request_flask_refuses_before_routing_is_a_problem_too(api: Api) -> None:
    answer = api.clients["catalog"].get("/products/%0A")
    assert answer.status_code in (400, 404)
    assert answer.content_type == PROBLEM_JSON
    assert answer.get_json()["status"] == answer.status_code


def test_auth_refusals_are_problems(boot: Boot) -> None:
    api = boot(PSI_AUTH_DISABLED="false", PSI_API_KEYS="reader-key-0000000001=stock:read")
    missing = problem_of(api.get("catalog", "/products"), 401, "unauthorized")
    assert missing["instance"]
    reader = {"Authorization": "Bearer reader-key-0000000001"}
    problem_of(api.put("catalog", "/products/A", PRODUCT, headers=reader), 403, "forbidden")


# -- Location ----------------------------------------------------------------------------


def test_a_201_says_where_the_created_record_lives(api: Api) -> None:
    created = api.put("catalog", "/products/A", PRODUCT, key="p-a")
    assert created.status_code == 201 and created.headers["Location"] == "/products/A"
    replay = api.put("catalog", "/products/A", PRODUCT, key="p-a")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == "/products/A"
    replaced = ok(api.put("catalog", "/products/A", {**PRODUCT, "name": "Pear"}), 200)
    assert replaced["name"] == "Pear"

    ok(api.put("catalog", "/warehouses/MAIN", {"name": "Main"}), 201)
    receive(api, A=5)
    order = {"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
    placed = api.post("create_order", "/", order)
    assert placed.status_code == 201 and placed.headers["Location"] == "/SO-1"
    assert ok(api.get("create_order", placed.headers["Location"]))["order_id"] == "SO-1"


def test_location_carries_the_gateway_prefix_the_function_is_told(boot: Boot) -> None:
    api = boot(PSI_BASE_PATH="/function/catalog")
    created = api.put("catalog", "/warehouses/MAIN", {"name": "Main"})
    assert created.headers["Location"] == "/function/catalog/warehouses/MAIN"
    document = ok(api.get("catalog", "/openapi.json"))
    assert [server["url"] for server in document["servers"]] == ["/function/catalog"]


def test_receiving_stock_creates_no_resource_and_answers_200(api: Api) -> None:
    catalog(api, {"A": 0})
    answer = api.post("stock_in", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]})
    assert answer.status_code == 200 and "Location" not in answer.headers


# -- ETag and If-None-Match --------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "path"),
    [
        ("catalog", "/products/A"),
        ("catalog", "/warehouses/MAIN"),
        ("create_order", "/SO-1"),
        ("stock_query", "/levels/A"),
    ],
)
def test_reads_carry_an_etag_and_answer_304_while_nothing_changed(
    api: Api, function: str, path: str
) -> None:
    catalog(api, {"A": 0})
    receive(api, A=5)
    order = {"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
    ok(api.post("create_order", "/", order), 201)

    first = api.get(function, path)
    tag = first.headers["ETag"]
    assert first.status_code == 200 and tag.startswith('"') and tag.endswith('"')
    assert api.get(function, path).headers["ETag"] == tag  # the same state, the same tag

    unchanged = api.get(function, path, headers={"If-None-Match": f'"other", W/{tag}'})
    assert unchanged.status_code == 304 and unchanged.get_data() == b""
    assert unchanged.headers["ETag"] == tag
    assert api.get(function, path, headers={"If-None-Match": '"other"'}).status_code == 200

    # a change of what the read shows changes its tag
    if function == "catalog":
        ok(api.put("catalog", path, {"name": "Renamed"}))
    elif function == "create_order":
        ok(api.post("create_order", "/SO-1/cancel"))
    else:
        receive(api, A=1)
    changed = api.get(function, path, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["ETag"] != tag


def test_head_answers_like_get_without_a_body(api: Api) -> None:
    catalog(api, {"A": 0})
    got = api.get("catalog", "/products/A")
    head = api.call("catalog", "HEAD", "/products/A")
    assert head.status_code == 200 and head.get_data() == b""
    assert head.headers["ETag"] == got.headers["ETag"]
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert api.call("catalog", "HEAD", "/products/NOPE").status_code == 404
    for function, path in (
        ("catalog", "/products?limit=1"),
        ("stock_query", "/levels"),
        ("create_order", "/openapi.json"),
        ("stock_in", "/health/live"),
        ("stock_in", "/_/health"),
    ):
        answer = api.call(function, "HEAD", path)
        assert answer.status_code == 200 and answer.get_data() == b"", (function, path)
    assert api.call("stock_in", "HEAD", "/").headers["Allow"] == "POST"


# -- If-Match ----------------------------------------------------------------------------


def test_if_match_lets_a_write_through_only_over_the_version_it_names(api: Api) -> None:
    ok(api.put("catalog", "/products/A", PRODUCT), 201)
    tag = api.get("catalog", "/products/A").headers["ETag"]

    stale = '"0123456789abcdef0123456789abcdef"'
    refusal = api.put("catalog", "/products/A", {"name": "Lost"}, headers={"If-Match": stale})
    body = problem_of(refusal, 412, "precondition_failed")
    assert f'"{body["current"]}"' == tag
    assert ok(api.get("catalog", "/products/A"))["name"] == "Apple"  # nothing changed

    weak = api.put("catalog", "/products/A", {"name": "Weak"}, headers={"If-Match": f"W/{tag}"})
    problem_of(weak, 412, "precondition_failed")  # If-Match compares strongly

    saved = api.put("catalog", "/products/A", {"name": "Pear"}, headers={"If-Match": tag})
    assert ok(saved)["name"] == "Pear" and saved.headers["ETag"] != tag
    assert saved.headers["ETag"] == api.get("catalog", "/products/A").headers["ETag"]
    again = api.put("catalog", "/products/A", {"name": "Plum"}, headers={"If-Match": tag})
    problem_of(again, 412, "precondition_failed")

    gone = api.put("catalog", "/products/NEW", PRODUCT, headers={"If-Match": "*"})
    assert problem_of(gone, 412, "precondition_failed")["current"] is None
    assert api.get("catalog", "/products/NEW").status_code == 404

    bad = api.put("catalog", "/products/A", PRODUCT, headers={"If-Match": "not-a-tag"})
    assert problem_of(bad, 400, "invalid_request")["field"] == "If-Match"

    current = api.get("catalog", "/products/A").headers["ETag"]
    stale_delete = api.delete("catalog", "/products/A", headers={"If-Match": tag})
    problem_of(stale_delete, 412, "precondition_failed")
    ok(api.delete("catalog", "/products/A", headers={"If-Match": current}))
    assert api.get("catalog", "/products/A").status_code == 404


def test_if_match_on_warehouses(api: Api) -> None:
    ok(api.put("catalog", "/warehouses/MAIN", {"name": "Main"}), 201)
    tag = api.get("catalog", "/warehouses/MAIN").headers["ETag"]
    ok(api.put("catalog", "/warehouses/MAIN", {"name": "Hub"}, headers={"If-Match": tag}))
    late = api.put("catalog", "/warehouses/MAIN", {"name": "Old"}, headers={"If-Match": tag})
    problem_of(late, 412, "precondition_failed")
    assert ok(api.get("catalog", "/warehouses/MAIN"))["name"] == "Hub"


@pytest.mark.parametrize("database_url", ["mysql"], indirect=True)
def test_if_match_waits_for_a_concurrent_writer_and_then_refuses(
    api: Api, database_url: str
) -> None:
    """Check and write are one: a PUT whose If-Match was current when it arrived, while
    another transaction changes the row, sees that change once it can lock the row, and is
    refused (no lost update)."""
    ok(api.put("catalog", "/products/A", PRODUCT), 201)
    tag = api.get("catalog", "/products/A").headers["ETag"]
    engine = make_engine(database_url, pool_size=2)
    answers: list[int] = []
    try:
        with engine.connect() as other:
            other.exec_driver_sql("SELECT sku FROM products WHERE sku = 'A' FOR UPDATE")

            def put() -> None:
                reply = api.put(
                    "catalog", "/products/A", {"name": "Mine"}, headers={"If-Match": tag}
                )
                answers.append(reply.status_code)

            writer = threading.Thread(target=put)
            writer.start()

            def waiting() -> int:
                with engine.connect() as probe:
                    sql = "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS"
                    return int(probe.exec_driver_sql(sql).scalar_one())

            wait_until(waiting, timeout=30, what="the PUT to wait for the row lock")
            other.execute(sa.text("UPDATE products SET name = 'Theirs' WHERE sku = 'A'"))
            other.commit()
            writer.join(timeout=10)
    finally:
        engine.dispose()
    assert answers == [412]
    assert ok(api.get("catalog", "/products/A"))["name"] == "Theirs"


# -- query parameters --------------------------------------------------------------------


def test_unknown_query_parameters_are_refused_by_name(api: Api) -> None:
    catalog(api, {"A": 0})
    typo = problem_of(api.get("catalog", "/products?limt=5"), 400, "unknown_parameter")
    assert typo["field"] == "limt" and "limit" in str(typo["detail"])
    none = problem_of(api.get("catalog", "/products/A?x=1"), 400, "unknown_parameter")
    assert none["field"] == "x"
    twice = problem_of(api.get("catalog", "/products?limit=1&limit=2"), 400, "invalid_request")
    assert twice["field"] == "limit"

    before = ok(api.get("stock_query", "/levels"))
    body = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 4}]}
    refusal = api.post("stock_in", "/?dry_run=1", body)
    assert problem_of(refusal, 400, "unknown_parameter")["field"] == "dry_run"
    assert ok(api.get("stock_query", "/levels")) == before  # nothing was received
    assert ok(api.get("catalog", "/products?limit=1"))["items"][0]["sku"] == "A"
