"""psi openapi: one document of every function, merged without clashes (no servers needed)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel

from shared_lib import cli
from shared_lib.cli.base import CommandError
from shared_lib.cli.openapi import merged
from shared_lib.http.routes import Reply, Route


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No PSI_* setting of the machine leaks in: no API keys are configured either."""
    for name in list(os.environ):
        if name.startswith("PSI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PSI_SECRETS_DIR", str(tmp_path / "secrets"))
    yield


def psi(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_psi_openapi_prints_one_valid_document_of_every_function(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = psi(capsys, "openapi")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    validate(doc)
    assert doc["servers"][0]["url"] == "/function"
    assert {path.split("/")[1] for path in doc["paths"]} == {
        "catalog",
        "create-order",
        "reconcile",
        "stock-in",
        "stock-out",
        "stock-query",
    }
    assert doc["paths"]["/create-order"]["post"]["operationId"] == "createOrder_place"
    assert "get" in doc["paths"]["/stock-query/levels/{sku}"]
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for item in doc["paths"].values():  # every reference resolves in the merged components
        for ref in _refs(item):
            assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"]
    assert "PSI_AUTH_DISABLED" not in os.environ, "loading the functions left auth off"


def test_psi_openapi_writes_the_same_document_to_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "psi.json"
    code, out, _ = psi(capsys, "openapi", "--output", str(target))
    assert (code, out) == (0, "")
    _, printed, _ = psi(capsys, "openapi")
    assert json.loads(target.read_text()) == json.loads(printed)


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, sub in value.items():
            if key == "$ref":
                yield sub
            else:
                yield from _refs(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _refs(sub)


def _app(name: str, body: type[BaseModel], operation_id: str = "put") -> SimpleNamespace:
    route = Route(
        "PUT",
        "/things/{id}",
        lambda call: Reply(200, {}),
        scope="stock:write",
        summary="A thing",
        body=body,
        response="Warehouse",
        operation_id=operation_id,
    )
    return SimpleNamespace(name=name, description="", routes=[route])


def test_two_schemas_of_one_name_fail_loudly() -> None:
    class Thing(BaseModel):
        name: str

    first = Thing

    class Thing(BaseModel):  # type: ignore[no-redef]
        name: int

    assert merged([_app("one", first), _app("two", first, "other")])["paths"]
    with pytest.raises(CommandError, match="two different schemas named 'Thing'"):
        merged([_app("one", first), _app("two", Thing, "other")])


def test_an_operation_id_taken_twice_fails_loudly() -> None:
    class Thing(BaseModel):
        name: str

    with pytest.raises(CommandError, match="operation id one_put"):
        merged([_app("one", Thing), _app("one", Thing)])
