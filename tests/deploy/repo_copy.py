"""A copy of the repository's deployment files, with stub functions for every handler, and
the edits the drift tests make to it (``make_copy``; ``edit_stack``, ``edit_documents``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import manifests

ROOT = Path(__file__).resolve().parents[2]
STUB = """import functions_framework


@functions_framework.http
def handle(request):
    return "ok"
"""
COPIED = (
    "stack.yml",
    "Dockerfile",
    ".dockerignore",
    "gunicorn.conf.py",
    "pyproject.toml",
    "requirements.lock",
    "infra",
    "shared_lib/wsgi.py",
    "shared_lib/serving.py",
)


def make_copy(root: Path) -> Path:
    """The deployment files of the repository, plus stub functions for every handler."""
    for name in COPIED:
        source, target = ROOT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    (root / "README.md").write_text("# copy\n", encoding="utf-8")
    (root / "shared_lib" / "__init__.py").touch()
    handlers = {
        manifests.handler_dir(str(spec.get("handler", "")))
        for spec in manifests.stack_functions(root).values()
    }
    for directory in sorted(d for d in handlers if d):
        add_function(root, directory)
    return root


def add_function(root: Path, directory: str, source: str = STUB) -> None:
    folder = root / "functions" / directory
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(source, encoding="utf-8")


def edit_stack(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / "stack.yml"
    loaded = yaml.safe_load(manifests.substitute_defaults(path.read_text(encoding="utf-8")))
    # Through JSON: YAML aliases would otherwise share one dict between functions.
    stack = json.loads(json.dumps(loaded))
    change(stack)
    path.write_text(yaml.safe_dump(stack, sort_keys=False), encoding="utf-8")


def edit_documents(
    root: Path, file: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None]
) -> None:
    path = root / file
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    documents = change(documents) or documents
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")


def named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return documents[0]["spec"]["template"]["spec"]["containers"][0]
