"""The CloudEvent a Knative KafkaSource makes of a Kafka record, and the record its
dead-letter sink (a KafkaSink in binary mode) writes for an event that failed
(knative-extensions/eventing-kafka-broker; docs/platform-contracts.md has the rules and their
sources):

* a record that is a CloudEvent by the Kafka binding (``content-type:
  application/cloudevents+json``, or ``ce_specversion`` headers) is forwarded as that
  event; any other record becomes ``id partition:<p>/offset:<o>``, ``source
  /apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>``, ``type dev.knative.kafka.event``,
  with ``key``/``partitionkey`` and ``kafkaheader<name>`` extensions;
* always sent in binary mode, with the ``knativekafkapartition``/``knativekafkaoffset``
  extensions;
* the dead letter carries ``ce_`` headers plus ``knativeerrordest``, ``knativeerrorcode``,
  ``knativeerrordata``, and the event's data as value.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from shared_lib.adapters.kafka import Headers, Record
from shared_lib.http.delivery import CLOUDEVENTS_JSON

CE_TYPE = "dev.knative.kafka.event"
ERROR_DATA_MAX_BYTES = 1024  # knativeerrordata: the answer's first KiB (RecordDispatcherImpl)


def _ce_header_value(text: str) -> str:
    # CloudEvents HTTP binding: percent-encode space, '"', '%' and non-printable-ASCII
    out = []
    for ch in text:
        if 0x21 <= ord(ch) <= 0x7E and ch not in '"%':
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _header(record: Record, name: str) -> bytes | None:
    for key, raw in record.headers:
        if key.lower() == name:
            return raw
    return None


@dataclass(frozen=True)
class Event:
    """A CloudEvent as the dispatcher holds it: attributes and extensions, and its data."""

    attributes: dict[str, str]
    data: bytes

    def http(self) -> tuple[bytes, dict[str, str]]:
        """Binary-mode HTTP: ``ce-<attr>`` headers, ``datacontenttype`` as Content-Type."""
        headers = {}
        for name, value in self.attributes.items():
            if name == "datacontenttype":
                headers["Content-Type"] = value
            else:
                headers[f"ce-{name}"] = _ce_header_value(value)
        return self.data, headers

    def kafka(self) -> tuple[bytes, Headers]:
        """What a KafkaSink in binary content mode writes: ``ce_<attr>`` headers, the
        ``datacontenttype`` as ``content-type``, the data as value."""
        headers: Headers = []
        for name, value in self.attributes.items():
            header = "content-type" if name == "datacontenttype" else f"ce_{name}"
            headers.append((header, value.encode("utf-8")))
        return self.data, headers


def _structured_event(value: bytes) -> Event | None:
    """The event in a structured-mode record; None when it cannot be read (the dispatcher
    then wraps the record as it would any other)."""
    try:
        document = json.loads(value)
        if not isinstance(document, dict) or not document.get("id") or not document.get("source"):
            return None
        attributes = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in document.items()
            if k not in ("data", "data_base64")
        }
        for text in attributes.values():
            text.encode("utf-8")
        if "data_base64" in document:
            data = base64.b64decode(str(document["data_base64"]))
        elif "data" in document:
            attributes.setdefault("datacontenttype", "application/json")
            payload = document["data"]
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        else:
            data = b""
    except (ValueError, RecursionError, UnicodeError):
        return None
    return Event(attributes, data)


def kafka_event(record: Record, namespace: str, source: str) -> Event:
    """The CloudEvent a KafkaSource makes of ``record`` (see the module doc)."""
    content_type = (_header(record, "content-type") or b"").decode("latin-1").lower()
    event = None
    if content_type.startswith(CLOUDEVENTS_JSON):
        event = _structured_event(record.value)
    elif _header(record, "ce_specversion") is not None:
        attributes = {
            name[3:].lower(): raw.decode("utf-8", "replace")
            for name, raw in record.headers
            if name.lower().startswith("ce_") and len(name) > 3
        }
        if content_type:
            attributes["datacontenttype"] = content_type
        event = Event(attributes, record.value)
    if event is None:  # not a CloudEvent (or not a readable one): the dispatcher wraps it
        attributes = {
            "specversion": "1.0",
            "id": f"partition:{record.partition}/offset:{record.offset}",
            "source": f"/apis/v1/namespaces/{namespace}/kafkasources/{source}#{record.topic}",
            "type": CE_TYPE,
            "subject": f"partition:{record.partition}#{record.offset}",
        }
        if record.timestamp is not None:
            moment = datetime.fromtimestamp(record.timestamp / 1000, UTC)
            attributes["time"] = moment.isoformat().replace("+00:00", "Z")
        if record.key is not None:
            key = record.key.decode("utf-8", "replace")
            attributes["key"] = attributes["partitionkey"] = key
        for name, raw in record.headers:
            if name.lower() == "content-type":
                attributes["datacontenttype"] = raw.decode("utf-8", "replace").lower()
            else:
                clean = "".join(c for c in name.lower() if c.isascii() and c.isalnum())
                attributes[f"kafkaheader{clean}"] = raw.decode("utf-8", "replace")
        event = Event(attributes, record.value)
    event.attributes["knativekafkapartition"] = str(record.partition)
    event.attributes["knativekafkaoffset"] = str(record.offset)
    return event


def dead_letter_record(
    event: Event, *, url: str, status: int, answer: str
) -> tuple[bytes, Headers, str | None]:
    """The record the deadLetterSink (a binary-mode KafkaSink) writes for a failed event:
    value, headers and key (its ``partitionkey``)."""
    attributes = dict(event.attributes)
    attributes["knativeerrordest"] = url
    if status:
        attributes["knativeerrorcode"] = str(status)
        data = answer.encode("utf-8")[:ERROR_DATA_MAX_BYTES]
        if data:
            attributes["knativeerrordata"] = base64.b64encode(data).decode("ascii")
    value, headers = Event(attributes, event.data).kafka()
    return value, headers, attributes.get("partitionkey")
