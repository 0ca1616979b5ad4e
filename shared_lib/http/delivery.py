"""How a request arrived: a plain HTTP call, or a Kafka record delivered by a platform.

Two platforms, each with its own shape (docs/platform-contracts.md has every rule with
its source):

- **Knative** (KafkaSource dispatcher): CloudEvents over HTTP, binary mode (``ce-*``
  headers, the event's data as body) or structured mode (``application/cloudevents+json``).
  A record that was not a CloudEvent arrives as ``id = partition:<p>/offset:<o>``,
  ``source = /apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>``.
- **OpenFaaS** (kafka-connector, cron-connector, queue-worker): the record value as body,
  the topic in ``X-Topic``, ``X-Kafka-Partition`` / ``X-Kafka-Offset`` / ``X-Kafka-Key``
  and every record header as ``X-Kafka-<name>``. A record that is a CloudEvent by the
  CloudEvents Kafka binding (a ``content-type: application/cloudevents+json`` header, or
  ``ce_`` headers) is read as one.

A delivery's identity is what its spec says: a CloudEvent's (source, id); a plain record's
(topic, partition, offset). Its idempotency key is a digest of that identity, so ids from
different sources never collide.

A CloudEvent's distributed-tracing extension (``ce-traceparent``, an envelope's
``traceparent``, a record's ``ce_traceparent`` header) is kept as the trace that created
the event; the request continues it (shared_lib.domain.trace).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLOUDEVENTS_JSON = "application/cloudevents+json"
KNATIVE = "knative"
OPENFAAS = "openfaas"
PLATFORMS = (KNATIVE, OPENFAAS)
# cron-connector invokes with this topic and no body (openfaas/cron-connector main.go)
CRON_TOPIC = "cron-function"
# PingSource's event type (knative/eventing pkg/apis/sources/v1/ping_lifecycle.go)
PING_TYPE = "dev.knative.sources.ping"


class DeliveryError(ValueError):
    """A delivery whose envelope breaks its platform's contract; ``field`` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def shape_of(headers: Mapping[str, str]) -> str | None:
    """The platform whose delivery shape these headers have; None for a plain HTTP call.
    Only headers are read: the sender must be authenticated before the body is."""
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == CLOUDEVENTS_JSON or headers.get("ce-id") or headers.get("ce-specversion"):
        return KNATIVE
    if headers.get("X-Topic"):
        return OPENFAAS
    return None


def retried_by(platform: str, status: int) -> bool:
    """Whether the platform sends a delivery again after this answer.

    Knative: the data-plane contract and EKB's WebClientCloudEventSender retry 404, 408,
    409, 429 and 5xx. OpenFaaS: the queue-worker's default ``httpRetryCodes`` are 408, 429,
    500, 502, 503, 504; kafka-connector and cron-connector themselves never retry.
    """
    if platform == KNATIVE:
        return status >= 500 or status in (404, 408, 409, 429)
    return status in (408, 429, 500, 502, 503, 504)


def final_status(platform: str, status: int) -> int:
    """A refusal (4xx) must end the delivery: a status the platform would retry becomes 422,
    so a business refusal never blocks an ordered partition with a retry storm."""
    if 400 <= status < 500 and status not in (408, 429) and retried_by(platform, status):
        return 422
    return status


def identity_key(source: str, event_id: str) -> str:
    """The idempotency key of a delivery: fixed length, printable, one per (source, id)."""
    digest = hashlib.sha256(f"{len(source)}:{source}{event_id}".encode()).hexdigest()
    return f"delivery-{digest[:48]}"


@dataclass(frozen=True)
class Delivery:
    platform: str
    topic: str | None  # None when the envelope does not say (a forwarded CloudEvent)
    source: str | None
    event_id: str | None
    data: Any
    partition: int | None = None
    offset: int | None = None
    key: str | None = None  # the Kafka record key
    legacy_key: str | None = None  # the key releases before 0.2 recorded (bare event id)
    event_type: str | None = None
    # the CloudEvents distributed-tracing extension: the trace that created the event
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def scheduled(self) -> bool:
        """A platform's schedule fired it: PingSource's event or a cron-connector call."""
        return self.event_type == PING_TYPE or self.topic == CRON_TOPIC

    @property
    def idempotency_key(self) -> str | None:
        if self.source is None or self.event_id is None:
            return None
        return identity_key(self.source, self.event_id)


# JSON numbers longer than this are refused: no quantity needs more, and Python's int()
# of thousands of digits is slow (and refused past 4,300)
MAX_NUMBER_DIGITS = 40


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object naming one key twice is refused: a proxy that reads the first value and
    this service the last would see two different requests."""
    document = dict(pairs)
    if len(document) != len(pairs):
        names = [name for name, _ in pairs]
        twice = next(name for name in names if names.count(name) > 1)
        raise _Refused(f"names {twice!r} twice")
    return document


def _number(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _Refused(f"has a number of {len(text)} digits (at most {MAX_NUMBER_DIGITS})")
    return int(text)


def _real(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_DIGITS else math.inf
    if not math.isfinite(value):
        raise _Refused(f"has the number {text[:20]}, too large or too long")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"has {name}, which JSON does not allow")


class _Refused(ValueError):
    pass


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_int=_number, parse_float=_real, parse_constant=_constant
)


def decode_json(raw: bytes, field: str = "body") -> Any:
    """Strict JSON (RFC 8259 with I-JSON's unique names): no duplicate keys, no NaN or
    Infinity, numbers of at most MAX_NUMBER_DIGITS; DeliveryError names what is wrong."""
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
        return _DECODER.decode(text)
    except UnicodeDecodeError:
        raise DeliveryError(field, "is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DeliveryError(
            field, f"is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    except _Refused as exc:
        raise DeliveryError(field, str(exc)) from None
    except RecursionError:
        raise DeliveryError(field, "is nested too deeply") from None


def topic_of_source(source: str | None) -> str | None:
    """KafkaSource sources end in ``#<topic>`` (InvalidCloudEventInterceptor)."""
    if source and "#" in source:
        return source.rsplit("#", 1)[1] or None
    return None


def int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name, "")
    return int(value) if value.isdigit() and len(value) <= 19 else None


