"""The in-process HTTP harness of the integration tests: every function's functions-framework
test client on this test's database (MariaDB and SQLite) and Redis key space (``boot``,
``api``, registered for tests/integration by its conftest.py), and the helpers the tests
share (``ok``, ``refused``, ``catalog``, ``receive``, ``gate_rebuilt``)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
import pytest
import redis
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from shared_lib import bootstrap
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
    return ok(api.post("stock_in", "/", {"warehouse": warehouse, "lines": lines}))


def gate_rebuilt(warehouse: str = "MAIN") -> None:
    """Bring the shared gate up to date now, as the background rebuild does eventually."""
    platform = bootstrap.get_platform()
    assert platform.gate is not None
    wait_until(
        lambda: rebuild_warehouse(platform.deps.tx, platform.gate, warehouse) is not None,
        what=f"gate rebuild of {warehouse}",
    )
