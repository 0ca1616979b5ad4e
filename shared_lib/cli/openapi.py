"""psi openapi: one OpenAPI document of every function, for generating one client.

Each function serves its own document at ``GET /openapi.json``; this merges them. A path is
prefixed by its function's name (``/create-order/{order_id}``, ``/stock-in`` for its
``/``), which is how the OpenFaaS gateway lays them out under ``/function`` (the merged
document's server). On Knative each function is its own host: a client sends
``/<name>/...`` to that function's URL as ``/...``. Schemas are merged by name (one name,
one definition, else the command fails); operation ids are unique across the functions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_lib.cli.base import CommandError, command

if TYPE_CHECKING:
    from shared_lib.http.app import FunctionApp

SERVER = {
    "url": "/function",
    "description": "An OpenFaaS gateway serves each function under /function/<name>. On "
    "Knative each function is its own host (<name>.<namespace>.<domain>): send "
    "/<name>/<path> to that host as /<path>.",
}


@contextlib.contextmanager
def _documents_only() -> Iterator[None]:
    """A function checks its API keys when it is loaded; loading it to read its routes needs
    none (nothing is served), so the check is off while the functions load."""
    from shared_lib.config import get_settings

    before = os.environ.get("PSI_AUTH_DISABLED")
    os.environ["PSI_AUTH_DISABLED"] = "true"
    get_settings.cache_clear()
    try:
        yield
    finally:
        if before is None:
            del os.environ["PSI_AUTH_DISABLED"]
        else:
            os.environ["PSI_AUTH_DISABLED"] = before
        get_settings.cache_clear()


def function_apps() -> list[FunctionApp]:
    """Every function of the ``functions`` package (``functions/<dir>/main.py``'s app)."""
    import functions

    apps = []
    with _documents_only():
        for found in sorted(pkgutil.iter_modules(functions.__path__), key=lambda m: m.name):
            if found.ispkg:
                module = importlib.import_module(f"functions.{found.name}.main")
                apps.append(module.app)
    return apps


def _prefixed(function: str, path: str) -> str:
    return f"/{function}" if path == "/" else f"/{function}{path}"


def merged(apps: list[FunctionApp]) -> dict[str, Any]:
    """One document: every function's paths under its name, schemas and tags merged."""
    from shared_lib.http.openapi import add_schema, document

    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    tags: dict[str, dict[str, Any]] = {}
    operation_ids: dict[str, str] = {}
    security: dict[str, Any] = {}
    for app in apps:
        doc = document(app.name, app.description, app.routes)
        for name, schema in doc["components"]["schemas"].items():
            try:
                add_schema(schemas, name, schema)
            except ValueError as exc:
                raise CommandError(f"openapi: {app.name}: {exc}") from None
        security.update(doc["components"]["securitySchemes"])
        for tag in doc["tags"]:
            tags.setdefault(tag["name"], tag)
        for path, item in doc["paths"].items():
            for operation in item.values():
                known = operation_ids.setdefault(operation["operationId"], app.name)
                if known != app.name or _prefixed(app.name, path) in paths:
                    raise CommandError(
                        f"openapi: operation id {operation['operationId']} of {app.name} "
                        f"is taken by {known}"
                    )
            paths[_prefixed(app.name, path)] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PSI Functions",
            "version": "0.1.0",
            "description": "Every function of PSI Functions; a path's first segment is the "
            "function. " + SERVER["description"],
        },
        "servers": [SERVER],
        "tags": sorted(tags.values(), key=lambda tag: tag["name"]),
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": security},
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write the document to this file, not stdout")


@command(
    "openapi",
    help="print one OpenAPI document of every function (for client generation)",
    arguments=_arguments,
)
def run_openapi(args: argparse.Namespace) -> int:
    text = json.dumps(merged(function_apps()), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
