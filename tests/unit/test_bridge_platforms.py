"""The bridge's two platforms without a broker: how a record becomes a Knative CloudEvent or
an OpenFaaS invocation, the dead letter a KafkaSink writes, and each platform's retry rules."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from psi_local.cloudevent import (
    CE_TYPE,
    ERROR_DATA_MAX_BYTES,
    Event,
    dead_letter_record,
    kafka_event,
)
from psi_local.dispatchers import KnativeDispatcher, OpenFaasConnector
from psi_local.oidc import LocalIssuer, kafka_source_subject, service_audience
from shared_lib.adapters.kafka import Headers, Record
from shared_lib.http.auth import AuthError
from shared_lib.http.senders import OidcVerifier

TOPIC = "psi.stock-in.requested"
SOURCE = f"/apis/v1/namespaces/psi/kafkasources/stock-in#{TOPIC}"
TIMESTAMP = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
STRUCTURED = "application/cloudevents+json"


def record(
    value: bytes = b'{"sku": "A", "qty": 1}',
    *,
    key: bytes | None = b"sku-A",
    headers: Headers | None = None,
    partition: int = 2,
    offset: int = 41,
    timestamp: int | None = TIMESTAMP,
    topic: str = TOPIC,
) -> Record:
    return Record(topic, partition, offset, key, value, list(headers or []), timestamp)


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


# -- KnativeDispatcher ------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as started:
        yield started


def test_knative_request_is_binary_mode_with_a_verifiable_sender_token(
    issuer: LocalIssuer,
) -> None:
    dispatcher = KnativeDispatcher({TOPIC: "stock-in"}, issuer)

    body, headers = dispatcher.request(record(), "http://fn/")

    assert body == b'{"sku": "A", "qty": 1}'
    assert headers["ce-id"] == "partition:2/offset:41"
    assert headers["ce-source"] == SOURCE  # "#" is printable ASCII: not percent-encoded
    assert headers["ce-type"] == CE_TYPE
    assert headers["ce-knativekafkapartition"] == "2"
    assert headers["ce-knativekafkaoffset"] == "41"
    assert headers["Prefer"] == "reply"
    assert headers["Kn-Namespace"] == "psi"
    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"

    subject = kafka_source_subject("psi", "stock-in")
    verifier = OidcVerifier(issuer.url, service_audience("psi", "stock-in"), frozenset({subject}))
    assert verifier.verify(token) == subject
    assert subject == "system:serviceaccount:psi:stock-in-oidc-sources.knative.dev-kafkasource"

    other = OidcVerifier(issuer.url, service_audience("psi", "reconcile"), frozenset({subject}))
    with pytest.raises(AuthError) as refused:
        other.verify(token)
    assert refused.value.status == 401


def test_knative_request_without_an_issuer_has_no_authorization() -> None:
    dispatcher = KnativeDispatcher({TOPIC: "stock-in"}, namespace="ns2")

    _, headers = dispatcher.request(record(), "http://fn/")

    assert "Authorization" not in headers
    assert headers["Kn-Namespace"] == "ns2"
    assert headers["ce-source"] == f"/apis/v1/namespaces/ns2/kafkasources/stock-in#{TOPIC}"


def test_knative_retry_budget_is_one_try_plus_retry() -> None:
    assert KnativeDispatcher({}, retry=0).max_attempts == 1
    assert KnativeDispatcher({}, retry=3).max_attempts == 4
    assert KnativeDispatcher({}).max_attempts == 11  # spec.delivery.retry defaults to 10 here


@pytest.mark.parametrize("status", [0, 404, 408, 409, 429, 500, 501, 502, 503, 504, 599])
def test_knative_retries(status: int) -> None:
    assert KnativeDispatcher({}).retried(status)


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 405, 410, 413, 422, 451])
def test_knative_does_not_retry(status: int) -> None:
    assert not KnativeDispatcher({}).retried(status)


def test_knative_delay_doubles_per_attempt_and_ignores_retry_after() -> None:
    dispatcher = KnativeDispatcher({}, backoff_delay=0.5)

    assert [dispatcher.delay(n, None) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert dispatcher.delay(1, 0.0) == 2 * 0.5
    assert dispatcher.delay(3, 100.0) == 8 * 0.5


# -- OpenFaasConnector ------------------------------------------------------------------


def test_openfaas_request_is_the_raw_value_with_connector_headers() -> None:
    connector = OpenFaasConnector("s3cret-api-key-0123")
    rec = record(b"\xff raw", headers=[("trace", b"t-1"), ("Tenant", b"caf\xc3\xa9")])

    body, headers = connector.request(rec, "http://gateway/function/stock-in")

    assert body == b"\xff raw"
    assert headers == {
        "Content-Type": "text/plain",
        "X-Connector": "connector-sdk",
        "X-Topic": TOPIC,
        "X-Kafka-Partition": "2",
        "X-Kafka-Offset": "41",
        "X-Kafka-Key": "sku-A",
        "X-Kafka-trace": "t-1",
        "X-Kafka-Tenant": b"caf\xc3\xa9".decode("latin-1"),
        "Authorization": "Basic "
        + base64.b64encode(b"kafka-connector:s3cret-api-key-0123").decode(),
    }
    credentials = base64.b64decode(headers["Authorization"].split(" ", 1)[1]).decode()
    assert credentials == "kafka-connector:s3cret-api-key-0123"


def test_openfaas_non_ascii_key_is_sent_as_base64() -> None:
    _, headers = OpenFaasConnector().request(record(key="clé".encode()), "http://fn/")

    assert headers["X-Kafka-Key"] == "Y2zDqQ=="
    assert headers["X-Kafka-Key-Enc"] == "b64"
    assert base64.b64decode(headers["X-Kafka-Key"]).decode() == "clé"


def test_openfaas_without_key_or_credential_sends_neither() -> None:
    _, headers = OpenFaasConnector().request(record(key=None), "http://fn/")

    assert "X-Kafka-Key" not in headers
    assert "X-Kafka-Key-Enc" not in headers
    assert "Authorization" not in headers


def test_openfaas_user_is_configurable() -> None:
    _, headers = OpenFaasConnector("k", user="admin").request(record(), "http://fn/")

    assert base64.b64decode(headers["Authorization"][6:]) == b"admin:k"


@pytest.mark.parametrize("status", [0, 408, 429, 500, 502, 503, 504])
def test_openfaas_retries(status: int) -> None:
    assert OpenFaasConnector().retried(status)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 409, 413, 422, 501, 505])
def test_openfaas_does_not_retry(status: int) -> None:
    assert not OpenFaasConnector().retried(status)


def test_openfaas_delay_doubles_from_initial_wait_up_to_max_wait() -> None:
    connector = OpenFaasConnector(initial_wait=10.0, max_wait=120.0)

    delays = [connector.delay(n, None) for n in (1, 2, 3, 4, 5, 6)]

    assert delays == [10.0, 20.0, 40.0, 80.0, 120.0, 120.0]


def test_openfaas_delay_honours_retry_after_capped_at_max_wait() -> None:
    connector = OpenFaasConnector(initial_wait=10.0, max_wait=120.0)

    assert connector.delay(1, 0.0) == 0.0
    assert connector.delay(4, 3.0) == 3.0  # not 80: the answer said when
    assert connector.delay(1, 500.0) == 120.0


def test_openfaas_defaults_are_the_queue_workers() -> None:
    connector = OpenFaasConnector()

    assert connector.max_attempts == 100
    assert (connector.initial_wait, connector.max_wait) == (10.0, 120.0)
    assert connector.name == "openfaas"
    assert KnativeDispatcher({}).name == "knative"
