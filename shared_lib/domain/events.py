"""Event envelopes: every event on Kafka is a CloudEvents 1.0 structured-mode JSON object."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from shared_lib.domain.model import Level, Movement, Order


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds") + "Z"


def cloud_event(
    event_type: str, source: str, subject: str, data: dict[str, Any], at: datetime
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": iso(at),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }


def stock_changed_data(
    movement: Movement,
    after: Level,
    d_on_hand: int,
    d_reserved: int,
    *,
    movement_id: int,
    reason: str | None,
    reference: str | None,
    order_id: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    return {
        **after.as_dict(),
        "movement": movement.value,
        "delta_on_hand": d_on_hand,
        "delta_reserved": d_reserved,
        "reason": reason,
        "reference": reference,
        "order_id": order_id,
        "idempotency_key": idempotency_key,
        "movement_id": movement_id,
    }


def stock_low_data(after: Level, reorder_point: int) -> dict[str, Any]:
    return {
        "sku": after.sku,
        "warehouse": after.warehouse,
        "available": after.available,
        "reorder_point": reorder_point,
    }


def order_data(order: Order) -> dict[str, Any]:
    data = {
        "order_id": order.order_id,
        "warehouse": order.warehouse,
        "status": order.status.value,
        "lines": [line.as_dict() for line in order.lines],
    }
    if order.status.value == "reserved":
        data["customer"] = order.customer
        data["hold_until"] = order.as_dict()["hold_until"]
    return data


MAX_REASON_CHARS = 2000
# a letter always fits a Kafka record: the payload beyond this is kept by claim check
MAX_EXCERPT_BYTES = 8 * 1024


def dead_letter(
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: str | None,
    payload: bytes,
    status: int | None,
    reason: str,
    payload_ref: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON object put on psi.dead-letter: where the message came from, why it failed,
    and the original bytes (as text when they are UTF-8, else base64). A payload longer
    than MAX_EXCERPT_BYTES is cut to an excerpt; ``payload_ref`` then names where the whole
    of it is kept, and ``payload_sha256`` lets a reader check what it fetches."""
    excerpt = payload[:MAX_EXCERPT_BYTES]
    doc: dict[str, Any] = {
        "reason": reason[:MAX_REASON_CHARS] or "rejected",
        "status": status or None,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    if len(excerpt) < len(payload):
        doc["truncated"] = True
        if payload_ref is not None:
            doc["payload_ref"] = payload_ref
    try:
        doc["payload"] = excerpt.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(excerpt) < len(payload) and exc.start >= len(excerpt) - 3:
            doc["payload"] = excerpt[: exc.start].decode("utf-8")  # a character cut in two
        else:
            doc["payload_base64"] = base64.b64encode(excerpt).decode("ascii")
    doc["failed_at"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc.update(extra)
    return doc
