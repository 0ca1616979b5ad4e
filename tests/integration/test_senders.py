"""Who may deliver a Kafka record, with API keys on, on the real database and Redis: Knative
sources by OIDC sender token (a local issuer stands in for the cluster's, served over HTTP
and verified the way the function verifies the cluster's), OpenFaaS connectors by a key with
the events:deliver scope sent as HTTP Basic credentials. Forgeries change nothing."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from psi_local.oidc import LocalIssuer, kafka_source_subject, service_audience
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.domain.model import ReceiveStock, parse_lines
from shared_lib.http.delivery import identity_key
from tests.conftest import free_port
from tests.integration.functions_api import Api, Boot, ok, refused

pytestmark = pytest.mark.integration

ADMIN = "admin-key-00000000001"
WRITER = "writer-key-0000000001"
CONNECTOR = "connector-key-0000001"
KEYS = f"{ADMIN}=admin;{WRITER}=stock:write,stock:read;{CONNECTOR}=events:deliver"
AUDIENCE = service_audience("psi", "stock-in")
SUBJECT = kafka_source_subject("psi", "stock-in")
SOURCE = f"/apis/v1/namespaces/psi/kafkasources/stock-in#{topics.STOCK_IN_REQUESTED}"


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as started:
        yield started


@pytest.fixture
def keyed(boot: Boot, issuer: LocalIssuer) -> Api:
    api = boot(
        PSI_AUTH_DISABLED="false",
        PSI_API_KEYS=KEYS,
        PSI_OIDC_DISCOVERY_URL=issuer.url,
        PSI_OIDC_AUDIENCE=AUDIENCE,
        PSI_OIDC_SUBJECTS=SUBJECT,
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for sku in ("A", "B"):
        ok(api.put("catalog", f"/products/{sku}", {"name": sku}, headers=admin), 201)
    ok(api.put("catalog", "/warehouses/MAIN", {"name": "main"}, headers=admin), 201)
    return api


def knative(event_id: str, token: str | None, source: str = SOURCE) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": "dev.knative.kafka.event",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"kafka-connector:{key}".encode()).decode()


def connector(offset: int, key: str | None = CONNECTOR) -> dict[str, str]:
    headers = {
        "X-Topic": topics.STOCK_IN_REQUESTED,
        "X-Kafka-Partition": "0",
        "X-Kafka-Offset": str(offset),
    }
    if key is not None:
        headers["Authorization"] = basic(key)
    return headers


def receipt(sku: str = "A", qty: int = 2) -> dict[str, object]:
    return {"warehouse": "MAIN", "lines": [{"sku": sku, "qty": qty}]}


def on_hand(api: Api) -> dict[str, int]:
    reader = {"Authorization": f"Bearer {ADMIN}"}
    items = ok(api.get("stock_query", "/levels?warehouse=MAIN", headers=reader))["items"]
    return {lv["sku"]: lv["on_hand"] for lv in items}


def test_a_knative_delivery_with_a_valid_sender_token_lands_once(
    keyed: Api, issuer: LocalIssuer
) -> None:
    headers = knative("partition:0/offset:1", issuer.token(AUDIENCE, SUBJECT))
    first = keyed.post("stock_in", "/", receipt(), key=None, headers=headers)
    again = keyed.post("stock_in", "/", receipt(), key=None, headers=headers)
    assert ok(first) == ok(again)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert on_hand(keyed) == {"A": 2}


def test_forged_or_foreign_knative_deliveries_are_refused(keyed: Api, issuer: LocalIssuer) -> None:
    with LocalIssuer() as impostor:
        cases = {
            "no token": (None, 401),
            "an API key": (ADMIN, 401),
            "another audience": (issuer.token("serving.knative.dev/service/psi/x", SUBJECT), 401),
            "expired": (issuer.token(AUDIENCE, SUBJECT, lifetime=-120), 401),
            "another issuer's key": (impostor.token(AUDIENCE, SUBJECT, issuer=issuer.url), 401),
            "an untrusted sender": (issuer.token(AUDIENCE, kafka_source_subject("x", "y")), 403),
        }
        for name, (token, status) in cases.items():
            reply = keyed.post(
                "stock_in", "/", receipt(), key=None, headers=knative(uuid.uuid4().hex, token)
            )
            assert reply.status_code == status, (name, reply.get_json())
    assert on_hand(keyed) == {}


def test_an_unreachable_issuer_is_a_transient_failure(boot: Boot) -> None:
    api = boot(
        PSI_AUTH_DISABLED="false",
        PSI_API_KEYS=KEYS,
        PSI_OIDC_DISCOVERY_URL=f"http://127.0.0.1:{free_port()}",
        PSI_OIDC_AUDIENCE=AUDIENCE,
        PSI_OIDC_SUBJECTS=SUBJECT,
    )
    reply = api.post("stock_in", "/", receipt(), key=None, headers=knative("e", "a.b.c"))
    assert refused(reply, 503, "store_unavailable")["store"] == "the OIDC issuer"
    assert reply.headers["Retry-After"]


def test_a_refused_knative_delivery_gets_a_status_knative_does_not_retry(
    keyed: Api, issuer: LocalIssuer
) -> None:
    token = issuer.token(AUDIENCE, SUBJECT)
    unknown = keyed.post("stock_in", "/", receipt("NOPE"), key=None, headers=knative("u", token))
    assert refused(unknown, 422, "unknown_sku")["sku"] == "NOPE"  # 404 would be retried
    writer = {"Authorization": f"Bearer {WRITER}"}
    plain = keyed.post("stock_in", "/", receipt("NOPE"), headers=writer)
    refused(plain, 404, "unknown_sku")  # a client's call keeps its status
    issue = {**receipt(qty=5), "reason": "scrap"}
    short = keyed.post(
        "stock_out",
        "/",
        issue,
        key=None,
        headers=knative("s", token, source=SOURCE.replace("stock-in", "stock-out")),
    )
    refused(short, 422, "insufficient_stock")  # 409 would be retried too


def test_openfaas_deliveries_need_the_connectors_key(keyed: Api) -> None:
    for key, status in ((None, 401), (WRITER, 403), ("not-a-key-000000000", 401)):
        reply = keyed.post("stock_in", "/", receipt(), key=None, headers=connector(1, key))
        assert reply.status_code == status, (key, reply.get_json())
    assert on_hand(keyed) == {}
    for _ in range(2):
        ok(keyed.post("stock_in", "/", receipt(), key=None, headers=connector(1)))
    assert on_hand(keyed) == {"A": 2}
    # the connector's key delivers records and does nothing else
    as_client = {"Authorization": basic(CONNECTOR)}
    refused(keyed.post("stock_in", "/", receipt(), headers=as_client), 403, "forbidden")
    refused(keyed.get("stock_query", "/levels", headers=as_client), 403, "forbidden")


def test_an_api_key_cannot_plant_a_dead_letter(keyed: Api) -> None:
    orders = {"Authorization": f"Bearer {WRITER}", "X-Topic": topics.STOCK_IN_REQUESTED}
    for function, method, path in (
        ("create_order", "POST", "/"),
        ("stock_in", "POST", "/nowhere"),
        ("stock_in", "DELETE", "/"),
        ("stock_in", "POST", "/"),
    ):
        keyed.call(function, method, path, {"receipt": 999}, headers=orders)
    from shared_lib.bootstrap import get_platform

    with get_platform().engine.connect() as conn:
        letters = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.outbox)
            .where(t.outbox.c.topic == topics.DEAD_LETTER)
        ).scalar_one()
    assert letters == 0
    assert on_hand(keyed) == {}


def test_records_of_earlier_releases_are_still_answered_as_replays(
    keyed: Api, issuer: LocalIssuer
) -> None:
    """Before (source, id) digests, a delivery was recorded under its bare event id. A
    redelivery of such an event finds its first answer there; another source's event that
    happens to share the id is a different request and takes effect."""
    from shared_lib.bootstrap import get_platform

    old_id = "partition:0/offset:41"
    command = ReceiveStock("MAIN", parse_lines([{"sku": "A", "qty": 2}]), None, None)
    first_answer = {"levels": [{"sku": "A", "warehouse": "MAIN", "on_hand": 2}]}
    get_platform().deps.tx.run(
        lambda store: store.remember(old_id, command.fingerprint(), command.kind, first_answer)
    )
    token = issuer.token(AUDIENCE, SUBJECT)
    replay = keyed.post("stock_in", "/", receipt(), key=None, headers=knative(old_id, token))
    assert ok(replay) == first_answer
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert on_hand(keyed) == {}
    other = keyed.post("stock_in", "/", receipt("B", 3), key=None, headers=knative(old_id, token))
    ok(other)
    assert on_hand(keyed) == {"B": 3}


def test_one_event_id_from_two_sources_is_two_identities() -> None:
    assert identity_key("/a", "1") != identity_key("/b", "1")
    assert identity_key("/a", "1") == identity_key("/a", "1")
    assert identity_key("/a1", "") != identity_key("/a", "1")  # no ambiguity at the seam
    assert len(identity_key("/x" * 500, "y" * 500)) <= 200
    assert json.dumps(identity_key("/é", "é")).isascii()
