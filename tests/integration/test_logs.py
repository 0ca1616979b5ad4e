"""The JSON logs of real requests through the in-process functions (MariaDB and SQLite, then a
MySQL URL with a password that cannot connect): every line is JSON and carries the request
id; idempotency keys and event ids are there; API keys, bearer tokens and the database
password never are."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import structlog

from psi_local.broker import free_port
from shared_lib import topics
from shared_lib.http.delivery import identity_key
from tests.integration import functions_api as http
from tests.integration.functions_api import Api, ok, refused

pytestmark = pytest.mark.integration

API_KEY = "log-test-admin-key-0000000001"
OTHER_KEY = "log-test-reader-key-000000001"
WRONG_TOKEN = "wrong-bearer-token-00000000001"
PASSWORD = "Sup3r-Secret-Db-Passw0rd"
SECRETS = (API_KEY, OTHER_KEY, WRONG_TOKEN, PASSWORD)


@contextmanager
def json_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """What the functions write to stderr, through the same formatter, into a buffer."""
    root = logging.getLogger()
    formatter = next(
        (
            h.formatter
            for h in root.handlers
            if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
        ),
        None,
    )
    assert formatter is not None, "shared_lib.logs.configure() did not install its handler"
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    caplog.set_level(logging.INFO)  # another test (the CLI) may have raised the root level
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


def lines_of(buffer: io.StringIO) -> list[dict[str, object]]:
    text = buffer.getvalue()
    leaked = [secret[:6] + "..." for secret in SECRETS if secret in text]
    assert not leaked, f"secrets reached the logs: {leaked}"
    documents = []
    for line in text.splitlines():
        document = json.loads(line)  # every line is one JSON object
        assert isinstance(document, dict) and document.get("request_id"), line
        documents.append(document)
    return documents


def keyed(boot: http.Boot, **env: str) -> Api:
    return boot(
        PSI_AUTH_DISABLED="false",
        PSI_API_KEYS=f"{API_KEY}=admin;{OTHER_KEY}=stock:read",
        PSI_REDIS_URL="disabled",  # no background rebuild: every line belongs to a request
        **env,
    )


def test_request_logs_are_json_with_ids_and_without_secrets(
    boot: http.Boot, caplog: pytest.LogCaptureFixture
) -> None:
    api = keyed(boot)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    with json_logs(caplog) as buffer:
        ok(api.put("catalog", "/products/A", {"name": "A"}, key="log-p-1", headers=admin), 201)
        ok(api.put("catalog", "/warehouses/MAIN", {"name": "M"}, key="log-w-1", headers=admin), 201)
        receive = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]}
        traced = {**admin, "X-Request-Id": "trace-0001"}
        ok(api.post("stock_in", "/", receive, key="log-receive-1", headers=traced))
        delivery = {  # a kafka-connector record (an admin key may deliver)
            **admin,
            "X-Topic": topics.STOCK_IN_REQUESTED,
            "X-Kafka-Partition": "0",
            "X-Kafka-Offset": "41",
        }
        ok(api.post("stock_in", "/", receive, key=None, headers=delivery))
        wrong = {"Authorization": f"Bearer {WRONG_TOKEN}"}
        refused(
            api.post("stock_in", "/", receive, key="log-401", headers=wrong), 401, "unauthorized"
        )
        reader = {"Authorization": f"Bearer {OTHER_KEY}"}
        refused(api.post("stock_in", "/", receive, key="log-403", headers=reader), 403, "forbidden")
        short = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 99}]}
        refused(api.post("create_order", "/", short, headers=admin), 409, "insufficient_stock")
        ok(api.get("stock_query", "/levels", headers=reader))

    documents = lines_of(buffer)
    requests = [d for d in documents if d.get("event") == "request"]
    assert len(requests) == 8
    assert {d["idempotency_key"] for d in requests if d.get("idempotency_key")} >= {
        "log-p-1",
        "log-w-1",
        "log-receive-1",
        identity_key(f"kafka:{topics.STOCK_IN_REQUESTED}", "0/41"),
    }
    (by_event,) = [d for d in requests if d.get("event_id")]
    assert by_event["event_id"] == "0/41" and by_event["function"] == "stock-in"
    assert by_event["event_source"] == f"kafka:{topics.STOCK_IN_REQUESTED}"
    assert any(d["request_id"] == "trace-0001" for d in requests)
    assert {(d["status"], d["error"]) for d in requests} >= {
        (401, "unauthorized"),
        (403, "forbidden"),
        (409, "insufficient_stock"),
    }


def test_a_database_url_password_never_reaches_the_logs(
    boot: http.Boot, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = f"mysql+pymysql://psi:{PASSWORD}@127.0.0.1:{free_port()}/psi"
    api = keyed(boot, PSI_DATABASE_URL=unreachable, PSI_DB_TIMEOUT_SECONDS="1")
    admin = {"Authorization": f"Bearer {API_KEY}"}
    with json_logs(caplog) as buffer:
        receive = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]}
        down = api.post("stock_in", "/", receive, key="log-down-1", headers=admin)
        assert down.status_code == 503 and down.headers["Retry-After"]
        ready = api.get("catalog", "/health/ready")
        assert ready.status_code == 503

    documents = lines_of(buffer)
    warnings = [d for d in documents if d["level"] == "warning"]
    assert any("database unavailable" in str(d["event"]) for d in warnings), documents
    assert any(d.get("event") == "readiness: database check failed" for d in warnings)
    (request,) = [d for d in documents if d.get("event") == "request"]
    assert (request["status"], request["idempotency_key"]) == (503, "log-down-1")


def test_secrets_inside_a_logged_dead_letter_are_masked(
    boot: http.Boot, caplog: pytest.LogCaptureFixture
) -> None:
    api = keyed(boot)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    # a producer that put credentials into a message: refused and parked; the log names the
    # letter, never its content
    poison = {"lines": f"mysql+pymysql://psi:{PASSWORD}@db/psi", "note": f"Bearer {WRONG_TOKEN}"}
    connector = {**admin, "X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Partition": "0"}
    with json_logs(caplog) as buffer:
        refused(
            api.post(
                "stock_in", "/", poison, key=None, headers={**connector, "X-Kafka-Offset": "9"}
            ),
            422,
            "invalid_request",
        )
    documents = lines_of(buffer)
    (parked,) = [d for d in documents if d.get("event") == "dead-lettered"]
    assert (parked["topic"], parked["offset"], parked["status"]) == (
        topics.STOCK_IN_REQUESTED,
        9,
        422,
    )