Trace = tuple[str | None, str | None]  # (traceparent, tracestate), as the event has them


def _text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    return value if isinstance(value, str) else None


def _structured(raw: bytes) -> tuple[str, str, Any, str | None, Trace]:
    document = decode_json(raw, "body")
    if not isinstance(document, dict):
        raise DeliveryError("body", "a structured CloudEvent must be a JSON object")
    source, event_id = document.get("source"), document.get("id")
    if not isinstance(source, str) or not source or not isinstance(event_id, str) or not event_id:
        raise DeliveryError("body", "a CloudEvent needs a non-empty source and id")
    trace = (_text(document, "traceparent"), _text(document, "tracestate"))
    return source, event_id, document.get("data"), _text(document, "type"), trace


def _knative(headers: Mapping[str, str], raw: bytes) -> Delivery:
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == CLOUDEVENTS_JSON:
        source, event_id, data, event_type, trace = _structured(raw)
    else:
        source, event_id = headers.get("ce-source", ""), headers.get("ce-id", "")
        event_type = headers.get("ce-type")
        trace = headers.get("ce-traceparent"), headers.get("ce-tracestate")
        if not source or not event_id:
            raise DeliveryError("ce-source", "a CloudEvent needs the ce-source and ce-id headers")
        data = decode_json(raw, "body")
    return Delivery(
        KNATIVE,
        topic_of_source(source),
        source,
        event_id,
        data,
        partition=int_header(headers, "ce-knativekafkapartition"),
        offset=int_header(headers, "ce-knativekafkaoffset"),
        key=headers.get("ce-key"),
        legacy_key=event_id,
        event_type=event_type,
        traceparent=trace[0],
        tracestate=trace[1],
    )


def record_key(headers: Mapping[str, str]) -> str | None:
    """The Kafka record key kafka-connector passed (``X-Kafka-Key-Enc: b64`` for bytes)."""
    key = headers.get("X-Kafka-Key")
    if key is None or headers.get("X-Kafka-Key-Enc", "").lower() != "b64":
        return key
    try:
        return base64.b64decode(key, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return key


def record_position(headers: Mapping[str, str]) -> tuple[int | None, int | None]:
    """The partition and offset kafka-connector names, when it does."""
    return int_header(headers, "X-Kafka-Partition"), int_header(headers, "X-Kafka-Offset")


def record_identity(topic: str, partition: int, offset: int) -> tuple[str, str]:
    """A plain record's identity, as a (source, id) pair: its topic, partition and offset."""
    return f"kafka:{topic}", f"{partition}/{offset}"


def _openfaas(headers: Mapping[str, str], raw: bytes) -> Delivery:
    topic = headers["X-Topic"]
    partition, offset = record_position(headers)
    record_type = headers.get("X-Kafka-Content-Type", "").split(";")[0].strip().lower()
    event_type = legacy = None
    trace: Trace = (None, None)
    if record_type == CLOUDEVENTS_JSON:  # the record is a structured CloudEvent
        source, event_id, data, event_type, trace = _structured(raw)
    elif headers.get("X-Kafka-Ce_specversion") and headers.get("X-Kafka-Ce_id"):
        source, event_id = headers.get("X-Kafka-Ce_source", ""), headers["X-Kafka-Ce_id"]
        if not source:
            raise DeliveryError("X-Kafka-Ce_source", "a CloudEvent record needs ce_source")
        data, event_type = decode_json(raw, "body"), headers.get("X-Kafka-Ce_type")
        trace = headers.get("X-Kafka-Ce_traceparent"), headers.get("X-Kafka-Ce_tracestate")
    elif partition is not None and offset is not None:  # a plain record
        source, event_id = record_identity(topic, partition, offset)
        data = decode_json(raw, "body")
        legacy = f"{topic}:{partition}:{offset}"  # what releases before 0.2 recorded
    else:  # cron-connector: no record behind the call
        return Delivery(OPENFAAS, topic, None, None, decode_json(raw, "body"))
    return Delivery(
        OPENFAAS,
        topic,
        source,
        event_id,
        data,
        partition=partition,
        offset=offset,
        key=record_key(headers),
        legacy_key=legacy or event_id,
        event_type=event_type,
        traceparent=trace[0],
        tracestate=trace[1],
    )


def parse(platform: str, headers: Mapping[str, str], raw: bytes) -> Delivery:
    """The delivery in a request of ``platform``'s shape; DeliveryError names what is wrong."""
    return _knative(headers, raw) if platform == KNATIVE else _openfaas(headers, raw)


def legacy_key(delivery: Delivery | None) -> str | None:
    """The key a delivery was recorded under before identities were (source, id) digests,
    when it differs from the new one: its first answer is still found there."""
    if delivery is None or delivery.legacy_key == delivery.idempotency_key:
        return None
    return delivery.legacy_key
