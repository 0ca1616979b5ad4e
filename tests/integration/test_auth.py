"""The auth matrix on the in-process functions (MariaDB and SQLite, the real Redis): for every
mutation route of every function, and every read route, no key and an unknown key get 401, a
key without the route's scope gets 403, the right scope succeeds. A refusal changes nothing:
not the database (levels, ledger, orders, outbox, idempotency records), not the Redis gate,
and the same Idempotency-Key then succeeds as a first request. Without keys a function
refuses to start unless PSI_AUTH_DISABLED=true."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from werkzeug.test import TestResponse

from shared_lib import bootstrap
from shared_lib.adapters import sql_tables as t
from tests.integration import functions_api as http
from tests.integration.functions_api import Api, gate_rebuilt, ok, refused

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("catalog", "stock_in", "stock_out", "create_order", "stock_query", "reconcile")
SCOPES = ("stock:read", "stock:write", "orders:write", "admin")
# per scope: a key with exactly it, and the richest key without it
RIGHT = {scope: f"right-{scope.replace(':', '-')}-key-0001" for scope in SCOPES}
WRONG = {scope: f"wrong-{scope.replace(':', '-')}-key-0001" for scope in SCOPES}
UNKNOWN = "unknown-key-000000000000001"
PARAMS = {"sku": "A", "code": "MAIN", "order_id": "SO-KEEP"}


def api_keys() -> str:
    entries = [f"{RIGHT[s]}={s}" for s in SCOPES]
    for scope in SCOPES:
        others = [s for s in SCOPES if s not in (scope, "admin")]
        entries.append(f"{WRONG[scope]}={','.join(others)}")
    return ";".join(entries)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Mutation:
    function: str
    method: str
    route: str  # the OpenAPI path template it covers
    path: str
    body: dict[str, Any] | None
    scope: str
    status: int


MUTATIONS = (
    Mutation(
        "catalog", "PUT", "/products/{sku}", "/products/NEW", {"name": "n"}, "stock:write", 201
    ),
    Mutation("catalog", "DELETE", "/products/{sku}", "/products/DEL", None, "stock:write", 200),
    Mutation(
        "catalog",
        "PUT",
        "/warehouses/{code}",
        "/warehouses/WEST",
        {"name": "w"},
        "stock:write",
        201,
    ),
    Mutation(
        "stock_in",
        "POST",
        "/",
        "/",
        {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]},
        "stock:write",
        200,
    ),
    Mutation(
        "stock_in",
        "POST",
        "/adjustments",
        "/adjustments",
        {"warehouse": "MAIN", "sku": "B", "counted": 4},
        "stock:write",
        200,
    ),
    Mutation("stock_out", "POST", "/", "/", {"order_id": "SO-SHIP"}, "stock:write", 200),
    Mutation(
        "stock_out",
        "POST",
        "/",
        "/",
        {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}], "reason": "counter sale"},
        "stock:write",
        200,
    ),
    Mutation(
        "stock_out",
        "POST",
        "/transfers",
        "/transfers",
        {"source": "MAIN", "destination": "EAST", "lines": [{"sku": "A", "qty": 1}]},
        "stock:write",
        200,
    ),
    Mutation(
        "create_order",
        "POST",
        "/",
        "/",
        {"order_id": "SO-NEW", "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]},
        "orders:write",
        201,
    ),
    Mutation(
        "create_order",
        "POST",
        "/{order_id}/cancel",
        "/SO-CANCEL/cancel",
        None,
        "orders:write",
        200,
    ),
    Mutation("reconcile", "POST", "/", "/", {"run_key": "auth-matrix"}, "admin", 200),
)


def routes(api: Api, function: str) -> list[tuple[str, str, str]]:
    """(method, path template, scope) of every route, from the function's OpenAPI document."""
    document = ok(api.get(function, "/openapi.json"))
    found = []
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            if method in ("get", "put", "post", "delete", "patch"):
                found.append((method.upper(), template, required_scope(operation)))
    return found


def required_scope(operation: dict[str, Any]) -> str:
    """The bearer scope the document declares; "" for an open route (health)."""
    for requirement in operation.get("security", []):
        for scopes in requirement.values():
            if scopes:
                return str(scopes[0])
    return ""


