"""End to end over real HTTP and Kafka: every function as its own process (LocalStack) on the
real MariaDB and Redis, the embedded broker and the Kafka bridge."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from psi_local.events_schema import validate_event
from psi_local.invariants import balance_findings
from psi_local.stack import FUNCTIONS
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import KafkaEventPublisher, Record, read_topic
from tests.e2e.conftest import E2E, HTTP_TIMEOUT, seed
from tests.support import http, wait_until

pytestmark = pytest.mark.e2e

BUYERS = 200
UNITS = 100
PRODUCTS = {"FLASH-1": 10, "SHIP-1": 2, "KAFKA-DUP": 0, "POISON-OK": 0, "EVT-1": 1}


@pytest.fixture(scope="module")
def env(e2e: E2E) -> E2E:
    seed(e2e, ["MAIN", "SALE"], PRODUCTS)
    return e2e


def level(env: E2E, warehouse: str, sku: str) -> tuple[int, int] | None:
    s = t.stock_levels
    with env.engine.connect() as conn:
        row = conn.execute(
            sa.select(s.c.on_hand, s.c.reserved).where(s.c.warehouse == warehouse, s.c.sku == sku)
        ).first()
    return (int(row.on_hand), int(row.reserved)) if row else None


def gate_level(env: E2E, warehouse: str, sku: str) -> tuple[int, int, int] | None:
    cached = env.gate.read(warehouse, [sku]).get(sku)
    return (cached.on_hand, cached.reserved, cached.held) if cached else None


def assert_ledger_matches_balances(env: E2E) -> None:
    """MySQL balance == sum of the ledger, per (warehouse, sku), for every balance."""
    found = balance_findings(env.engine)
    assert found.ok and found.checked, found.sample


def stock_in(env: E2E, warehouse: str, sku: str, qty: int, key: str | None = None) -> None:
    body = {"warehouse": warehouse, "lines": [{"sku": sku, "qty": qty}], "reason": "e2e receipt"}
    reply = env.send("POST", "stock_in", "", body, key=key)
    assert reply.status_code == 200, reply.text


def place(env: E2E, warehouse: str, sku: str, qty: int) -> str:
    body = {"warehouse": warehouse, "lines": [{"sku": sku, "qty": qty}], "customer": "e2e"}
    reply = env.send("POST", "create_order", "", body)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["order_id"])


def test_every_function_is_ready(env: E2E) -> None:
    assert set(env.stack.processes) == {d.directory for d in FUNCTIONS}
    with http() as session:
        for name in env.stack.processes:
            reply = session.get(env.url(name, "health/ready"), timeout=HTTP_TIMEOUT)
            assert reply.status_code == 200, (name, reply.text)
    assert env.stack.routes[topics.STOCK_IN_REQUESTED] == env.stack.url("stock_in")


def test_flash_sale_over_http_never_oversells(env: E2E) -> None:
    stock_in(env, "SALE", "FLASH-1", UNITS)
    start = threading.Barrier(BUYERS, timeout=60)

    def buy(n: int) -> tuple[int, dict[str, Any]]:
        body = {"warehouse": "SALE", "lines": [{"sku": "FLASH-1", "qty": 1}]}
        with http() as session:
            start.wait()
            reply = env.send("POST", "create_order", "", body, key=f"sale-{n}", session=session)
        return reply.status_code, reply.json()

    with ThreadPoolExecutor(max_workers=BUYERS) as pool:
        replies = list(pool.map(buy, range(BUYERS)))

    statuses = Counter(status for status, _ in replies)
    assert statuses == {201: UNITS, 409: BUYERS - UNITS}, statuses
    refusals = {body["error"] for status, body in replies if status == 409}
    assert refusals == {"insufficient_stock"}

    with env.engine.connect() as conn:
        orders = conn.execute(
            sa.select(sa.func.count()).select_from(t.orders).where(t.orders.c.warehouse == "SALE")
        ).scalar_one()
    assert orders == UNITS
    assert level(env, "SALE", "FLASH-1") == (UNITS, UNITS)
    assert_ledger_matches_balances(env)
    wait_until(
        lambda: gate_level(env, "SALE", "FLASH-1") == (UNITS, UNITS, 0),
        timeout=15,
        what="Redis to agree with MySQL after the sale",
    )


def test_ship_one_order_and_cancel_another(env: E2E) -> None:
    stock_in(env, "MAIN", "SHIP-1", 5)
    shipped, cancelled = place(env, "MAIN", "SHIP-1", 2), place(env, "MAIN", "SHIP-1", 1)
    assert level(env, "MAIN", "SHIP-1") == (5, 3)

    reply = env.send("POST", "stock_out", "", {"order_id": shipped, "reference": "DN-1"})
    assert reply.status_code == 200, reply.text
    reply = env.send("POST", "create_order", f"{cancelled}/cancel", {})
    assert reply.status_code == 200, reply.text

    with http() as session:
        views = {
            oid: session.get(env.url("create_order", oid), timeout=HTTP_TIMEOUT).json()
            for oid in (shipped, cancelled)
        }
    assert views[shipped]["status"] == "shipped"
    assert views[cancelled]["status"] == "cancelled"
    assert level(env, "MAIN", "SHIP-1") == (3, 0)
    assert_ledger_matches_balances(env)
    wait_until(
        lambda: gate_level(env, "MAIN", "SHIP-1") == (3, 0, 0),
        timeout=15,
        what="Redis to agree after ship and cancel",
    )


def delivered_up_to(env: E2E, topic: str) -> int:
    return sum(pos for (name, _), pos in env.stack.bridge.positions().items() if name == topic)


def test_kafka_duplicates_have_one_effect(env: E2E) -> None:
    event = {
        "specversion": "1.0",
        "id": f"e2e-dup-{uuid.uuid4()}",
        "source": "/e2e/purchasing",
        "type": topics.STOCK_IN_REQUESTED,
        "datacontenttype": "application/json",
        "data": {
            "warehouse": "MAIN",
            "lines": [{"sku": "KAFKA-DUP", "qty": 7}],
            "reason": "purchase receipt",
            "reference": "PO-DUP",
        },
    }
    validate_event(topics.STOCK_IN_REQUESTED, event)
    before = delivered_up_to(env, topics.STOCK_IN_REQUESTED)
    value = json.dumps(event).encode()
    structured = [("content-type", b"application/cloudevents+json")]  # a CloudEvent record
    with KafkaEventPublisher(env.bootstrap) as publisher:
        for _ in range(3):
            publisher.publish(topics.STOCK_IN_REQUESTED, "KAFKA-DUP", value, structured)

    wait_until(
        lambda: delivered_up_to(env, topics.STOCK_IN_REQUESTED) >= before + 3,
        timeout=30,
        what="the bridge to deliver all three copies",
    )
    assert level(env, "MAIN", "KAFKA-DUP") == (7, 0)
    with env.engine.connect() as conn:
        receipts = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.movements)
            .where(t.movements.c.sku == "KAFKA-DUP")
        ).scalar_one()
    assert receipts == 1
    assert env.stack.bridge.stats.dead_lettered == 0
    assert_ledger_matches_balances(env)


def dead_letters(records: list[Record], key: str) -> list[dict[str, Any]]:
    """The letters of records with this key, as the KafkaSource's dead-letter sink writes
    them: the event's data as value, its attributes and the answer in ce_ headers."""
    letters = []
    for record in records:
        found = {name: raw.decode("utf-8", "replace") for name, raw in record.headers}
        if found.get("ce_partitionkey") != key:
            continue
        answer = base64.b64decode(found.get("ce_knativeerrordata", "")).decode()
        status = int(found["ce_knativeerrorcode"])
        letters.append({"status": status, "reason": answer, "payload": record.value, **found})
    return letters


