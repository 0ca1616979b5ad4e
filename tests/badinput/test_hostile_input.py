"""The hostile-input probe's findings, in-process on MariaDB and the real Redis with API keys
on: strict JSON, media types, repeated headers, control characters, idempotency keys scoped
to the API key that sends them, and the reconcile and cancel contracts. Every refusal is a
4xx with a JSON body naming the field, and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import functions_framework
import pytest
import redis

from tests.integration import functions_api as http
from tests.integration.functions_api import Api, gate_rebuilt, ok, refused
from tests.integration.test_auth import bearer, snapshot

pytestmark = pytest.mark.integration

boot = http.boot
ROOT = Path(__file__).resolve().parents[2]
ALICE = "alice-admin-key-000000001"
BOB = "bob-admin-key-0000000001"
RECEIVE = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}


@pytest.fixture
def api(boot: http.Boot) -> Api:
    api = boot(PSI_AUTH_DISABLED="false", PSI_API_KEYS=f"{ALICE}=admin;{BOB}=admin")
    api.clients["reconcile"] = functions_framework.create_app(
        target="handle", source=str(ROOT / "functions" / "reconcile" / "main.py")
    ).test_client()
    as_alice = bearer(ALICE)
    ok(api.put("catalog", "/products/A", {"name": "A"}, headers=as_alice), 201)
    ok(api.put("catalog", "/warehouses/MAIN", {"name": "Main"}, headers=as_alice), 201)
    ok(api.post("stock_in", "/", {**RECEIVE, "lines": [{"sku": "A", "qty": 10}]}, headers=as_alice))
    gate_rebuilt()
    return api


def on_hand(api: Api, sku: str = "A") -> int:
    items = ok(api.get("stock_query", "/levels?warehouse=MAIN", headers=bearer(ALICE)))["items"]
    return next(int(level["on_hand"]) for level in items if level["sku"] == sku)


def unchanged(api: Api, redis_client: redis.Redis, send: Any) -> Any:
    """Send a request that must be refused; the database and the gate stay as they were."""
    from shared_lib import bootstrap

    platform = bootstrap.get_platform()
    before = snapshot(platform.engine, redis_client, platform.settings.redis_prefix)
    response = send()
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data())
    after = snapshot(platform.engine, redis_client, platform.settings.redis_prefix)
    assert before == after, "a refused request changed something"
    return response


def raw(api: Api, data: bytes, content_type: str = "application/json", **headers: str) -> Any:
    sent = {**bearer(ALICE), "Idempotency-Key": "raw-1", **headers}
    return api.clients["stock_in"].post("/", data=data, headers=sent, content_type=content_type)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (
            b'{"warehouse":"MAIN","lines":[{"sku":"A","qty":1,"qty":1000}]}',
            "invalid_json",
            "'qty' twice",
        ),
        (
            b'{"warehouse":"MAIN","lines":[{"sku":"A","qty":' + b"9" * 5000 + b"}]}",
            "invalid_json",
            "5000 digits",
        ),
        (b'{"warehouse":"MAIN","lines":[{"sku":"A","qty":1e999}]}', "invalid_json", "too large"),
        (b'{"warehouse":"MAIN","lines":[{"sku":"A","qty":NaN}]}', "invalid_json", "NaN"),
        (b"[" * 10_000 + b"]" * 10_000, "invalid_json", "nested too deeply"),
    ],
    ids=["duplicate-key", "5000-digits", "infinite", "nan", "deep"],
)
def test_ambiguous_or_oversized_json_is_400(
    api: Api, redis_client: redis.Redis, data: bytes, error: str, message: str
) -> None:
    body = refused(unchanged(api, redis_client, lambda: raw(api, data)), 400, error)
    assert body["field"] == "body" and message in body["message"], body


@pytest.mark.parametrize(
    ("content_type", "headers", "field"),
    [
        ("text/plain", {}, "Content-Type"),
        ("application/x-www-form-urlencoded", {}, "Content-Type"),
        ("application/json; charset=latin-1", {}, "Content-Type"),
        ("application/json", {"Content-Encoding": "deflate"}, "Content-Encoding"),
        ("application/json", {"Content-Encoding": "gzip"}, "Content-Encoding"),
    ],
    ids=["text", "form", "latin-1", "deflate", "gzip"],
)
def test_a_body_that_is_not_plain_json_is_415(
    api: Api, redis_client: redis.Redis, content_type: str, headers: dict[str, str], field: str
) -> None:
    def send() -> Any:
        return raw(api, b'{"warehouse":"MAIN","lines":[]}', content_type, **headers)

    body = refused(unchanged(api, redis_client, send), 415, "unsupported_media_type")
    assert body["field"] == field, body


def test_a_body_without_a_content_type_is_415(api: Api, redis_client: redis.Redis) -> None:
    def send() -> Any:
        headers = {**bearer(ALICE), "Idempotency-Key": "no-type"}
        return api.clients["stock_in"].post("/", data=b'{"warehouse":"MAIN"}', headers=headers)

    body = refused(unchanged(api, redis_client, send), 415, "unsupported_media_type")
    assert body["field"] == "Content-Type"


def test_two_idempotency_key_headers_are_400(api: Api, redis_client: redis.Redis) -> None:
    def send() -> Any:
        headers = [
            ("Authorization", f"Bearer {ALICE}"),
            ("Idempotency-Key", "a"),
            ("Idempotency-Key", "b"),
        ]
        return api.clients["stock_in"].post("/", json=RECEIVE, headers=headers)

    body = refused(unchanged(api, redis_client, send), 400, "invalid_request")
    assert body["field"] == "Idempotency-Key" and "once" in body["message"]


@pytest.mark.parametrize(
    ("function", "path", "body", "field"),
    [
        (
            "create_order",
            "/",
            {
                "warehouse": "MAIN",
                "lines": [{"sku": "A", "qty": 1}],
                "customer": "Eve\u202egnp.exe",
            },
            "customer",
        ),
        (
            "stock_out",
            "/",
            {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}], "reason": "scrap\x00"},
            "reason",
        ),
        ("stock_in", "/", {**RECEIVE, "reference": "PO\n1"}, "reference"),
        ("catalog", "/products/B", {"name": "B\x1b[31m"}, "name"),
        ("reconcile", "/", {"run_key": "nightly\x07"}, "run_key"),
    ],
    ids=["bidi-override", "nul", "newline", "escape", "bell"],
)
def test_control_characters_are_422_naming_the_field(
    api: Api, redis_client: redis.Redis, function: str, path: str, body: dict[str, Any], field: str
) -> None:
    method = api.put if function == "catalog" else api.post
    send = lambda: method(function, path, body, headers=bearer(ALICE))  # noqa: E731
    answer = refused(unchanged(api, redis_client, send), 422, "invalid_request")
    assert answer["field"] == field and "control characters" in answer["message"], answer


def test_free_text_in_any_script_is_kept(api: Api) -> None:
    order = {
        "warehouse": "MAIN",
        "lines": [{"sku": "A", "qty": 1}],
        "customer": "张三 O'Brien — ünïcode",
    }
    assert (
        ok(api.post("create_order", "/", order, headers=bearer(ALICE)), 201)["customer"]
        == order["customer"]
    )


def test_idempotency_keys_are_scoped_to_the_api_key(api: Api, redis_client: redis.Redis) -> None:
    first = ok(api.post("stock_in", "/", RECEIVE, key="shared-key", headers=bearer(ALICE)))
    # Bob's request with the same key is his own: it neither replays Alice's nor conflicts
    other = {**RECEIVE, "lines": [{"sku": "A", "qty": 3}]}
    bobs = api.post("stock_in", "/", other, key="shared-key", headers=bearer(BOB))
    assert bobs.status_code == 200 and "Idempotent-Replayed" not in bobs.headers
    assert ok(bobs)["levels"] != first["levels"]
    # each replays its own
    again = api.post("stock_in", "/", RECEIVE, key="shared-key", headers=bearer(ALICE))
    assert again.headers.get("Idempotent-Replayed") == "true" and again.get_json() == first
    assert on_hand(api) == 14


def test_a_record_of_an_earlier_release_still_answers_its_own_request(api: Api) -> None:
    """Records written before keys were scoped carry the bare key: the same request, sent
    again after the upgrade, is answered from it, not applied twice."""
    from shared_lib import bootstrap, services
    from shared_lib.domain.model import Line, ReceiveStock, RequestMeta

    platform = bootstrap.get_platform()
    command = ReceiveStock("MAIN", (Line("A", 1),), None, None)
    first = services.receive_stock(platform.deps, command, RequestMeta("before-upgrade"))
    replay = api.post("stock_in", "/", RECEIVE, key="before-upgrade", headers=bearer(ALICE))
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.get_json() == first.body
    assert on_hand(api) == 11


def test_reconcile_requires_an_idempotency_key(api: Api, redis_client: redis.Redis) -> None:
    send = lambda: api.post("reconcile", "/", {"run_key": "R"}, key=None, headers=bearer(ALICE))  # noqa: E731
    body = refused(unchanged(api, redis_client, send), 400, "invalid_request")
    assert body["field"] == "Idempotency-Key"


def test_reconcile_keys_and_run_keys_answer_once(api: Api) -> None:
    admin = bearer(ALICE)
    first = api.post("reconcile", "/", {"run_key": "A"}, key="rk-1", headers=admin)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    # the same key with another run key: refused, nothing runs
    refused(
        api.post("reconcile", "/", {"run_key": "B"}, key="rk-1", headers=admin),
        409,
        "idempotency_key_reused",
    )
    # the same run key with the other repair setting: refused
    body = refused(
        api.post("reconcile", "/", {"run_key": "A", "repair": False}, key="rk-2", headers=admin),
        409,
        "run_key_reused",
    )
    assert body["repair"] is True
    # the same run key and settings under a new key: the stored answer, marked a replay
    again = api.post("reconcile", "/", {"run_key": "A"}, key="rk-3", headers=admin)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()
    # and the first key replays its answer
    replay = api.post("reconcile", "/", {"run_key": "A"}, key="rk-1", headers=admin)
    assert (
        replay.headers.get("Idempotent-Replayed") == "true"
        and replay.get_json() == first.get_json()
    )


def test_cancel_and_ship_happen_once_each_replayed_by_key(api: Api) -> None:
    admin = bearer(ALICE)
    for order_id in ("SO-C", "SO-S"):
        order = {"order_id": order_id, "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
        ok(api.post("create_order", "/", order, headers=admin), 201)
    cancelled = ok(api.post("create_order", "/SO-C/cancel", key="c-1", headers=admin))
    replay = api.post("create_order", "/SO-C/cancel", key="c-1", headers=admin)
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.get_json() == cancelled
    body = refused(
        api.post("create_order", "/SO-C/cancel", key="c-2", headers=admin),
        409,
        "invalid_order_state",
    )
    assert body["order_status"] == "cancelled" and body["status"] == 409
    ok(api.post("stock_out", "/", {"order_id": "SO-S"}, key="s-1", headers=admin))
    body = refused(
        api.post("stock_out", "/", {"order_id": "SO-S"}, key="s-2", headers=admin),
        409,
        "invalid_order_state",
    )
    assert body["order_status"] == "shipped" and body["status"] == 409
