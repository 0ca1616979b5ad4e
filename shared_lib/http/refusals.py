"""Deliveries refused for good: the dead letter a function writes itself where its platform
parks nothing (OpenFaaS), once per record, through the outbox."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import flask

from shared_lib import logs
from shared_lib.config import Settings
from shared_lib.http import metrics
from shared_lib.http.bodies import RAW_BODY
from shared_lib.http.delivery import identity_key, record_identity, record_key, record_position
from shared_lib.http.routes import Reply
from shared_lib.services.ports import Transactions

log = logs.get_logger(__name__)


@dataclass(frozen=True)
class Sender:
    """An authenticated platform delivery: what its final answer and dead letter need."""

    platform: str
    topic: str  # the route's own topic: the only one a letter may name


def _record_headers(request: flask.Request) -> dict[str, str]:
    """The record's own headers, as kafka-connector passes them (``X-Kafka-<name>``)."""
    envelope = ("partition", "offset", "key", "key-enc")
    return {
        name[len("X-Kafka-") :].lower(): value
        for name, value in request.headers.items()
        if name.lower().startswith("x-kafka-") and name[len("X-Kafka-") :].lower() not in envelope
    }


def write_dead_letter(
    request: flask.Request,
    sender: Sender,
    reply: Reply,
    *,
    function: str,
    settings: Settings,
    tx: Transactions,
) -> tuple[Reply, bool]:
    """Write the letter through the outbox with a record of the refusal, in one
    transaction: a record delivered again is answered as the first time, not parked
    twice (the answer, and whether this call parked it: then it is counted and logged).
    A payload too large for a letter is kept whole in the report store."""
    from shared_lib.adapters.reports import reports_from_settings
    from shared_lib.domain.dead_letters import MAX_EXCERPT_BYTES, dead_letter
    from shared_lib.topics import DEAD_LETTER

    payload = request.environ.get(RAW_BODY, b"")
    partition, offset = record_position(request.headers)
    record = None
    if partition is not None and offset is not None:
        record = identity_key(*record_identity(sender.topic, partition, offset))
    letter_id = str(uuid.uuid5(uuid.NAMESPACE_URL, record) if record else uuid.uuid4())
    ref = None
    if len(payload) > MAX_EXCERPT_BYTES:
        ref = reports_from_settings(settings).keep(
            f"dead-letters/{sender.topic}/{letter_id}", payload
        )
    document = dead_letter(
        topic=sender.topic,
        partition=partition,
        offset=offset,
        key=record_key(request.headers),
        payload=payload,
        status=reply.status,
        reason=json.dumps(reply.body) if isinstance(reply.body, dict) else str(reply.body),
        payload_ref=ref,
        function=function,
        id=letter_id,
        headers=_record_headers(request),
    )
    answer = {"status": reply.status, "body": reply.body}

    def park(store: Any) -> dict[str, Any] | None:
        if record is not None:
            prior = store.recall(record)
            if prior is not None:
                return dict(prior[1])
            store.remember(record, "dead-letter", "dead_letter", answer)
        store.add_event(DEAD_LETTER, document["key"] or "", document)
        return None

    first = tx.run(park)
    if first is not None:
        return Reply(int(first["status"]), first["body"]), False
    metrics.dead_letter(function, sender.topic)
    log.warning(
        "dead-lettered",
        topic=sender.topic,
        partition=partition,
        offset=offset,
        status=reply.status,
        payload_bytes=len(payload),
    )
    return reply, True