def test_poison_messages_go_to_the_dead_letter_topic(env: E2E) -> None:
    key = f"POISON-{uuid.uuid4().hex[:8]}"  # one key: one partition, so order is kept
    unknown = {"warehouse": "MAIN", "lines": [{"sku": "NO-SUCH-SKU", "qty": 1}]}
    good = {"warehouse": "MAIN", "lines": [{"sku": "POISON-OK", "qty": 3}]}
    with KafkaEventPublisher(env.bootstrap) as publisher:
        for value in (
            b"{not json",
            json.dumps(unknown).encode(),
            b"\xff\xfe{}",
            json.dumps(good).encode(),
        ):
            publisher.publish(topics.STOCK_IN_REQUESTED, key, value)

    wait_until(
        lambda: level(env, "MAIN", "POISON-OK") == (3, 0),
        timeout=30,
        what="the good message after the poison ones",
    )
    records = read_topic(
        env.bootstrap,
        topics.DEAD_LETTER,
        until=lambda recs: len(dead_letters(recs, key)) >= 3,
        timeout=30,
    )
    docs = dead_letters(records, key)
    assert len(docs) == 3, docs
    for doc in docs:
        assert doc["ce_source"].endswith("#" + topics.STOCK_IN_REQUESTED)
        assert 400 <= doc["status"] < 500
    by_reason = sorted(doc["reason"] for doc in docs)
    assert any("invalid_json" in r and "not valid JSON" in r for r in by_reason), by_reason
    assert any("unknown_sku" in r for r in by_reason), by_reason
    assert any("not valid UTF-8" in r for r in by_reason), by_reason
    assert any(doc["payload"] == b"\xff\xfe{}" for doc in docs)  # the invalid UTF-8 one, intact
    assert level(env, "MAIN", "NO-SUCH-SKU") is None
    assert_ledger_matches_balances(env)


