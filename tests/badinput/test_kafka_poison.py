"""Poison messages on ``psi.stock-in.requested`` through the running bridge (as a Knative
KafkaSource): each ends in ``psi.dead-letter`` as the dead-letter sink writes it - the
event's data, its attributes, the function's status and answer - is tried once (the
function answers with a status Knative does not retry), changes nothing, and a good message
after them on the same partition is still processed.

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
from shared_lib.adapters.kafka import KafkaEventPublisher, Record, read_topic
from shared_lib.domain.model import utcnow
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
    structured = [("content-type", b"application/cloudevents+json")]
    key = f"poison-{uuid.uuid4().hex[:8]}"  # one key: one partition, delivered in order
    bridge = env.stack.bridge
    assert bridge is not None
    dead_before = bridge.stats.dead_lettered
    retries_before = bridge.stats.retries
    with KafkaEventPublisher(env.stack.kafka_bootstrap) as publisher:
        for name, value, _, _ in poison:
            headers = structured if name == "bad cloudevent data" else None
            publisher.publish(topics.STOCK_IN_REQUESTED, key, value, headers=headers)
        publisher.publish(topics.STOCK_IN_REQUESTED, key, json.dumps(receipt(3)).encode())

    wait_until(
        lambda: level(env, GOOD_SKU) == (3, 0),
        timeout=60,
        what="the good message after the poison ones",
    )

    def attributes(record: Record) -> dict[str, str]:
        return {name: raw.decode() for name, raw in record.headers}

    def ours(records: list[Record]) -> list[Record]:
        return [r for r in records if attributes(r).get("ce_partitionkey") == key]

    records = read_topic(
        env.stack.kafka_bootstrap,
        topics.DEAD_LETTER,
        until=lambda recs: len(ours(recs)) >= len(poison) - 1,
        timeout=30,
    )
    # the structured event carries its own attributes: found by its id
    event = [r for r in records if attributes(r).get("ce_id") == bad_event["id"]]
    mine = sorted(ours(records), key=lambda r: int(attributes(r)["ce_knativekafkaoffset"]))
    mine += event
    assert len(mine) == len(poison), mine
    for (name, value, status, code), letter in zip(poison, mine, strict=True):
        found = attributes(letter)
        answer = base64.b64decode(found["ce_knativeerrordata"]).decode()
        assert found["ce_knativeerrorcode"] == str(status), (name, found)
        assert code in answer, (name, answer)
        assert found["ce_knativeerrordest"].startswith("http://127.0.0.1:"), name
        if name == "bad cloudevent data":
            assert json.loads(letter.value) == bad_event["data"]
        else:
            assert letter.value == value, name
            assert found["ce_type"] == "dev.knative.kafka.event", name
    assert (
        "not valid UTF-8" in base64.b64decode(attributes(mine[2])["ce_knativeerrordata"]).decode()
    )
    assert bridge.stats.dead_lettered - dead_before == len(poison)
    assert bridge.stats.retries == retries_before  # nothing was retried

    after = counts(env)
    # only the good message left a trace: one ledger row, its balance, its record, its event
    assert after == {
        "movements": before["movements"] + 1,
        "stock_levels": before["stock_levels"] + 1,
        "idempotency_records": before["idempotency_records"] + 1,
        "outbox": before["outbox"] + 1,
    }
