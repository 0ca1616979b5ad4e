"""How the local bridge turns a Kafka record into a Knative CloudEvent without a broker: a
plain record is wrapped as the KafkaSource does, a CloudEvent record is forwarded, both in
binary HTTP and binary Kafka mode, and the dead letter a KafkaSink writes."""

from __future__ import annotations

import base64
import json

import pytest

from psi_local.cloudevent import (
    CE_TYPE,
    ERROR_DATA_MAX_BYTES,
    Event,
    dead_letter_record,
    kafka_event,
)
from shared_lib.adapters.kafka import Record
from tests.unit.bridge_records import SOURCE, TOPIC, record

STRUCTURED = "application/cloudevents+json"


def structured(document: dict[str, object], content_type: bytes = STRUCTURED.encode()) -> Record:
    return record(json.dumps(document).encode(), headers=[("content-type", content_type)])


# -- kafka_event: a record that is not a CloudEvent is wrapped --------------------------


def test_plain_record_is_wrapped_as_the_kafkasource_does() -> None:
    event = kafka_event(record(), "psi", "stock-in")

    assert event.data == b'{"sku": "A", "qty": 1}'
    assert event.attributes == {
        "specversion": "1.0",
        "id": "partition:2/offset:41",
        "source": SOURCE,
        "type": CE_TYPE,
        "subject": "partition:2#41",
        "time": "2023-11-14T22:13:20.123000Z",
        "key": "sku-A",
        "partitionkey": "sku-A",
        "knativekafkapartition": "2",
        "knativekafkaoffset": "41",
    }
    assert CE_TYPE == "dev.knative.kafka.event"


def test_wrapped_record_without_key_or_timestamp_has_neither_attribute() -> None:
    event = kafka_event(record(key=None, timestamp=None), "other-ns", "reconcile")

    assert "key" not in event.attributes
    assert "partitionkey" not in event.attributes
    assert "time" not in event.attributes
    assert (
        event.attributes["source"] == f"/apis/v1/namespaces/other-ns/kafkasources/reconcile#{TOPIC}"
    )


def test_wrapped_record_headers_become_cleaned_kafkaheader_extensions() -> None:
    headers = [
        ("X-Trace_Id", b"trace-1"),
        ("tenant.name", b"caf\xc3\xa9"),
        ("Content-Type", b"Application/JSON; Charset=UTF-8"),
    ]
    event = kafka_event(record(headers=headers), "psi", "stock-in")

    assert event.attributes["kafkaheaderxtraceid"] == "trace-1"
    assert event.attributes["kafkaheadertenantname"] == "café"
    assert event.attributes["datacontenttype"] == "application/json; charset=utf-8"
    assert not any(name.startswith("kafkaheadercontent") for name in event.attributes)
    assert event.attributes["type"] == CE_TYPE  # still the wrapper's event


def test_structured_looking_value_without_the_content_type_is_wrapped() -> None:
    document = {"specversion": "1.0", "id": "evt-1", "source": "/x", "type": "t", "data": {}}
    event = kafka_event(record(json.dumps(document).encode()), "psi", "stock-in")

    assert event.attributes["id"] == "partition:2/offset:41"
    assert event.attributes["type"] == CE_TYPE
    assert event.data == json.dumps(document).encode()


# -- kafka_event: a record that is a CloudEvent is forwarded ---------------------------


def test_structured_cloudevent_record_is_forwarded_as_that_event() -> None:
    document = {
        "specversion": "1.0",
        "id": "evt-42",
        "source": "/psi/stock",
        "type": "psi.stock.changed",
        "subject": "sku-A",
        "extcount": 3,
        "data": {"sku": "A", "qty": 1},
    }
    rec = structured(document, b"Application/CloudEvents+JSON; charset=utf-8")
    event = kafka_event(rec, "psi", "stock-in")

    assert json.loads(event.data) == {"sku": "A", "qty": 1}
    assert event.attributes == {
        "specversion": "1.0",
        "id": "evt-42",
        "source": "/psi/stock",
        "type": "psi.stock.changed",
        "subject": "sku-A",
        "extcount": "3",
        "datacontenttype": "application/json",
        "knativekafkapartition": "2",
        "knativekafkaoffset": "41",
    }


def test_structured_cloudevent_keeps_its_own_datacontenttype_and_string_data() -> None:
    document = {
        "specversion": "1.0",
        "id": "e",
        "source": "/s",
        "type": "t",
        "datacontenttype": "text/plain",
        "data": "hello",
    }
    event = kafka_event(structured(document), "psi", "stock-in")

    assert event.data == b"hello"
    assert event.attributes["datacontenttype"] == "text/plain"


def test_structured_cloudevent_with_data_base64_carries_the_decoded_bytes() -> None:
    document = {
        "specversion": "1.0",
        "id": "e",
        "source": "/s",
        "type": "t",
        "data_base64": base64.b64encode(b"\x00\xffbin").decode(),
    }
    event = kafka_event(structured(document), "psi", "stock-in")

    assert event.data == b"\x00\xffbin"
    assert "datacontenttype" not in event.attributes
    assert "data_base64" not in event.attributes


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"{not json", id="invalid-json"),
        pytest.param(b'[{"id": "e", "source": "/s"}]', id="not-an-object"),
        pytest.param(b'{"source": "/s", "type": "t"}', id="no-id"),
        pytest.param(b'{"id": "e", "source": ""}', id="empty-source"),
        pytest.param(b'{"id": "e", "source": "/s", "data_base64": "abc"}', id="bad-base64"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-5000-deep"),
        pytest.param(b"\xff\xfe not utf-8", id="invalid-utf8"),
    ],
)
def test_unreadable_structured_record_is_wrapped_instead(value: bytes) -> None:
    rec = record(value, headers=[("content-type", STRUCTURED.encode())])
    event = kafka_event(rec, "psi", "stock-in")

    assert event.attributes["id"] == "partition:2/offset:41"
    assert event.attributes["type"] == CE_TYPE
    assert event.attributes["datacontenttype"] == STRUCTURED
    assert event.data == value


