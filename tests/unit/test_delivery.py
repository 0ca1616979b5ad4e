"""How a request is read as a platform's delivery: its shape, identity and final answer,
against the rules in docs/platform-contracts.md."""

from __future__ import annotations

import json

import pytest

from shared_lib.http.delivery import (
    KNATIVE,
    OPENFAAS,
    DeliveryError,
    final_status,
    identity_key,
    legacy_key,
    parse,
    retried_by,
    shape_of,
)

TOPIC = "psi.stock-in.requested"
SOURCE = f"/apis/v1/namespaces/psi/kafkasources/stock-in#{TOPIC}"
BODY = json.dumps({"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}).encode()


def event(**attributes: object) -> bytes:
    return json.dumps({"specversion": "1.0", "type": "t", "data": {"a": 1}, **attributes}).encode()


@pytest.mark.parametrize(
    ("headers", "shape"),
    [
        ({}, None),
        ({"Content-Type": "application/json"}, None),
        ({"ce-id": "1"}, KNATIVE),
        ({"ce-specversion": "1.0"}, KNATIVE),
        ({"Content-Type": "application/cloudevents+json; charset=utf-8"}, KNATIVE),
        ({"X-Topic": TOPIC}, OPENFAAS),
        ({"X-Topic": TOPIC, "ce-id": "1"}, KNATIVE),
    ],
)
def test_the_shape_comes_from_headers_alone(headers: dict[str, str], shape: str | None) -> None:
    assert shape_of(headers) == shape


def test_a_knative_wrapped_record_is_known_by_its_source_and_id() -> None:
    headers = {
        "ce-id": "partition:2/offset:7",
        "ce-source": SOURCE,
        "ce-type": "dev.knative.kafka.event",
        "ce-key": "A",
        "ce-knativekafkapartition": "2",
        "ce-knativekafkaoffset": "7",
    }
    delivery = parse(KNATIVE, headers, BODY)
    assert (delivery.topic, delivery.partition, delivery.offset, delivery.key) == (TOPIC, 2, 7, "A")
    assert delivery.data == json.loads(BODY)
    assert delivery.idempotency_key == identity_key(SOURCE, "partition:2/offset:7")
    assert legacy_key(delivery) == "partition:2/offset:7"
    assert not delivery.scheduled


def test_a_structured_cloudevent_carries_its_own_identity_and_data() -> None:
    headers = {"Content-Type": "application/cloudevents+json"}
    delivery = parse(KNATIVE, headers, event(id="po-1", source="/erp"))
    assert (delivery.source, delivery.event_id, delivery.topic) == ("/erp", "po-1", None)
    assert delivery.data == {"a": 1}


def test_the_ping_source_event_is_scheduled() -> None:
    headers = {
        "ce-id": "9b1",
        "ce-source": "/apis/v1/namespaces/psi/pingsources/nightly-reconcile",
        "ce-type": "dev.knative.sources.ping",
    }
    assert parse(KNATIVE, headers, b'{"repair": true}').scheduled


@pytest.mark.parametrize(
    ("headers", "raw", "field"),
    [
        ({"ce-id": "1"}, BODY, "ce-source"),
        ({"ce-source": "/s"}, BODY, "ce-source"),
        ({"ce-id": "1", "ce-source": "/s"}, b"{nope", "body"),
        ({"ce-id": "1", "ce-source": "/s"}, b"[" * 5000 + b"]" * 5000, "body"),
        ({"ce-id": "1", "ce-source": "/s"}, b"\xff", "body"),
        ({"Content-Type": "application/cloudevents+json"}, event(source="/s"), "body"),
        ({"Content-Type": "application/cloudevents+json"}, b"[1]", "body"),
    ],
)
def test_an_envelope_that_breaks_the_contract_names_what(
    headers: dict[str, str], raw: bytes, field: str
) -> None:
    with pytest.raises(DeliveryError) as error:
        parse(KNATIVE, headers, raw)
    assert error.value.field == field


def test_a_plain_connector_record_is_known_by_topic_partition_and_offset() -> None:
    headers = {
        "X-Topic": TOPIC,
        "X-Kafka-Partition": "1",
        "X-Kafka-Offset": "42",
        "X-Kafka-Key": "QQ==",
        "X-Kafka-Key-Enc": "b64",
    }
    delivery = parse(OPENFAAS, headers, BODY)
    assert (delivery.source, delivery.event_id, delivery.key) == (f"kafka:{TOPIC}", "1/42", "A")
    assert legacy_key(delivery) == f"{TOPIC}:1:42"
    other = parse(OPENFAAS, {**headers, "X-Topic": "psi.stock-out.requested"}, BODY)
    assert other.idempotency_key != delivery.idempotency_key


def test_a_connector_record_that_is_a_cloudevent_is_known_as_the_event() -> None:
    common = {"X-Topic": TOPIC, "X-Kafka-Partition": "0", "X-Kafka-Offset": "1"}
    structured = {**common, "X-Kafka-Content-Type": "application/cloudevents+json"}
    first = parse(OPENFAAS, structured, event(id="po-1", source="/erp"))
    assert (first.source, first.event_id, first.data) == ("/erp", "po-1", {"a": 1})
    binary = {**common, "X-Kafka-Ce_specversion": "1.0", "X-Kafka-Ce_id": "po-1"}
    second = parse(OPENFAAS, {**binary, "X-Kafka-Ce_source": "/erp"}, b'{"a": 1}')
    assert second.idempotency_key == first.idempotency_key
    with pytest.raises(DeliveryError):
        parse(OPENFAAS, binary, b"{}")
    # without the header the same bytes are a plain record: its data is the whole document
    plain = parse(OPENFAAS, common, event(id="po-1", source="/erp"))
    assert plain.event_id == "0/1" and plain.data["id"] == "po-1"


def test_a_cron_connector_call_has_no_record_and_is_scheduled() -> None:
    call = parse(OPENFAAS, {"X-Topic": "cron-function", "X-Connector": "cron-connector"}, b"")
    assert call.idempotency_key is None and call.data == {} and call.scheduled


@pytest.mark.parametrize("status", [404, 408, 409, 429, 500, 502, 503, 504, 599])
def test_knative_retries_these(status: int) -> None:
    assert retried_by(KNATIVE, status)


@pytest.mark.parametrize("status", [400, 401, 403, 410, 413, 415, 422])
def test_knative_does_not_retry_these(status: int) -> None:
    assert not retried_by(KNATIVE, status)


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *[(status, True) for status in (408, 429, 500, 502, 503, 504)],
        *[(status, False) for status in (404, 409, 422, 501)],
    ],
)
def test_the_queue_worker_retries_its_default_codes(status: int, retried: bool) -> None:
    assert retried_by(OPENFAAS, status) is retried


@pytest.mark.parametrize(
    ("platform", "status", "final"),
    [
        (KNATIVE, 404, 422),
        (KNATIVE, 409, 422),
        (KNATIVE, 400, 400),
        (KNATIVE, 422, 422),
        (KNATIVE, 503, 503),
        (KNATIVE, 429, 429),
        (OPENFAAS, 404, 404),
        (OPENFAAS, 409, 409),
        (OPENFAAS, 503, 503),
    ],
)
def test_a_refusal_ends_the_delivery_on_every_platform(
    platform: str, status: int, final: int
) -> None:
    assert final_status(platform, status) == final
