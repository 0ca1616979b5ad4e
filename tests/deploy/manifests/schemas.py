"""Every manifest against its schema (Kubernetes' own, or schemas/)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
from packaging.version import Version
from referencing import Registry, Resource

from tests.deploy.manifests.build import kustomization
from tests.deploy.manifests.loading import (
    CORE_KINDS,
    DATA_DIR,
    KNATIVE_DIR,
    KUBERNETES_DEFINITIONS_ID,
    KUBERNETES_VERSION,
    SCHEMA_DIR,
    STACK_FILE,
    Problem,
    load_stack,
    manifests,
)


@functools.cache
def schema_version() -> str:
    """KUBERNETES_VERSION's schemas, e.g. "1.33.0", else the closest ones installed."""
    available = sorted(set(kubernetes_validate.utils.all_versions()), key=Version)
    wanted = Version(f"{KUBERNETES_VERSION}.999")
    older = [v for v in available if Version(v) <= wanted]
    return older[-1] if older else available[0]


@functools.cache
def schema_registry() -> Registry:
    """Our schemas plus the Kubernetes definitions they reference."""
    version_dir = f"v{schema_version()}-local-strict"
    definitions = (
        resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / version_dir
        / "_definitions.json"
    )
    registry = Registry().with_resource(
        KUBERNETES_DEFINITIONS_ID, Resource.from_contents(json.loads(definitions.read_text()))
    )
    for path in SCHEMA_DIR.glob("*.schema.json"):
        contents = json.loads(path.read_text(encoding="utf-8"))
        registry = registry.with_resource(contents["$id"], Resource.from_contents(contents))
    return registry


def schema_file(api_version: str, kind: str) -> Path:
    group_version = api_version.replace("/", "_")
    return SCHEMA_DIR / f"{group_version}_{kind}.schema.json"


def validate_with_schema(file: str, label: str, body: Any, schema_path: Path) -> list[Problem]:
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(
        schema, registry=schema_registry(), format_checker=jsonschema.FormatChecker()
    )
    problems = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.path) or "(top)"
        problems.append(Problem(file, f"{label}: {where}: {error.message}"))
    return problems


def check_schemas(root: Path) -> list[Problem]:
    """Core kinds against Kubernetes' schemas, the rest against schemas/."""
    problems = []
    for doc in manifests(root):
        if (doc.api_version, doc.kind) in CORE_KINDS:
            try:
                kubernetes_validate.validate(doc.body, schema_version(), strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path) or "(top)"
                problems.append(Problem(doc.file, f"{doc.label}: {where}: {exc.message}"))
            continue
        path = schema_file(doc.api_version, doc.kind)
        if not path.is_file():
            problems.append(
                Problem(doc.file, f"{doc.label}: no schema for {doc.api_version} {doc.kind}")
            )
            continue
        problems += validate_with_schema(doc.file, doc.label, doc.body, path)
    problems += validate_with_schema(
        STACK_FILE, "stack", load_stack(root), SCHEMA_DIR / "openfaas-stack.schema.json"
    )
    for directory in (KNATIVE_DIR, DATA_DIR):
        file = f"{directory}/kustomization.yaml"
        problems += validate_with_schema(
            file,
            "Kustomization",
            kustomization(root, directory) or {},
            schema_file("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        )
    return problems
