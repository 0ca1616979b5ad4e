"""The bridge's two platforms without a broker: how a record becomes a Knative request or an
OpenFaaS connector invocation (headers, sender credentials), and each platform's retry rules."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from psi_local.cloudevent import CE_TYPE
from psi_local.dispatchers import KnativeDispatcher, OpenFaasConnector
from psi_local.oidc import LocalIssuer, kafka_source_subject, service_audience
from shared_lib.http.auth import AuthError
from shared_lib.http.senders import OidcVerifier
from tests.unit.bridge_records import SOURCE, TOPIC, record

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
