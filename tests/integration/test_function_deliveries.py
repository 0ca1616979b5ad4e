"""Kafka deliveries to the in-process functions (functions-framework test clients) on the real
stores, MariaDB and SQLite, the real Redis: CloudEvents (binary and structured) and
kafka-connector records have one effect per event or record, a wrong topic is refused, and a
refused connector delivery is parked in the dead-letter topic."""

from __future__ import annotations

import json
import uuid

from shared_lib import topics
from tests.integration.functions_api import CE_JSON, KAFKA_SOURCE, Api, Boot, catalog, ok, refused


def test_stock_in_deliveries_have_one_effect_per_event(api: Api) -> None:
    catalog(api, {"A": 0})
    data = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]}
    binary = {
        "ce-id": "evt-binary-1",
        "ce-source": KAFKA_SOURCE + topics.STOCK_IN_REQUESTED,
        "ce-type": "psi.stock-in.requested",
        "ce-specversion": "1.0",
    }
    answers = [api.post("stock_in", "/", data, key=None, headers=binary) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.headers.get("Idempotent-Replayed") for r in answers] == [None, "true", "true"]
    assert api.levels() == {"A": (2, 0)}

    structured = {
        "specversion": "1.0",
        "id": "evt-structured-1",
        "source": KAFKA_SOURCE + topics.STOCK_IN_REQUESTED,
        "type": "psi.stock-in.requested",
        "datacontenttype": "application/json",
        "data": {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 3}]},
    }
    for _ in range(2):
        ok(
            api.post(
                "stock_in", "/", structured, key=None, content_type="application/cloudevents+json"
            )
        )
    assert api.levels() == {"A": (5, 0)}

    connector = {
        **structured,
        "id": "evt-connector-1",
        "source": "/psi/test",
        "data": {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 4}]},
    }
    # kafka-connector: a record with a content-type header that says it is a CloudEvent
    as_event = {"X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Content-Type": CE_JSON}
    for offset in ("7", "8"):  # the same event produced twice: two records, one effect
        record = {**as_event, "X-Kafka-Partition": "0", "X-Kafka-Offset": offset}
        ok(api.post("stock_in", "/", connector, key=None, headers=record))
    assert api.levels() == {"A": (9, 0)}
    assert len(api.movement_ids()) == 3

    # a plain record is known by (topic, partition, offset): a redelivery has one effect
    plain = {"X-Topic": topics.STOCK_IN_REQUESTED, "X-Kafka-Partition": "1"}
    for offset in ("5", "5", "6"):
        record = {**plain, "X-Kafka-Offset": offset}
        ok(api.post("stock_in", "/", data, key=None, headers=record))
    assert api.levels() == {"A": (13, 0)}

    wrong = api.post(
        "stock_in", "/", connector, key=None, headers={"X-Topic": topics.STOCK_OUT_REQUESTED}
    )
    assert refused(wrong, 400, "unexpected_topic")["topic"] == topics.STOCK_OUT_REQUESTED
    wrong_source = {
        **binary,
        "ce-id": "evt-binary-2",
        "ce-source": KAFKA_SOURCE + topics.STOCK_OUT_REQUESTED,
    }
    refused(
        api.post("stock_in", "/", data, key=None, headers=wrong_source), 400, "unexpected_topic"
    )
    # a function that consumes no topic takes no deliveries: the header means nothing there
    no_key = api.put(
        "catalog",
        "/products/Z",
        {"name": "z"},
        key=None,
        headers={"X-Topic": topics.STOCK_IN_REQUESTED},
    )
    assert refused(no_key, 400, "invalid_request")["field"] == "Idempotency-Key"
    assert api.levels() == {"A": (13, 0)}
    refused(api.get("catalog", "/products/Z"), 404, "unknown_sku")


def test_a_kafka_connector_delivery_that_is_refused_is_parked_in_the_dead_letter_topic(
    boot: Boot, broker
) -> None:
    from psi_local.events_schema import validate_event
    from shared_lib.adapters.kafka import read_topic

    api = boot(PSI_KAFKA_BOOTSTRAP=broker.bootstrap)
    catalog(api, {"A": 0})
    offset = uuid.uuid4().int % 10**9  # the broker is shared by the module's tests
    connector = {
        "X-Topic": topics.STOCK_IN_REQUESTED,
        "X-Kafka-Partition": "2",
        "X-Kafka-Offset": str(offset),
    }
    poison = b'{"warehouse": "MAIN", "lines": [{"sku": "A", "qty": -1}]}'
    next_one = {**connector, "X-Kafka-Offset": str(offset + 1)}
    refused(api.post("stock_in", "/", data=poison, headers=connector), 422, "invalid_request")
    refused(api.post("stock_in", "/", data=b"\xff\xfe", headers=next_one), 400, "invalid_json")
    # the same record delivered again: the first answer, and no second letter
    again = api.post("stock_in", "/", data=poison, headers=connector)
    assert refused(again, 422, "invalid_request")["field"] == "lines[0].qty"

    def ours(records: list) -> list[dict]:
        docs = [json.loads(r.value) for r in records]
        return [d for d in docs if d["offset"] in (offset, offset + 1)]

    letters = read_topic(
        broker.bootstrap, topics.DEAD_LETTER, until=lambda rs: len(ours(rs)) >= 3, timeout=5
    )
    docs = sorted(ours(letters), key=lambda d: d["offset"])
    assert len(docs) == 2
    for doc in docs:
        validate_event(topics.DEAD_LETTER, doc)
        assert doc["topic"] == topics.STOCK_IN_REQUESTED and doc["function"] == "stock-in"
    assert docs[0]["payload"] == poison.decode() and docs[0]["status"] == 422
    assert docs[0]["partition"] == 2
    assert "lines[0].qty" in docs[0]["reason"]
    assert docs[1]["payload_base64"] == "//4="
    assert api.levels() == {}
