"""Each platform's way to deliver a Kafka record over HTTP (docs/platform-contracts.md has
the rules and their sources).

``KnativeDispatcher`` is a Knative KafkaSource's dispatcher: the record as a CloudEvent
(``psi_local.cloudevent``) with an OIDC sender token (``Authorization: Bearer``) from a
local issuer; 404, 408, 409, 429, 5xx and network errors are retried with exponential
backoff (``delay * 2^n``); anything else, or a retry budget spent, goes to the dead-letter
sink.

``OpenFaasConnector`` is kafka-connector with asynchronous invocation and the queue-worker:
the record value as body, ``X-Topic``, ``X-Kafka-Partition``, ``X-Kafka-Offset``,
``X-Kafka-Key`` and ``X-Kafka-<header>``, HTTP Basic credentials (the user info of the
connector's gateway URL); 408, 429, 500, 502, 503, 504 and network errors are retried with
exponential backoff (``Retry-After`` honoured on 429 and 503); any other answer ends the
record - the function parks what it refuses.

``HttpSender`` posts what a dispatcher shaped and reads the answer.
"""

from __future__ import annotations

import base64
import http.client
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

from psi_local.cloudevent import Event, dead_letter_record, kafka_event
from shared_lib.adapters.kafka import Headers, Record
from shared_lib.http.delivery import KNATIVE, OPENFAAS, retried_by

if TYPE_CHECKING:
    from psi_local.oidc import LocalIssuer

log = logging.getLogger("psi_local.bridge")  # the bridge's own lines: they go to bridge.log

MAX_BODY_READ = 64 * 1024
# kafka-connector's Helm chart default content type for invocations
CONNECTOR_CONTENT_TYPE = "text/plain"


class Dispatcher(Protocol):
    """One platform's way to deliver a record: shape, retry policy, and the end of it."""

    name: str
    max_attempts: int

    def request(self, record: Record, url: str) -> tuple[bytes, dict[str, str]]: ...

    def retried(self, status: int) -> bool: ...

    def delay(self, attempt: int, retry_after: float | None) -> float: ...

    def letter(
        self, record: Record, url: str, status: int, answer: str
    ) -> tuple[bytes, Headers, str | None] | None:
        """What its dead-letter sink writes for a record that failed for good (value,
        headers, key); None when the platform has none."""
        ...


@dataclass
class KnativeDispatcher:
    """KafkaSource: CloudEvents with an OIDC sender token; ``retry`` and ``backoff_delay``
    are the source's ``spec.delivery.retry`` and ``backoffDelay`` (seconds)."""

    sources: Mapping[str, str]  # topic -> KafkaSource name (also the function's name)
    issuer: LocalIssuer | None = None
    namespace: str = "psi"
    retry: int = 10
    backoff_delay: float = 1.0
    name: str = KNATIVE

    @property
    def max_attempts(self) -> int:
        return self.retry + 1

    def event(self, record: Record) -> Event:
        return kafka_event(record, self.namespace, self.sources[record.topic])

    def request(self, record: Record, url: str) -> tuple[bytes, dict[str, str]]:
        from psi_local.oidc import kafka_source_subject, service_audience

        body, headers = self.event(record).http()
        headers["Prefer"] = "reply"
        headers["Kn-Namespace"] = self.namespace
        if self.issuer is not None:
            source = self.sources[record.topic]
            token = self.issuer.token(
                service_audience(self.namespace, source),
                kafka_source_subject(self.namespace, source),
            )
            headers["Authorization"] = f"Bearer {token}"
        return body, headers

    def retried(self, status: int) -> bool:
        return status == 0 or retried_by(KNATIVE, status)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        return self.backoff_delay * 2**attempt  # EKB ignores Retry-After

    def letter(
        self, record: Record, url: str, status: int, answer: str
    ) -> tuple[bytes, Headers, str | None]:
        try:
            return dead_letter_record(self.event(record), url=url, status=status, answer=answer)
        except Exception:  # its headers cannot be written: park it as a plain record
            log.exception("dead letter of %s-%s-%s written without its headers", *_where(record))
            bare = self.event(replace(record, headers=[]))
            return dead_letter_record(bare, url=url, status=status, answer="")


@dataclass
class OpenFaasConnector:
    """kafka-connector with ``asyncInvocation`` and the queue-worker's retries; the
    credential is the key in the user info of its gateway URL (sent as Basic)."""

    credential: str | None = None  # an API key with the events:deliver scope
    max_attempts: int = 100
    initial_wait: float = 10.0
    max_wait: float = 120.0
    user: str = "kafka-connector"
    name: str = OPENFAAS

    def request(self, record: Record, url: str) -> tuple[bytes, dict[str, str]]:
        headers = {
            "Content-Type": CONNECTOR_CONTENT_TYPE,
            "X-Connector": "connector-sdk",
            "X-Topic": record.topic,
            "X-Kafka-Partition": str(record.partition),
            "X-Kafka-Offset": str(record.offset),
        }
        if record.key is not None:
            try:
                headers["X-Kafka-Key"] = record.key.decode("ascii")
            except UnicodeDecodeError:
                headers["X-Kafka-Key"] = base64.b64encode(record.key).decode("ascii")
                headers["X-Kafka-Key-Enc"] = "b64"
        for name, raw in record.headers:
            headers["X-Kafka-" + name] = raw.decode("latin-1")
        if self.credential is not None:
            pair = f"{self.user}:{self.credential}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return record.value, headers

    def retried(self, status: int) -> bool:
        return status == 0 or retried_by(OPENFAAS, status)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_wait, retry_after)
        return min(self.max_wait, self.initial_wait * 2 ** (attempt - 1))

    def letter(self, record: Record, url: str, status: int, answer: str) -> None:
        return None  # OpenFaaS has no dead-letter sink: the function parks what it refuses


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a redirected POST would turn into a body-less GET: treat 3xx as a failed delivery
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read_text(response: Any) -> str:
    try:
        return bytes(response.read(MAX_BODY_READ)).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = str((headers.get("Retry-After") if headers is not None else None) or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _where(record: Record) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


class Unsendable(Exception):
    """A request HTTP cannot carry (a header value it refuses): no retry can help."""


class HttpSender:
    """POSTs a delivery to a local function: never through a proxy of the environment, and
    a redirect is a failed delivery."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, float | None]:
        """Status (0: no answer), the answer's text, and its Retry-After in seconds."""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return int(response.status), _read_text(response), None
        except urllib.error.HTTPError as exc:
            with exc:
                # honoured on 429 and 503 only (the queue-worker's rule; EKB ignores it)
                wait = _retry_after(exc.headers) if exc.code in (429, 503) else None
                return int(exc.code), _read_text(exc), wait
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            return 0, f"{type(exc).__name__}: {exc}", None
        except (ValueError, UnicodeError) as exc:  # a header value HTTP cannot carry
            raise Unsendable(str(exc)) from exc
