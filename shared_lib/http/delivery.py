"""How a request arrived: a plain HTTP call, or a Kafka message delivered over HTTP.

- Knative KafkaSource: CloudEvents binary mode (``ce-id``, ``ce-source`` ... headers, the
  message value as body) or structured mode (``application/cloudevents+json``).
- OpenFaaS kafka-connector: the raw message value, topic in ``X-Topic``.

A delivery's idempotency key is the CloudEvent id (so a redelivered message has one effect);
a raw message without one falls back to ``Idempotency-Key`` or its topic/partition/offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLOUDEVENTS_JSON = "application/cloudevents+json"


@dataclass(frozen=True)
class Delivery:
    topic: str | None
    event_id: str | None
    source: str | None
    data: Any


def _topic_of_source(source: str | None) -> str | None:
    """KafkaSource sources look like /apis/v1/namespaces/ns/kafkasources/name#topic."""
    if not source:
        return None
    if "#" in source:
        return source.rsplit("#", 1)[1] or None
    tail = source.rstrip("/").rsplit("/", 1)[-1]
    return tail if tail.startswith("psi.") else None


def _unwrap(document: Any) -> tuple[Any, str | None, str | None]:
    """A message value that is itself a structured CloudEvent carries its own id."""
    if isinstance(document, dict) and "specversion" in document and "data" in document:
        return document["data"], document.get("id"), document.get("source")
    return document, None, None


def classify(headers: Mapping[str, str], document: Any) -> Delivery | None:
    """None for a plain HTTP call; else what the event says about itself."""
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type == CLOUDEVENTS_JSON:
        if not isinstance(document, dict):
            return Delivery(None, None, None, document)
        source = document.get("source")
        topic = headers.get("X-Topic") or _topic_of_source(source) or document.get("type")
        return Delivery(topic, document.get("id"), source, document.get("data"))
    if headers.get("ce-id"):
        data, inner_id, _ = _unwrap(document)
        source = headers.get("ce-source")
        topic = headers.get("X-Topic") or _topic_of_source(source)
        return Delivery(topic, inner_id or headers["ce-id"], source, data)
    if headers.get("X-Topic"):
        data, inner_id, source = _unwrap(document)
        event_id = inner_id
        if event_id is None and headers.get("X-Kafka-Partition") and headers.get("X-Kafka-Offset"):
            event_id = (
                f"{headers['X-Topic']}:{headers['X-Kafka-Partition']}:{headers['X-Kafka-Offset']}"
            )
        return Delivery(headers["X-Topic"], event_id, source, data)
    return None
