"""The event contracts in events/: the schema files are valid 2020-12 schemas, the samples
validate and agree with them, and the loader finds them (tests/unit/test_event_variants.py
has the valid and broken variants of each sample)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
from tests.unit.event_samples import CLOUDEVENT_TYPES, REPO_EVENTS, SAMPLES, apply, sample, setting

SCHEMAS = REPO_EVENTS / "schemas"

pytestmark = pytest.mark.usefixtures("repo_events_dir")


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
