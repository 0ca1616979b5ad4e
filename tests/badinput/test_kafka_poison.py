"""Poison messages on ``psi.stock-in.requested`` through the running bridge: each ends in
``psi.dead-letter`` with its reason and its original bytes, is tried once (a 4xx is not
retried), changes nothing, and a good message after them on the same partition is still
processed.

tests/e2e covers ``{not json``, an unknown SKU and bytes that start invalid (``\\xff\\xfe{}``);
these are other shapes of bad input: JSON cut short, a body over PSI_MAX_BODY_BYTES, invalid
UTF-8 inside an otherwise well-formed document, a JSON array, and a structured CloudEvent
whose data breaks the contract.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.kafka import KafkaEventPublisher, read_topic
from shared_lib.domain.model import utcnow
from shared_lib.events_schema import validate_event
from tests.badinput.conftest import KafkaStack
from tests.support import wait_until

pytestmark = pytest.mark.e2e

GOOD_SKU = "GOOD-1"


def level(env: KafkaStack, sku: str) -> tuple[int, int] | None:
    s = t.stock_levels
    with env.engine.connect() as conn:
        row = conn.execute(
            sa.select(s.c.on_hand, s.c.reserved).where(s.c.warehouse == "MAIN", s.c.sku == sku)
        ).first()
    return (int(row.on_hand), int(row.reserved)) if row else None


def counts(env: KafkaStack) -> dict[str, int]:
    with env.engine.connect() as conn:
        return {
            table.name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar())
            for table in (t.movements, t.stock_levels, t.idempotency_records, t.outbox)
        }


def receipt(qty: int, **extra: Any) -> dict[str, Any]:
    return {"warehouse": "MAIN", "lines": [{"sku": GOOD_SKU, "qty": qty}], **extra}


def test_poison_messages_are_dead_lettered_and_a_good_one_still_goes_through(
    kafka_stack: KafkaStack,
) -> None:
    env = kafka_stack
    now = utcnow()
    with env.engine.begin() as conn:
        conn.execute(
            t.warehouses.insert().values(code="MAIN", name="main", created_at=now, updated_at=now)
        )
        conn.execute(
            t.products.insert().values(sku=GOOD_SKU, name="good", created_at=now, updated_at=now)
        )
    before = counts(env)
    oversized = json.dumps(receipt(1, reason="r", reference="x" * 90, pad="y" * env.max_body_bytes))
    assert len(oversized) > env.max_body_bytes
    bad_event = {
        "specversion": "1.0",
        "id": f"poison-{uuid.uuid4()}",
        "source": "/badinput",
        "type": topics.STOCK_IN_REQUESTED,
        "datacontenttype": "application/json",
        "data": receipt(0),  # qty must be >= 1
    }
    poison: list[tuple[str, bytes, int, str]] = [  # name, value, status, error code
        ("cut short", json.dumps(receipt(1))[:-7].encode(), 400, "invalid_json"),
        ("oversized", oversized.encode(), 413, "body_too_large"),
        (
            "invalid utf-8",
            b'{"warehouse":"MAIN","lines":[{"sku":"GOOD-1\xc3\x28","qty":1}]}',
            400,
            "invalid_json",
        ),
        ("array", json.dumps([receipt(1)]).encode(), 422, "invalid_request"),
        ("bad cloudevent data", json.dumps(bad_event).encode(), 422, "invalid_request"),
    ]
    key = f"poison-{uuid.uuid4().hex[:8]}"  # one key: one partition, delivered in order
    bridge = env.stack.bridge
    assert bridge is not None
    dead_before = bridge.stats.dead_lettered
    with KafkaEventPublisher(env.stack.kafka_bootstrap) as publisher:
        for _, value, _, _ in poison:
            publisher.publish(topics.STOCK_IN_REQUESTED, key, value)
        publisher.publish(topics.STOCK_IN_REQUESTED, key, json.dumps(receipt(3)).encode())

    wait_until(
        lambda: level(env, GOOD_SKU) == (3, 0),
        timeout=60,
        what="the good message after the poison ones",
    )
    records = read_topic(
        env.stack.kafka_bootstrap,
        topics.DEAD_LETTER,
        until=lambda recs: (
            sum(1 for r in recs if json.loads(r.value).get("key") == key) >= len(poison)
        ),
        timeout=30,
    )
    docs = [json.loads(r.value) for r in records]
    mine = sorted((d for d in docs if d.get("key") == key), key=lambda d: d["offset"])
    assert len(mine) == len(poison), mine
    for (name, value, status, code), doc in zip(poison, mine, strict=True):
        validate_event(topics.DEAD_LETTER, doc)
        assert doc["topic"] == topics.STOCK_IN_REQUESTED, name
        assert doc["status"] == status, (name, doc)
        assert code in doc["reason"], (name, doc["reason"])
        assert doc["attempts"] == 1, (name, doc)  # a 4xx is not retried
        if "payload_base64" in doc:
            assert base64.b64decode(doc["payload_base64"]) == value, name
        else:
            assert doc["payload"].encode() == value, name
    assert "not valid UTF-8" in mine[2]["reason"]
    assert "payload_base64" in mine[2]
    assert str(env.max_body_bytes) in mine[1]["reason"]
    assert bridge.stats.dead_lettered - dead_before == len(poison)

    after = counts(env)
    # only the good message left a trace: one ledger row, its balance, its record, its event
    assert after == {
        "movements": before["movements"] + 1,
        "stock_levels": before["stock_levels"] + 1,
        "idempotency_records": before["idempotency_records"] + 1,
        "outbox": before["outbox"] + 1,
    }
