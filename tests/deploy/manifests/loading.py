"""What is deployed, read from the files under a repository root: stack.yml, the Knative
and store manifests; the constants the checks share."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared_lib import topics
from shared_lib.config import SECRET_FIELDS, secret_file_name

# The Kubernetes release whose schemas validate the core kinds (or the closest one the
# installed kubernetes-validate still ships).
KUBERNETES_VERSION = "1.33"
SCHEMA_DIR = Path(__file__).parents[1] / "schemas"
KUBERNETES_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"

STACK_FILE = "stack.yml"
# the one image every function runs (stack.yml and the Knative Services), chosen by FUNCTION_DIR
IMAGE_NAME = "psi"
LOCK_FILE = "requirements.lock"
# python:3.11-slim, pinned by the digest of its multi-platform index
BASE_IMAGE = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")
KNATIVE_DIR = "infra/knative"
DATA_DIR = "infra/data"
FUNCTIONS_DIR = "functions"

OPENFAAS_HEALTH_ANNOTATION = "com.openfaas.health.http.path"
OPENFAAS_READY_ANNOTATION = "com.openfaas.ready.http.path"

NIGHTLY_SCHEDULE = "0 2 * * *"
# the cron-connector's clock is UTC: both platforms run the night at the same moment
NIGHTLY_TIMEZONE = "Etc/UTC"
NIGHTLY_FUNCTION = "reconcile"

# Environment names the runtime (gunicorn.conf.py, shared_lib/wsgi.py and serving.py) reads;
# every other variable a manifest sets must be PSI_<field of Settings>.
RUNTIME_ENV = frozenset(
    {
        "PORT",
        "FUNCTION_TARGET",
        "FUNCTION_SOURCE",
        "FUNCTION_DIR",
        "WEB_CONCURRENCY",
        "GUNICORN_WORKER_CONNECTIONS",
        "GUNICORN_READ_TIMEOUT",
        "GUNICORN_TIMEOUT",
        "GUNICORN_GRACEFUL_TIMEOUT",
        "GUNICORN_SHUTDOWN_HOOK",
        "PROMETHEUS_MULTIPROC_DIR",
    }
)
# gunicorn.conf.py's defaults, for containerConcurrency when a Service does not set them.
DEFAULT_WORKERS = 2
DEFAULT_CONNECTIONS = 64

# Settings that are credentials: secret files only, never plain environment in a manifest.
# (s3_endpoint may come from a secret file too, but is not a credential.)
CREDENTIAL_FIELDS = ("database_url", "database_read_url", "redis_url", "api_keys")
SECRET_NAMES = frozenset(secret_file_name(field) for field in SECRET_FIELDS)
KNATIVE_SECRET = "psi-secrets"
KNATIVE_CONFIGMAP = "psi-config"

CORE_KINDS = frozenset(
    {
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("policy/v1", "PodDisruptionBudget"),
    }
)


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    file: str
    body: dict[str, Any]

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", ""))

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


def code_topics() -> frozenset[str]:
    return frozenset(topics.ALL_IN + topics.ALL_OUT)


def dashed(directory: str) -> str:
    """Deployed name of a function directory: stock_in -> stock-in."""
    return directory.replace("_", "-")


def substitute_defaults(text: str) -> str:
    """faas-cli's envsubst with an empty environment: ${VAR:-default} -> default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def load_stack(root: Path) -> dict[str, Any]:
    text = (root / STACK_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(substitute_defaults(text)) or {}


def stack_functions(root: Path) -> dict[str, dict[str, Any]]:
    return load_stack(root).get("functions") or {}


def load_documents(root: Path, directory: str) -> list[Document]:
    """Every document of every *.yaml under ``directory`` (example files included)."""
    documents = []
    for path in sorted((root / directory).glob("*.yaml")):
        relative = path.relative_to(root).as_posix()
        for body in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(body, dict):
                documents.append(Document(relative, body))
    return documents


def manifests(root: Path) -> list[Document]:
    """The Kubernetes objects (kustomization files are not objects)."""
    return [
        doc
        for directory in (KNATIVE_DIR, DATA_DIR)
        for doc in load_documents(root, directory)
        if doc.kind != "Kustomization"
    ]


def of_kind(documents: Iterable[Document], api_version: str, kind: str) -> list[Document]:
    return [d for d in documents if d.api_version == api_version and d.kind == kind]


def function_dirs(root: Path) -> list[str]:
    """Function directories: functions/<dir>/ holding a main.py."""
    base = root / FUNCTIONS_DIR
    if not base.is_dir():
        return []
    return sorted(p.parent.name for p in base.glob("*/main.py"))


def handler_dir(handler: str) -> str | None:
    """``./functions/stock_in`` -> ``stock_in``; None for any other layout."""
    match = re.fullmatch(r"\./functions/([A-Za-z0-9_]+)/?", handler or "")
    return match.group(1) if match else None


def split_topics(annotation: str | None) -> list[str]:
    """connector-sdk reads a comma-separated list from the ``topic`` annotation."""
    return [t.strip() for t in (annotation or "").split(",") if t.strip()]


def knative_services(root: Path) -> dict[str, Document]:
    docs = of_kind(manifests(root), "serving.knative.dev/v1", "Service")
    return {d.name: d for d in docs}


def service_container(doc: Document) -> dict[str, Any]:
    containers = doc.body.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    return containers[0] if containers else {}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}


def sink_ref(doc: Document) -> dict[str, Any]:
    return (doc.body.get("spec", {}).get("sink") or {}).get("ref") or {}


def kafka_sinks(root: Path) -> dict[str, str]:
    """KafkaSink name -> topic."""
    docs = of_kind(manifests(root), "eventing.knative.dev/v1alpha1", "KafkaSink")
    return {d.name: d.body.get("spec", {}).get("topic", "") for d in docs}