def snapshot(engine: sa.Engine, client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every row of every table, and every key of the gate."""
    state: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            query = sa.select(table).order_by(*table.primary_key.columns)
            state[table.name] = [tuple(row) for row in conn.execute(query)]
    keys = sorted(client.scan_iter(match=f"{{{prefix}:*", count=1000))
    state["redis"] = {key: client.dump(key) for key in keys}
    return state


def setup_state(api: Api) -> None:
    admin = bearer(RIGHT["admin"])
    for sku in ("A", "B", "DEL"):
        ok(api.put("catalog", f"/products/{sku}", {"name": sku}, headers=admin), 201)
    for code in ("MAIN", "EAST"):
        ok(api.put("catalog", f"/warehouses/{code}", {"name": code}, headers=admin), 201)
    receive = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 20}, {"sku": "B", "qty": 5}]}
    ok(api.post("stock_in", "/", receive, headers=admin), 200)
    gate_rebuilt()
    for order_id in ("SO-SHIP", "SO-CANCEL", "SO-KEEP"):
        order = {"order_id": order_id, "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
        ok(api.post("create_order", "/", order, headers=admin), 201)


@pytest.fixture
def keyed(boot: http.Boot) -> Api:
    api = boot(PSI_AUTH_DISABLED="false", PSI_API_KEYS=api_keys())
    import functions_framework

    api.clients["reconcile"] = functions_framework.create_app(
        target="handle", source=str(ROOT / "functions" / "reconcile" / "main.py")
    ).test_client()
    return api


def test_every_mutation_route_refuses_without_the_scope_and_changes_nothing(
    keyed: Api, redis_client: redis.Redis
) -> None:
    api = keyed
    setup_state(api)
    platform = bootstrap.get_platform()
    assert platform.gate is not None and platform.rebuilder is not None
    platform.rebuilder.join()

    def state() -> dict[str, Any]:
        return snapshot(platform.engine, redis_client, platform.gate.prefix)  # type: ignore[union-attr]

    declared = {
        (function, method, template, scope)
        for function in FUNCTIONS
        for method, template, scope in routes(api, function)
        if method != "GET"
    }
    assert declared == {(m.function, m.method, m.route, m.scope) for m in MUTATIONS}

    for n, case in enumerate(MUTATIONS):
        key = f"auth-{n}"

        def send(headers: dict[str, str], case: Mutation = case, key: str = key) -> TestResponse:
            return api.call(
                case.function, case.method, case.path, case.body, key=key, headers=headers
            )

        before = state()
        where = f"{case.function} {case.method} {case.path}"
        no_key = refused(send({}), 401, "unauthorized")
        assert no_key["message"], where
        assert send({}).headers["WWW-Authenticate"] == "Bearer"
        refused(send(bearer(UNKNOWN)), 401, "unauthorized")
        refused(send({"Authorization": f"Basic {RIGHT[case.scope]}"}), 401, "unauthorized")
        forbidden = refused(send(bearer(WRONG[case.scope])), 403, "forbidden")
        assert case.scope in forbidden["message"], where
        assert state() == before, f"a refused {where} changed something"

        first = send(bearer(RIGHT[case.scope]))
        assert first.status_code == case.status, (where, first.get_json())
        assert "Idempotent-Replayed" not in first.headers, where  # a first request, not a replay
        assert state() != before, f"{where} succeeded without an effect"
        again = send(bearer(RIGHT[case.scope]))  # the same caller and key: a replay
        assert again.status_code == case.status, (where, again.get_json())
        assert again.headers.get("Idempotent-Replayed") == "true", where
        if case.scope != "admin":  # admin implies every scope; the key is its own, not a replay
            admin = send(bearer(RIGHT["admin"]))
            assert admin.status_code < 500, (where, admin.get_json())
            assert "Idempotent-Replayed" not in admin.headers, where


@pytest.mark.parametrize("function", FUNCTIONS)
def test_every_read_route_needs_stock_read(keyed: Api, function: str) -> None:
    api = keyed
    setup_state(api)
    reads = [
        (template, scope) for method, template, scope in routes(api, function) if method == "GET"
    ]
    for template, scope in reads:
        if not scope:
            assert template.startswith("/health/"), (function, template)
            continue
        assert scope == "stock:read", (function, template, scope)
        path = template.format(**PARAMS)
        refused(api.get(function, path), 401, "unauthorized")
        refused(api.get(function, path, headers=bearer(UNKNOWN)), 401, "unauthorized")
        refused(api.get(function, path, headers=bearer(WRONG["stock:read"])), 403, "forbidden")
        ok(api.get(function, path, headers=bearer(RIGHT["stock:read"])))
        ok(api.get(function, path, headers=bearer(RIGHT["admin"])))
    # health, metrics and the OpenAPI document stay open (probes and scrapers carry no key)
    for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json"):
        assert api.get(function, path).status_code == 200, (function, path)


StartResult = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def start_function(tmp_path: Path) -> StartResult:
    """Import the WSGI app of a function in a fresh interpreter, as gunicorn does."""

    def start(**env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PSI_")}
        clean.update(
            FUNCTION_DIR="catalog",
            PSI_DATA_DIR=str(tmp_path / "data"),
            PSI_SECRETS_DIR=str(tmp_path / "no-secrets"),
            **env,
        )
        return subprocess.run(
            [sys.executable, "-c", "import shared_lib.wsgi"],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return start


def test_a_function_without_keys_refuses_to_start_with_one_line(
    start_function: StartResult,
) -> None:
    refused_start = start_function()
    assert refused_start.returncode != 0
    assert refused_start.stderr.count("\n") == 1, refused_start.stderr
    assert "no API keys configured" in refused_start.stderr
    assert "PSI_AUTH_DISABLED=true" in refused_start.stderr

    short = start_function(PSI_API_KEYS="short=admin")
    assert short.returncode != 0 and short.stderr.count("\n") == 1, short.stderr
    assert "16+ characters" in short.stderr and "short" not in short.stderr.split(":", 1)[0]

    assert start_function(PSI_AUTH_DISABLED="true").returncode == 0
    assert start_function(PSI_API_KEYS=f"{RIGHT['admin']}=admin").returncode == 0
