"""Event envelopes: every event on Kafka is a CloudEvents 1.0 structured-mode JSON object."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared_lib.domain.model import Level, Movement, Order
from shared_lib.domain.trace import TraceContext


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds") + "Z"


def cloud_event(
    event_type: str,
    source: str,
    subject: str,
    data: dict[str, Any],
    at: datetime,
    trace: TraceContext | None = None,
) -> dict[str, Any]:
    """``trace``: the span of the request that caused it, as the CloudEvents
    distributed-tracing extension (``traceparent``, ``tracestate``)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": iso(at),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }
    if trace is not None:
        event.update(trace.attributes())
    return event


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
