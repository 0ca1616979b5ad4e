"""The event contracts in events/: schemas are valid, samples validate, broken variants fail."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, ValidationError

from psi_local import events_schema
from psi_local.events_schema import (
    ENVELOPE,
    EVENT_TYPES,
    IN_TYPES,
    OUT_TYPES,
    events_dir,
    load_schema,
    request_body,
    validate_event,
)

REPO_EVENTS = Path(__file__).resolve().parents[2] / "events"
SCHEMAS = REPO_EVENTS / "schemas"
SAMPLES = REPO_EVENTS / "samples"
CLOUDEVENT_TYPES = tuple(t for t in OUT_TYPES if t != "psi.dead-letter")
ORDER_TYPES = ("psi.order.created", "psi.order.cancelled", "psi.order.shipped", "psi.order.expired")

Doc = dict[str, Any]
Mutation = Callable[[Doc], Any]


@pytest.fixture(autouse=True)
def _repo_events_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(events_schema.ENV_VAR, raising=False)


def sample(event_type: str) -> Doc:
    return json.loads((SAMPLES / f"{event_type}.json").read_text("utf-8"))


def wrap(event_type: str, body: Doc) -> Doc:
    """An in-type body as the data of a CloudEvent sent by some other system."""
    return {
        "specversion": "1.0",
        "id": "req-0001",
        "source": "urn:erp:purchasing",
        "type": event_type,
        "time": "2025-03-14T09:00:00+01:00",
        "datacontenttype": "application/json",
        "data": body,
    }


# --- helpers to build variants -------------------------------------------------------------


def setting(path: str, value: Any) -> Mutation:
    """Set the member at a dotted path (list indexes as numbers), creating nothing else."""

    def mutate(doc: Doc) -> None:
        *parents, last = _steps(path)
        target: Any = doc
        for step in parents:
            target = target[step]
        target[last] = copy.deepcopy(value)

    return mutate


def deleting(path: str) -> Mutation:
    def mutate(doc: Doc) -> None:
        *parents, last = _steps(path)
        target: Any = doc
        for step in parents:
            target = target[step]
        del target[last]

    return mutate


def combined(*mutations: Mutation) -> Mutation:
    def mutate(doc: Doc) -> None:
        for mutation in mutations:
            mutation(doc)

    return mutate


def replacing(value: Any) -> Mutation:
    """Replace the whole document (the mutation's return value wins)."""
    return lambda _doc: copy.deepcopy(value)


def _steps(path: str) -> list[str | int]:
    return [int(step) if step.isdigit() else step for step in path.split(".")]


def apply(event_type: str, mutation: Mutation) -> Any:
    doc = sample(event_type)
    result = mutation(doc)
    assert result is None or isinstance(result, dict | list), "mutations edit in place"
    return doc if result is None else result


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


# --- the files themselves ------------------------------------------------------------------


def _schema_files() -> list[Path]:
    return sorted(SCHEMAS.glob("*.schema.json"))


@pytest.mark.parametrize("path", _schema_files(), ids=lambda p: p.name)
def test_schema_is_valid_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    name = path.name.removesuffix(".schema.json")
    assert schema["$id"] == f"https://psi-functions.dev/events/{name}.schema.json"
    assert schema["description"].strip()


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_sample_validates(event_type: str) -> None:
    validate_event(event_type, sample(event_type))


@pytest.mark.parametrize("event_type", CLOUDEVENT_TYPES)
def test_out_sample_is_consistent(event_type: str) -> None:
    """What the schemas cannot say: type/subject/data agree, balances add up."""
    doc = sample(event_type)
    assert doc["type"] == event_type
    data = doc["data"]
    expected_subject = data.get("sku") or data.get("order_id") or data.get("run_id")
    if event_type == "psi.stock.changed":
        assert data["available"] == data["on_hand"] - data["reserved"]
    assert doc["subject"] == expected_subject
    validate_event(ENVELOPE, doc)


def test_event_types_match_files_on_disk() -> None:
    schema_names = {p.name.removesuffix(".schema.json") for p in _schema_files()}
    sample_names = {p.name.removesuffix(".json") for p in SAMPLES.glob("*.json")}
    assert schema_names == set(EVENT_TYPES) | {ENVELOPE}
    assert sample_names == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == 11
    assert set(OUT_TYPES) | set(IN_TYPES) == set(EVENT_TYPES)
    assert not set(OUT_TYPES) & set(IN_TYPES)


def test_schema_type_literal_matches_name() -> None:
    for event_type in CLOUDEVENT_TYPES:
        assert load_schema(event_type)["properties"]["type"] == {"const": event_type}


# --- the loader ----------------------------------------------------------------------------


def test_events_dir_defaults_to_repository() -> None:
    assert events_dir() == REPO_EVENTS


def test_events_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied = tmp_path / "events"
    shutil.copytree(REPO_EVENTS, copied)
    schema_path = copied / "schemas" / "psi.stock.low.schema.json"
    schema = json.loads(schema_path.read_text("utf-8"))
    schema["$defs"]["data"]["properties"]["available"] = {"type": "integer", "minimum": 5}
    schema_path.write_text(json.dumps(schema), "utf-8")
    monkeypatch.setenv(events_schema.ENV_VAR, str(copied))
    assert events_dir() == copied
    validate_event("psi.stock.low", sample("psi.stock.low"))  # available 8
    with pytest.raises(ValidationError):
        validate_event("psi.stock.low", apply("psi.stock.low", setting("data.available", 4)))
    monkeypatch.delenv(events_schema.ENV_VAR)
    validate_event("psi.stock.low", apply("psi.stock.low", setting("data.available", 4)))


def test_events_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(events_schema.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="PSI_EVENTS_DIR"):
        events_dir()


def test_load_schema_returns_a_copy() -> None:
    schema = load_schema("psi.stock.low")
    schema["description"] = "changed"
    assert load_schema("psi.stock.low")["description"] != "changed"
    assert load_schema(ENVELOPE)["$id"].endswith("/cloudevent.schema.json")


def test_unknown_type_rejected() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        load_schema("psi.nope")
    with pytest.raises(ValueError, match="unknown event type"):
        validate_event("psi.nope", {})
    with pytest.raises(ValueError, match="not a request type"):
        request_body("psi.stock.low", sample("psi.stock.low"))