# -- events on the out topics: these need the outbox relay wired into bootstrap ---------


def events_on(env: E2E, topic: str, wanted: Any, timeout: float = 20) -> list[dict[str, Any]]:
    """Every event read from ``topic`` (each validated) once one satisfies ``wanted``."""
    records = read_topic(
        env.bootstrap,
        topic,
        until=lambda recs: any(wanted(json.loads(r.value)) for r in recs),
        timeout=timeout,
    )
    events = [json.loads(r.value) for r in records]
    for event in events:
        validate_event(event["type"], event)
    return events


def test_stock_changed_events_are_published(env: E2E) -> None:
    key = f"evt-in-{uuid.uuid4().hex}"
    stock_in(env, "MAIN", "EVT-1", 5, key=key)
    events = events_on(env, topics.STOCK_CHANGED, lambda e: e["data"].get("idempotency_key") == key)
    mine = [e for e in events if e["data"].get("idempotency_key") == key]
    assert len(mine) == 1, f"no {topics.STOCK_CHANGED} event for {key} (outbox relay wired?)"
    assert mine[0]["type"] == topics.STOCK_CHANGED
    assert mine[0]["data"]["sku"] == "EVT-1"
    assert mine[0]["data"]["delta_on_hand"] == 5


def test_order_created_events_are_published(env: E2E) -> None:
    stock_in(env, "MAIN", "EVT-1", 2)
    order_id = place(env, "MAIN", "EVT-1", 2)
    events = events_on(env, topics.ORDER_CREATED, lambda e: e["data"]["order_id"] == order_id)
    mine = [e for e in events if e["data"]["order_id"] == order_id]
    assert len(mine) == 1, f"no {topics.ORDER_CREATED} event for {order_id} (outbox relay wired?)"
    assert mine[0]["data"]["lines"] == [{"sku": "EVT-1", "qty": 2}]
    assert mine[0]["data"]["status"] == "reserved"
