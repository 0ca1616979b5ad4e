"""The event contracts in events/: valid variants of each sample validate, broken variants
fail, and a request body is also accepted as the data of a CloudEvent."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import ValidationError

from psi_local.events_schema import EVENT_TYPES, IN_TYPES, load_schema, request_body, validate_event
from tests.unit.event_samples import (
    CLOUDEVENT_TYPES,
    Mutation,
    apply,
    combined,
    deleting,
    replacing,
    sample,
    setting,
    wrap,
)

ORDER_TYPES = ("psi.order.created", "psi.order.cancelled", "psi.order.shipped", "psi.order.expired")

pytestmark = pytest.mark.usefixtures("repo_events_dir")


# --- valid variants ------------------------------------------------------------------------

VALID: list[tuple[str, str, Mutation]] = [
    ("psi.stock.changed", "nulls", setting("data.reason", None)),
    (
        "psi.stock.changed",
        "all optional null",
        lambda d: d["data"].update(
            reason=None, reference=None, order_id=None, idempotency_key=None
        ),
    ),
    (
        "psi.stock.changed",
        "negative deltas",
        lambda d: d["data"].update(movement="ship", delta_on_hand=-3, delta_reserved=-3),
    ),
    ("psi.stock.changed", "utc offset form", setting("time", "2025-03-14T09:26:53.589123+00:00")),
    ("psi.stock.changed", "extension attribute", setting("partitionkey", "SKU-1")),
    (
        "psi.stock.changed",
        "trace context",
        lambda d: d.update(
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            tracestate="rojo=00f067aa0ba902b7",
        ),
    ),
    (
        "psi.stock.changed",
        "dataschema",
        setting("dataschema", "https://psi-functions.dev/events/psi.stock.changed.schema.json"),
    ),
    (
        "psi.stock.changed",
        "zero balances",
        lambda d: d["data"].update(on_hand=0, reserved=0, available=0),
    ),
    (
        "psi.stock.changed",
        "sku with separators",
        combined(
            setting("subject", "acme:EU-tee-42.L_x"), setting("data.sku", "acme:EU-tee-42.L_x")
        ),
    ),
    ("psi.stock.changed", "64-char sku", lambda d: d["data"].update(sku="S" * 64)),
    ("psi.order.created", "customer null", setting("data.customer", None)),
    (
        "psi.order.created",
        "repeated sku",
        setting("data.lines", [{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-1", "qty": 2}]),
    ),
    ("psi.reconcile.completed", "no report", setting("data.report_uri", None)),
    (
        "psi.dead-letter",
        "binary payload",
        combined(
            deleting("payload"),
            lambda d: d.update(payload_base64="/9j/4AAQSkZJRg==", key=None, status=None),
        ),
    ),
    ("psi.stock-out.requested", "ship order", replacing({"order_id": "SO-2025-000731"})),
    ("psi.stock-out.requested", "no reference", deleting("reference")),
    (
        "psi.stock-out.requested",
        "ship order with reference",
        replacing({"order_id": "SO-2025-000731", "reference": "DN-5521"}),
    ),
    ("psi.stock-out.requested", "empty reason", setting("reason", "")),
    ("psi.stock-in.requested", "max qty", setting("lines.0.qty", 1_000_000_000)),
    (
        "psi.stock-in.requested",
        "lines only",
        replacing({"warehouse": "WH-EAST", "lines": [{"sku": "SKU-1", "qty": 1}]}),
    ),
    (
        "psi.stock-in.requested",
        "500 lines",
        setting("lines", [{"sku": f"SKU-{i}", "qty": 1} for i in range(500)]),
    ),
    ("psi.reconcile.requested", "empty", replacing({})),
    ("psi.reconcile.requested", "repair only", replacing({"repair": False})),
]


@pytest.mark.parametrize(
    ("event_type", "mutation"),
    [pytest.param(t, m, id=f"{t}-{name}") for t, name, m in VALID],
)
def test_valid_variant(event_type: str, mutation: Mutation) -> None:
    validate_event(event_type, apply(event_type, mutation))


@pytest.mark.parametrize("event_type", IN_TYPES)
def test_in_type_accepted_as_cloudevent(event_type: str) -> None:
    body = sample(event_type)
    validate_event(event_type, wrap(event_type, body))
    assert request_body(event_type, wrap(event_type, body)) == body
    assert request_body(event_type, body) == body


# --- broken variants -----------------------------------------------------------------------


def _cloudevent_breaks(event_type: str) -> list[tuple[str, Mutation]]:
    data_required = load_schema(event_type)["$defs"]["data"]["required"]
    breaks: list[tuple[str, Mutation]] = [
        ("missing id", deleting("id")),
        ("missing time", deleting("time")),
        ("missing subject", deleting("subject")),
        ("missing datacontenttype", deleting("datacontenttype")),
        ("missing data", deleting("data")),
        ("wrong type literal", setting("type", "psi.something.else")),
        (
            "type of another event",
            setting("type", next(t for t in CLOUDEVENT_TYPES if t != event_type)),
        ),
        ("wrong specversion", setting("specversion", "0.3")),
        ("id not a uuid", setting("id", "evt-1")),
        ("source outside /psi", setting("source", "urn:somewhere")),
        ("time not utc", setting("time", "2025-03-14T10:26:53+01:00")),
        ("time without zone", setting("time", "2025-03-14T09:26:53")),
        ("time trailing newline", setting("time", "2025-03-14T09:26:53Z\n")),
        ("wrong content type", setting("datacontenttype", "text/plain")),
        ("data_base64 instead", lambda d: d.update(data_base64="e30=")),
        ("bad extension name", setting("Trace_Parent", "x")),
        ("object extension", setting("traceparent", {"a": 1})),
        ("short traceparent", setting("traceparent", "00-0af7-b7ad-01")),
        (
            "upper-case traceparent",
            setting("traceparent", "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"),
        ),
        (
            "all-zero trace id",
            setting("traceparent", f"00-{'0' * 32}-b7ad6b7169203331-01"),
        ),
        (
            "tracestate alone",
            combined(
                setting("traceparent", "-"),  # whether the sample has one or not: now it has none
                deleting("traceparent"),
                setting("tracestate", "rojo=00f067aa0ba902b7"),
            ),
        ),
        ("extra data property", setting("data.extra", 1)),
        ("data not an object", setting("data", [])),
    ]
    breaks += [(f"missing data.{field}", deleting(f"data.{field}")) for field in data_required]
    return breaks


def _order_breaks(event_type: str) -> list[tuple[str, Mutation]]:
    return [
        ("negative qty", setting("data.lines.0.qty", -1)),
        ("zero qty", setting("data.lines.0.qty", 0)),
        ("qty above 10^9", setting("data.lines.0.qty", 1_000_000_001)),
        ("fractional qty", setting("data.lines.0.qty", 1.5)),
        ("string qty", setting("data.lines.0.qty", "3")),
        ("no lines", setting("data.lines", [])),
        ("line without sku", deleting("data.lines.0.sku")),
        ("extra line property", setting("data.lines.0.price", 9.99)),
        (
            "wrong status",
            setting("data.status", "reserved" if event_type != "psi.order.created" else "shipped"),
        ),
        ("bad order id", setting("data.order_id", "-starts-with-dash")),
        ("long warehouse", setting("data.warehouse", "W" * 33)),
        ("subject not an order id", setting("subject", "SO 1")),
        ("sku trailing newline", setting("data.lines.0.sku", "SKU-10042\n")),
    ]


SPECIFIC: dict[str, list[tuple[str, Mutation]]] = {
    "psi.stock.changed": [
        ("negative on_hand", setting("data.on_hand", -1)),
        ("negative available", setting("data.available", -5)),
        ("unknown movement", setting("data.movement", "teleport")),
        ("string delta", setting("data.delta_on_hand", "3")),
        ("fractional reserved", setting("data.reserved", 1.5)),
        ("movement_id zero", setting("data.movement_id", 0)),
        ("sku too long", setting("data.sku", "S" * 65)),
        ("sku trailing newline", setting("data.sku", "SKU-10042\n")),
        ("empty sku", setting("data.sku", "")),
        ("reason too long", setting("data.reason", "r" * 201)),
        ("idempotency key too long", setting("data.idempotency_key", "k" * 201)),
        ("empty idempotency key", setting("data.idempotency_key", "")),
        ("bad order id", setting("data.order_id", "SO 1")),
        ("subject with space", setting("subject", "SKU 10042")),
    ],
    "psi.stock.low": [
        ("negative available", setting("data.available", -1)),
        ("null reorder point", setting("data.reorder_point", None)),
        ("bool available", setting("data.available", True)),
    ],
    "psi.order.created": [
        ("customer too long", setting("data.customer", "c" * 101)),
        ("bad hold_until", setting("data.hold_until", "tomorrow")),
        ("501 lines", setting("data.lines", [{"sku": "S", "qty": 1}] * 501)),
    ],
    "psi.reconcile.completed": [
        ("negative checked", setting("data.checked", -1)),
        ("string drift", setting("data.drift_found", "2")),
        ("numeric report uri", setting("data.report_uri", 42)),
        ("empty run key", setting("data.run_key", "")),
    ],
    "psi.dead-letter": [
        ("missing reason", deleting("reason")),
        ("missing key", deleting("key")),
        ("missing failed_at", deleting("failed_at")),
        ("both payload and payload_base64", setting("payload_base64", "e30=")),
        ("neither payload", deleting("payload")),
        ("negative offset", setting("offset", -1)),
        ("negative partition", setting("partition", -1)),
        ("string status", setting("status", "500")),
        ("extra property", setting("attempt", 2)),
        ("bad base64", combined(deleting("payload"), setting("payload_base64", "not base64!"))),
        ("bad failed_at", setting("failed_at", "2025-03-14 09:44:18")),
        ("empty topic", setting("topic", "")),
        ("wrong type literal: is a CloudEvent", replacing(sample("psi.stock.low"))),
    ],
    "psi.stock-in.requested": [
        ("missing warehouse", deleting("warehouse")),
        ("missing lines", deleting("lines")),
        ("negative qty", setting("lines.0.qty", -1)),
        ("zero qty", setting("lines.0.qty", 0)),
        ("qty above 10^9", setting("lines.0.qty", 1_000_000_001)),
        ("fractional qty", setting("lines.0.qty", 2.5)),
        ("no lines", setting("lines", [])),
        ("501 lines", setting("lines", [{"sku": "S", "qty": 1}] * 501)),
        ("reason too long", setting("reason", "r" * 201)),
        ("reference too long", setting("reference", "r" * 101)),
        ("null reason", setting("reason", None)),
        ("extra property", setting("order_id", "SO-1")),
        ("extra line property", setting("lines.0.unit", "pcs")),
        ("bad sku", setting("lines.0.sku", "bad sku")),
        ("not an object", replacing([])),
    ],
    "psi.stock-out.requested": [
        ("direct issue without reason", deleting("reason")),
        ("missing lines", deleting("lines")),
        ("negative qty", setting("lines.0.qty", -1)),
        ("extra property", setting("priority", "high")),
        ("both shapes", setting("order_id", "SO-2025-000731")),
        ("order plus warehouse", replacing({"order_id": "SO-1", "warehouse": "WH-EAST"})),
        ("order plus reason", replacing({"order_id": "SO-1", "reason": "x"})),
        ("bad order id", replacing({"order_id": ""})),
        ("empty body", replacing({})),
    ],
    "psi.reconcile.requested": [
        ("string repair", setting("repair", "yes")),
        ("empty run key", setting("run_key", "")),
        ("run key too long", setting("run_key", "k" * 101)),
        ("extra property", setting("dry_run", True)),
        ("not an object", replacing(["nightly"])),
    ],
}


def _breaks() -> list[Any]:
    params = []
    for event_type in EVENT_TYPES:
        variants = list(SPECIFIC.get(event_type, []))
        if event_type in CLOUDEVENT_TYPES:
            variants = _cloudevent_breaks(event_type) + variants
        if event_type in ORDER_TYPES:
            variants += _order_breaks(event_type)
        params += [pytest.param(event_type, m, id=f"{event_type}-{name}") for name, m in variants]
    return params


@pytest.mark.parametrize(("event_type", "mutation"), _breaks())
def test_broken_variant_fails(event_type: str, mutation: Mutation) -> None:
    doc = apply(event_type, mutation)
    assert doc != sample(event_type)
    with pytest.raises(ValidationError):
        validate_event(event_type, doc)


IN_WRAPPED_BREAKS: list[tuple[str, Mutation]] = [
    ("wrong type literal", setting("type", "psi.stock-out.requested")),
    ("missing id", deleting("id")),
    ("missing data", deleting("data")),
    ("wrong specversion", setting("specversion", "1.1")),
    ("bad extension name", setting("X-Trace", "1")),
    ("negative qty in data", setting("data.lines.0.qty", -1)),
    ("extra data property", setting("data.extra", 1)),
]


@pytest.mark.parametrize("mutation", [pytest.param(m, id=name) for name, m in IN_WRAPPED_BREAKS])
def test_broken_wrapped_request_fails(mutation: Mutation) -> None:
    event_type = "psi.stock-in.requested"
    doc = wrap(event_type, sample(event_type))
    mutation(doc)
    with pytest.raises(ValidationError):
        validate_event(event_type, doc)


def test_wrapped_error_path_points_into_data() -> None:
    doc = wrap("psi.stock-in.requested", sample("psi.stock-in.requested"))
    doc["data"]["lines"][1]["qty"] = 0
    with pytest.raises(ValidationError) as caught:
        request_body("psi.stock-in.requested", doc)
    assert list(caught.value.absolute_path) == ["data", "lines", 1, "qty"]
