"""JSON Schemas of the events on Kafka: load them and validate documents against them.

The schemas live in ``<repository root>/events/schemas/<type>.schema.json`` (draft 2020-12);
``PSI_EVENTS_DIR`` points elsewhere (e.g. a packaged copy). ``$ref``s between them are
resolved from that directory only, never over the network.

Out-types (``psi.stock.changed`` ...) are whole CloudEvents. In-types (``*.requested``) are
request bodies; :func:`validate_event` also accepts them wrapped as the ``data`` of a
CloudEvent of that type. ``psi.dead-letter`` is a plain JSON object.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "ENVELOPE",
    "EVENT_TYPES",
    "IN_TYPES",
    "OUT_TYPES",
    "events_dir",
    "load_schema",
    "request_body",
    "validate_event",
]

ENV_VAR = "PSI_EVENTS_DIR"
ENVELOPE = "cloudevent"
SCHEMA_SUFFIX = ".schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

OUT_TYPES: tuple[str, ...] = (
    "psi.stock.changed",
    "psi.stock.low",
    "psi.order.created",
    "psi.order.cancelled",
    "psi.order.shipped",
    "psi.order.expired",
    "psi.reconcile.completed",
    "psi.dead-letter",
)
IN_TYPES: tuple[str, ...] = (
    "psi.stock-in.requested",
    "psi.stock-out.requested",
    "psi.reconcile.requested",
)
EVENT_TYPES: tuple[str, ...] = OUT_TYPES + IN_TYPES

_BASE_URI = "https://psi-functions.dev/events/"
_INBOUND_REF = f"{_BASE_URI}{ENVELOPE}{SCHEMA_SUFFIX}#/$defs/inbound"


def events_dir() -> Path:
    """The ``events/`` directory: ``$PSI_EVENTS_DIR`` if set, else ``<repo root>/events``."""
    configured = os.environ.get(ENV_VAR)
    directory = (
        Path(configured) if configured else Path(__file__).resolve().parent.parent / "events"
    )
    if not (directory / "schemas").is_dir():
        raise FileNotFoundError(
            f"no event schemas in {directory / 'schemas'} (set {ENV_VAR} to the events/ directory)"
        )
    return directory


def _check_type(event_type: str) -> None:
    if event_type not in EVENT_TYPES and event_type != ENVELOPE:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")


@lru_cache(maxsize=8)
def _schemas(directory: Path) -> dict[str, dict[str, Any]]:
    """Every ``*.schema.json`` under ``directory/schemas``, by name without the suffix."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((directory / "schemas").glob(f"*{SCHEMA_SUFFIX}")):
        found[path.name.removesuffix(SCHEMA_SUFFIX)] = json.loads(path.read_text("utf-8"))
    return found


def _without_dialect(schema: dict[str, Any]) -> dict[str, Any]:
    # jsonschema picks the validator class from a ``$schema`` it meets behind a ``$ref``, which
    # would drop the strict ``pattern`` below; every schema here is 2020-12, so strip it.
    dialect = schema.get("$schema", DIALECT)
    if dialect != DIALECT:
        raise ValueError(f"{schema.get('$id')}: $schema must be {DIALECT}, not {dialect}")
    return {key: value for key, value in schema.items() if key != "$schema"}


@lru_cache(maxsize=8)
def _registry(directory: Path) -> Registry:
    # No ``retrieve`` callable: an unknown $ref fails instead of reaching for the network.
    resources = [
        (schema["$id"], Resource(_without_dialect(schema), specification=DRAFT202012))
        for schema in _schemas(directory).values()
        if "$id" in schema
    ]
    return Registry().with_resources(resources).crawl()


def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262, where a final ``$`` only matches at the very end;
    # Python's also matches before a trailing newline, which would let "SKU-1\n" through.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


_compiled_pattern = lru_cache(maxsize=256)(_ecma_pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


@lru_cache(maxsize=64)
def _validator(directory: Path, name: str) -> Any:
    schemas = _schemas(directory)
    if name not in schemas:
        raise FileNotFoundError(f"no schema {name}{SCHEMA_SUFFIX} in {directory / 'schemas'}")
    return _Validator(_without_dialect(schemas[name]), registry=_registry(directory))


@lru_cache(maxsize=8)
def _inbound_validator(directory: Path) -> Any:
    return _Validator({"$ref": _INBOUND_REF}, registry=_registry(directory))


def load_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of ``event_type`` (or ``"cloudevent"``, the envelope), as a fresh dict."""
    _check_type(event_type)
    directory = events_dir()
    schemas = _schemas(directory)
    if event_type not in schemas:
        raise FileNotFoundError(f"no schema {event_type}{SCHEMA_SUFFIX} in {directory / 'schemas'}")
    return copy.deepcopy(schemas[event_type])


def _raise_best(errors: Iterator[ValidationError], prefix: str | None = None) -> None:
    error = best_match(errors)
    if error is None:
        return
    if prefix is not None:
        error.path.appendleft(prefix)
    raise error


def validate_event(event_type: str, document: Any) -> None:
    """Raise :class:`jsonschema.ValidationError` unless ``document`` is a valid ``event_type``.

    For in-types (``*.requested``) the document is either the request body itself or a
    CloudEvents 1.0 envelope (recognised by its ``specversion`` member) of that type whose
    ``data`` is the body; errors in the body then carry ``data`` as the first path element.
    """
    _check_type(event_type)
    directory = events_dir()
    validator = _validator(directory, event_type)
    if event_type in IN_TYPES and isinstance(document, dict) and "specversion" in document:
        _raise_best(_inbound_validator(directory).iter_errors(document))
        if document["type"] != event_type:
            raise ValidationError(
                f"{document['type']!r} is not the expected event type {event_type!r}",
                path=["type"],
                validator="const",
                validator_value=event_type,
                instance=document["type"],
            )
        _raise_best(validator.iter_errors(document["data"]), prefix="data")
        return
    _raise_best(validator.iter_errors(document))


def request_body(event_type: str, document: Any) -> dict[str, Any]:
    """Validate an in-type document (raw body or CloudEvent) and return the request body."""
    if event_type not in IN_TYPES:
        raise ValueError(f"{event_type!r} is not a request type; known: {', '.join(IN_TYPES)}")
    validate_event(event_type, document)
    if "specversion" in document:
        return dict(document["data"])
    return dict(document)