def test_binary_kafka_cloudevent_is_forwarded_with_percent_encoded_headers() -> None:
    rec = Record(
        topic="psi.stock.changed",
        partition=1,
        offset=7,
        key=b"sku-1",
        value=b'{"qty": 1}',
        headers=[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"evt-1"),
            ("ce_type", b"psi.stock.changed"),
            ("ce_source", b"/psi/stock"),
            ("ce_subject", b"caf\xc3\xa9 1"),
            ("content-type", b"application/json; charset=utf-8"),
            ("trace", b"not an attribute"),
        ],
    )
    event = kafka_event(rec, "psi", "stock")
    assert event.attributes["subject"] == "café 1"

    body, headers = event.http()
    assert body == b'{"qty": 1}'
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "evt-1",
        "ce-type": "psi.stock.changed",
        "ce-source": "/psi/stock",
        "ce-subject": "caf%C3%A9%201",
        "Content-Type": "application/json; charset=utf-8",
        "ce-knativekafkapartition": "1",
        "ce-knativekafkaoffset": "7",
    }


# -- Event: binary HTTP and binary Kafka ------------------------------------------------


def test_event_http_percent_encodes_space_quote_percent_and_non_ascii() -> None:
    event = Event(
        {
            "id": "a b",
            "source": 'say "hi"',
            "subject": "50%",
            "type": "t\u00e9\u20ac",
            "extctl": "x\ny",
            "datacontenttype": "application/json",
        },
        b"{}",
    )
    body, headers = event.http()

    assert body == b"{}"
    assert headers == {
        "ce-id": "a%20b",
        "ce-source": "say%20%22hi%22",
        "ce-subject": "50%25",
        "ce-type": "t%C3%A9%E2%82%AC",
        "ce-extctl": "x%0Ay",
        "Content-Type": "application/json",
    }


def test_event_kafka_is_a_binary_mode_kafkasink_record() -> None:
    event = Event({"id": "e", "subject": "café", "datacontenttype": "text/plain"}, b"data")

    value, headers = event.kafka()

    assert value == b"data"
    assert headers == [
        ("ce_id", b"e"),
        ("ce_subject", "café".encode()),
        ("content-type", b"text/plain"),
    ]


# -- dead_letter_record -----------------------------------------------------------------


def test_dead_letter_carries_the_event_and_the_error_extensions() -> None:
    event = kafka_event(record(), "psi", "stock-in")

    value, headers, key = dead_letter_record(
        event, url="http://fn/", status=409, answer="already running"
    )

    assert value == event.data
    assert key == "sku-A"
    as_dict = {name: raw.decode() for name, raw in headers}
    assert as_dict == {
        **{f"ce_{name}": v for name, v in event.attributes.items()},
        "ce_knativeerrordest": "http://fn/",
        "ce_knativeerrorcode": "409",
        "ce_knativeerrordata": base64.b64encode(b"already running").decode(),
    }
    assert "knativeerrordest" not in event.attributes  # the event itself is left alone


def test_dead_letter_error_data_is_the_first_kib_of_the_answer() -> None:
    event = kafka_event(record(), "psi", "stock-in")
    answer = "é" * 1000  # 2000 bytes of UTF-8

    _, headers, _ = dead_letter_record(event, url="http://fn/", status=500, answer=answer)

    data = base64.b64decode(dict(headers)["ce_knativeerrordata"])
    assert ERROR_DATA_MAX_BYTES == 1024
    assert data == answer.encode()[:1024]


def test_dead_letter_without_an_answer_has_no_code_or_data() -> None:
    event = kafka_event(record(key=None), "psi", "stock-in")

    value, headers, key = dead_letter_record(
        event, url="http://fn/", status=0, answer="ConnectionRefusedError: refused"
    )
    names = dict(headers)

    assert names["ce_knativeerrordest"] == b"http://fn/"
    assert "ce_knativeerrorcode" not in names
    assert "ce_knativeerrordata" not in names
    assert key is None
    assert value == event.data


def test_dead_letter_with_an_empty_answer_has_a_code_but_no_data() -> None:
    event = kafka_event(record(), "psi", "stock-in")

    _, headers, _ = dead_letter_record(event, url="http://fn/", status=503, answer="")

    assert dict(headers)["ce_knativeerrorcode"] == b"503"
    assert "ce_knativeerrordata" not in dict(headers)


def test_dead_letter_of_a_wrapped_record_keeps_its_content_type() -> None:
    rec = record(b"<x/>", headers=[("content-type", b"Application/XML")])
    event = kafka_event(rec, "psi", "stock-in")

    value, headers, _ = dead_letter_record(event, url="u", status=400, answer="bad")

    assert value == b"<x/>"
    assert dict(headers)["content-type"] == b"application/xml"
