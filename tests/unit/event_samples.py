"""The event documents the schema tests start from (``sample``, ``wrap``) and the mutations
that build their variants (``setting``, ``deleting``, ``combined``, ``replacing``, ``apply``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psi_local.events_schema import OUT_TYPES

REPO_EVENTS = Path(__file__).resolve().parents[2] / "events"
SAMPLES = REPO_EVENTS / "samples"
CLOUDEVENT_TYPES = tuple(t for t in OUT_TYPES if t != "psi.dead-letter")

Doc = dict[str, Any]
Mutation = Callable[[Doc], Any]


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
