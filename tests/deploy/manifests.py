"""Consistency checks between what is deployed and what the code says.

Every ``check_*`` function takes a repository root - the real one, or a mutated copy in a
test's tmp_path - and returns a list of :class:`Problem`; empty means consistent.
The code side (topic names, settings, secret names) always comes from the imported
``shared_lib``; the deployment side is read from files under ``root``:

    stack.yml, Dockerfile, requirements.lock, gunicorn.conf.py, shared_lib/wsgi.py,
    infra/knative/*.yaml (Knative Serving/Eventing), infra/data/*.yaml (stores)

Core Kubernetes kinds are validated with ``kubernetes-validate`` (strict schemas of
KUBERNETES_VERSION); Knative, Strimzi, OpenFaaS and kustomize files with the JSON Schemas
in ``schemas/`` (see schemas/README.md), which reuse the Kubernetes definitions.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from packaging.version import Version
from referencing import Registry, Resource

from shared_lib import topics
from shared_lib.config import ENV_PREFIX, SECRET_FIELDS, ConfigError, Settings, secret_file_name

# The Kubernetes release whose schemas validate the core kinds (or the closest one the
# installed kubernetes-validate still ships).
KUBERNETES_VERSION = "1.33"
SCHEMA_DIR = Path(__file__).parent / "schemas"
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

LIVE_PATHS = ("/health/live", "/_/health")
READY_PATHS = ("/health/ready", "/_/ready")
HEALTH_PATHS = LIVE_PATHS + READY_PATHS
OPENFAAS_HEALTH_ANNOTATION = "com.openfaas.health.http.path"
OPENFAAS_READY_ANNOTATION = "com.openfaas.ready.http.path"

# cron-connector invokes only functions whose topic annotation is exactly this.
CRON_TOPIC = "cron-function"
NIGHTLY_SCHEDULE = "0 2 * * *"
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


# ---------------------------------------------------------------- loading


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


# ---------------------------------------------------------------- functions


def defines_handle(main: Path) -> str | None:
    """None if main.py defines a functions-framework function ``handle``, else the reason."""
    try:
        tree = ast.parse(main.read_text(encoding="utf-8"), filename=str(main))
    except SyntaxError as exc:
        return f"does not parse ({exc.msg}, line {exc.lineno})"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "handle":
            names = {ast.unparse(d).split("(")[0] for d in node.decorator_list}
            if names & {"functions_framework.http", "functions_framework.cloud_event", "http"}:
                return None
            return "defines handle without @functions_framework.http"
    return "does not define handle"


def check_handlers(root: Path) -> list[Problem]:
    """Every stack.yml handler is functions/<dir> with a main.py that defines handle."""
    problems = []
    for name, spec in stack_functions(root).items():
        handler = str(spec.get("handler", ""))
        directory = handler_dir(handler)
        if directory is None:
            problems.append(
                Problem(STACK_FILE, f"{name}: handler {handler!r} is not ./functions/<dir>")
            )
            continue
        main = root / FUNCTIONS_DIR / directory / "main.py"
        if not main.is_file():
            problems.append(Problem(STACK_FILE, f"{name}: handler {handler} has no main.py"))
            continue
        reason = defines_handle(main)
        if reason:
            problems.append(Problem(f"{FUNCTIONS_DIR}/{directory}/main.py", reason))
    return problems


def check_functions_deployed(root: Path) -> list[Problem]:
    """Every function directory is deployed by stack.yml and has a Knative Service."""
    problems = []
    functions = stack_functions(root)
    services = knative_services(root)
    for directory in function_dirs(root):
        name = dashed(directory)
        spec = functions.get(name)
        if spec is None:
            problems.append(
                Problem(STACK_FILE, f"functions/{directory} is not deployed (no function {name})")
            )
        elif handler_dir(str(spec.get("handler", ""))) != directory:
            problems.append(Problem(STACK_FILE, f"{name}: handler must be ./functions/{directory}"))
        if name not in services:
            problems.append(
                Problem(KNATIVE_DIR, f"functions/{directory} has no Knative Service {name}")
            )
    known = set(function_dirs(root))
    for name, doc in services.items():
        directory = container_env(service_container(doc)).get(
            "FUNCTION_DIR", name.replace("-", "_")
        )
        if directory not in known or dashed(directory) != name:
            problems.append(
                Problem(doc.file, f"Knative Service {name} serves no function directory")
            )
    return problems


def image_name(image: str) -> tuple[str, str]:
    """'ghcr.io/psi-functions/psi:0.1.0' -> ('psi', '0.1.0')."""
    repository, _, tag = image.rpartition(":")
    return repository.rsplit("/", 1)[-1], tag


def check_images(root: Path) -> list[Problem]:
    """Every function runs the one image, the same in stack.yml and Knative, and starts the
    function of its handler directory (FUNCTION_DIR); stack.yml builds nothing."""
    problems = []
    images: dict[str, str] = {}
    for name, spec in stack_functions(root).items():
        directory = handler_dir(str(spec.get("handler", "")))
        image = str(spec.get("image", ""))
        images.setdefault(image, f"stack.yml {name}")
        if image_name(image)[0] != IMAGE_NAME:
            problems.append(Problem(STACK_FILE, f"{name}: image {image} is not {IMAGE_NAME}"))
        if spec.get("skip_build") is not True or str(spec.get("lang")) != "dockerfile":
            problems.append(
                Problem(STACK_FILE, f"{name}: the image is pre-built: lang dockerfile, skip_build")
            )
        chosen = (spec.get("environment") or {}).get("FUNCTION_DIR")
        if directory is not None and chosen != directory:
            problems.append(
                Problem(STACK_FILE, f"{name}: environment FUNCTION_DIR {chosen!r}, not {directory}")
            )
    for name, doc in knative_services(root).items():
        image = str(service_container(doc).get("image", ""))
        images.setdefault(image, f"Knative Service {name}")
        if image_name(image)[0] != IMAGE_NAME:
            problems.append(
                Problem(doc.file, f"Knative Service {name}: image {image} is not {IMAGE_NAME}")
            )
    if len(images) > 1:
        listed = ", ".join(f"{image} ({where})" for image, where in images.items())
        problems.append(Problem(KNATIVE_DIR, f"the functions run more than one image: {listed}"))
    return problems


def check_concurrency(root: Path) -> list[Problem]:
    """containerConcurrency equals what gunicorn serves at once (workers x connections)."""
    problems = []
    for name, doc in knative_services(root).items():
        spec = doc.body.get("spec", {}).get("template", {}).get("spec", {})
        env = container_env(service_container(doc))
        served = int(env.get("WEB_CONCURRENCY", DEFAULT_WORKERS)) * int(
            env.get("GUNICORN_WORKER_CONNECTIONS", DEFAULT_CONNECTIONS)
        )
        if spec.get("containerConcurrency") != served:
            problems.append(
                Problem(
                    doc.file,
                    f"Knative Service {name}: containerConcurrency "
                    f"{spec.get('containerConcurrency')} but gunicorn serves {served} at once",
                )
            )
    return problems


# ---------------------------------------------------------------- topics


def check_stack_topics(root: Path) -> list[Problem]:
    """kafka-connector topic annotations equal shared_lib.topics.CONSUMED_BY."""
    problems = []
    triggered: dict[str, set[str]] = {}
    for name, spec in stack_functions(root).items():
        directory = handler_dir(str(spec.get("handler", "")))
        annotations = spec.get("annotations") or {}
        for topic in split_topics(annotations.get("topic")):
            if topic == CRON_TOPIC:
                continue
            expected = topics.CONSUMED_BY.get(directory or "")
            if topic != expected:
                problems.append(
                    Problem(
                        STACK_FILE,
                        f"{name}: topic annotation {topic!r} is not the input topic of "
                        f"functions/{directory} (CONSUMED_BY says {expected!r})",
                    )
                )
            triggered.setdefault(topic, set()).add(directory or "")
    for directory, topic in topics.CONSUMED_BY.items():
        if directory not in triggered.get(topic, set()):
            problems.append(
                Problem(
                    STACK_FILE, f"no function is triggered by {topic} (CONSUMED_BY[{directory!r}])"
                )
            )
    return problems


def check_kafka_sources(root: Path) -> list[Problem]:
    """One KafkaSource per CONSUMED_BY entry, sinking into that function, dead letters kept."""
    problems = []
    docs = manifests(root)
    sinks = kafka_sinks(root)
    consumed: dict[str, list[str]] = {}
    for doc in of_kind(docs, "sources.knative.dev/v1", "KafkaSource"):
        spec = doc.body.get("spec", {})
        target = sink_ref(doc)
        directory = str(target.get("name", "")).replace("-", "_")
        source_topics = list(spec.get("topics") or [])
        if target.get("kind") != "Service" or directory not in topics.CONSUMED_BY:
            problems.append(
                Problem(doc.file, f"{doc.label}: sink {target.get('name')!r} consumes no topic")
            )
            continue
        expected = topics.CONSUMED_BY[directory]
        if source_topics != [expected]:
            problems.append(
                Problem(
                    doc.file,
                    f"{doc.label}: topics {source_topics} but functions/{directory} consumes "
                    f"[{expected!r}]",
                )
            )
        consumed.setdefault(directory, []).append(doc.name)
        dead = ((spec.get("delivery") or {}).get("deadLetterSink") or {}).get("ref") or {}
        if sinks.get(str(dead.get("name"))) != topics.DEAD_LETTER:
            problems.append(
                Problem(doc.file, f"{doc.label}: dead letters must go to {topics.DEAD_LETTER}")
            )
    for directory, topic in topics.CONSUMED_BY.items():
        if len(consumed.get(directory, [])) != 1:
            problems.append(
                Problem(
                    KNATIVE_DIR,
                    f"{topic} needs exactly one KafkaSource into {dashed(directory)}, "
                    f"found {len(consumed.get(directory, []))}",
                )
            )
    for doc in of_kind(docs, "eventing.knative.dev/v1alpha1", "KafkaSink"):
        topic = doc.body.get("spec", {}).get("topic")
        if topic not in code_topics():
            problems.append(Problem(doc.file, f"{doc.label}: topic {topic!r} is not in topics.py"))
    return problems


def check_strimzi_topics(root: Path) -> list[Problem]:
    """The KafkaTopics are exactly the topics of shared_lib/topics.py, safely replicated."""
    problems = []
    docs = manifests(root)
    clusters = {d.name for d in of_kind(docs, "kafka.strimzi.io/v1", "Kafka")}
    declared: dict[str, Document] = {}
    for doc in of_kind(docs, "kafka.strimzi.io/v1", "KafkaTopic"):
        spec = doc.body.get("spec", {})
        topic = spec.get("topicName") or doc.name
        declared[topic] = doc
        if topic not in code_topics():
            problems.append(Problem(doc.file, f"KafkaTopic {topic} is not in shared_lib/topics.py"))
        cluster = ((doc.body.get("metadata") or {}).get("labels") or {}).get("strimzi.io/cluster")
        if cluster not in clusters:
            problems.append(Problem(doc.file, f"KafkaTopic {topic}: no Kafka cluster {cluster!r}"))
        replicas = int(spec.get("replicas", 0))
        min_isr = int((spec.get("config") or {}).get("min.insync.replicas", 1))
        if replicas < 3 or not 2 <= min_isr < replicas:
            problems.append(
                Problem(
                    doc.file,
                    f"KafkaTopic {topic}: needs replicas >= 3 and 2 <= min.insync.replicas < "
                    f"replicas (has {replicas} and {min_isr})",
                )
            )
    for topic in sorted(code_topics() - declared.keys()):
        problems.append(
            Problem(DATA_DIR, f"topic {topic} from shared_lib/topics.py has no KafkaTopic")
        )
    return problems


def expected_bootstrap(root: Path) -> str | None:
    """<cluster>-kafka-bootstrap.<namespace>.svc.cluster.local:<plain port> from infra/data."""
    kafkas = of_kind(load_documents(root, DATA_DIR), "kafka.strimzi.io/v1", "Kafka")
    namespace = (kustomization(root, DATA_DIR) or {}).get("namespace")
    if len(kafkas) != 1 or not namespace:
        return None
    listeners = kafkas[0].body.get("spec", {}).get("kafka", {}).get("listeners") or []
    plain = [x["port"] for x in listeners if x.get("type") == "internal" and not x.get("tls")]
    if not plain:
        return None
    return f"{kafkas[0].name}-kafka-bootstrap.{namespace}.svc.cluster.local:{plain[0]}"


def check_bootstrap(root: Path) -> list[Problem]:
    """Every Kafka client setting names the Strimzi cluster's plain bootstrap address."""
    expected = expected_bootstrap(root)
    if expected is None:
        return [Problem(DATA_DIR, "cannot find one Strimzi Kafka with a plain internal listener")]
    problems = []
    found: list[tuple[str, str, str]] = []
    for name, spec in stack_functions(root).items():
        value = (spec.get("environment") or {}).get("PSI_KAFKA_BOOTSTRAP")
        found.append((STACK_FILE, f"{name}: PSI_KAFKA_BOOTSTRAP", str(value)))
    for doc in manifests(root):
        if doc.kind == "ConfigMap" and doc.name == KNATIVE_CONFIGMAP:
            value = (doc.body.get("data") or {}).get("PSI_KAFKA_BOOTSTRAP")
            found.append((doc.file, "PSI_KAFKA_BOOTSTRAP", str(value)))
        if doc.kind in ("KafkaSource", "KafkaSink"):
            for server in doc.body.get("spec", {}).get("bootstrapServers") or []:
                found.append((doc.file, f"{doc.label}: bootstrapServers", str(server)))
    for file, what, value in found:
        if value != expected:
            problems.append(Problem(file, f"{what} is {value!r}, expected {expected!r}"))
    return problems


def check_nightly(root: Path) -> list[Problem]:
    """02:00 every night a reconcile runs: cron-connector on OpenFaaS, PingSource on Knative."""
    problems = []
    crons = [
        (name, spec)
        for name, spec in stack_functions(root).items()
        if CRON_TOPIC in split_topics((spec.get("annotations") or {}).get("topic"))
    ]
    if len(crons) != 1:
        problems.append(
            Problem(STACK_FILE, f"expected one cron-function entry, found {len(crons)}")
        )
    for name, spec in crons:
        schedule = (spec.get("annotations") or {}).get("schedule")
        if handler_dir(str(spec.get("handler", ""))) != NIGHTLY_FUNCTION:
            problems.append(
                Problem(STACK_FILE, f"{name}: the nightly run must call {NIGHTLY_FUNCTION}")
            )
        if schedule != NIGHTLY_SCHEDULE:
            problems.append(
                Problem(STACK_FILE, f"{name}: schedule {schedule!r}, expected {NIGHTLY_SCHEDULE!r}")
            )
    pings = of_kind(manifests(root), "sources.knative.dev/v1", "PingSource")
    sinks = kafka_sinks(root)
    nightly = [d for d in pings if d.body.get("spec", {}).get("schedule") == NIGHTLY_SCHEDULE]
    if len(nightly) != 1:
        problems.append(
            Problem(
                KNATIVE_DIR,
                f"expected one PingSource at {NIGHTLY_SCHEDULE!r}, found {len(nightly)}",
            )
        )
    for doc in nightly:
        target = sink_ref(doc)
        into_topic = target.get("kind") == "KafkaSink" and (
            sinks.get(str(target.get("name"))) == topics.RECONCILE_REQUESTED
        )
        into_service = target.get("kind") == "Service" and target.get("name") == NIGHTLY_FUNCTION
        if not (into_topic or into_service):
            problems.append(
                Problem(
                    doc.file,
                    f"{doc.label}: must sink into {topics.RECONCILE_REQUESTED} or the "
                    f"{NIGHTLY_FUNCTION} Service",
                )
            )
    return problems


# ---------------------------------------------------------------- settings, secrets


def setting_names() -> dict[str, str]:
    """PSI_DATABASE_URL -> database_url, for every field of Settings."""
    return {f"{ENV_PREFIX}{spec.name.upper()}": spec.name for spec in fields(Settings)}


def check_env_names(file: str, where: str, names: Iterable[str]) -> list[Problem]:
    problems = []
    settings = setting_names()
    credentials = {f"{ENV_PREFIX}{field.upper()}" for field in CREDENTIAL_FIELDS}
    for name in names:
        if name in credentials:
            problems.append(
                Problem(
                    file,
                    f"{where}: {name} is a credential: use the secret "
                    f"{secret_file_name(settings[name])}",
                )
            )
        elif name.startswith(ENV_PREFIX) and name not in settings:
            problems.append(Problem(file, f"{where}: {name} is not a setting of shared_lib.config"))
        elif not name.startswith(ENV_PREFIX) and name not in RUNTIME_ENV:
            problems.append(
                Problem(file, f"{where}: {name} is neither PSI_* nor a runtime variable")
            )
    return problems


def check_env_values(file: str, where: str, env: dict[str, Any]) -> list[Problem]:
    """The values must be accepted by Settings (only errors about these keys count)."""
    settings = setting_names()
    given = {settings[k]: str(v) for k, v in env.items() if k in settings}
    try:
        Settings(**given)
    except ConfigError as exc:
        return [
            Problem(file, f"{where}: {ENV_PREFIX}{field.upper()}: {message}")
            for field, message in exc.problems.items()
            if field in given
        ]
    return []


def configmap_data(root: Path) -> tuple[str, dict[str, Any]]:
    for doc in manifests(root):
        if doc.kind == "ConfigMap" and doc.name == KNATIVE_CONFIGMAP:
            return doc.file, doc.body.get("data") or {}
    return KNATIVE_DIR, {}


def check_environment(root: Path) -> list[Problem]:
    """Manifest environment names are settings (or runtime knobs), values valid, no creds."""
    problems = []
    for name, spec in stack_functions(root).items():
        env = spec.get("environment") or {}
        problems += check_env_names(STACK_FILE, f"{name}.environment", env)
        problems += check_env_values(STACK_FILE, f"{name}.environment", env)
    file, data = configmap_data(root)
    if not data:
        problems.append(Problem(KNATIVE_DIR, f"no ConfigMap {KNATIVE_CONFIGMAP}"))
    problems += check_env_names(file, f"ConfigMap {KNATIVE_CONFIGMAP}", data)
    problems += check_env_values(file, f"ConfigMap {KNATIVE_CONFIGMAP}", data)
    for name, doc in knative_services(root).items():
        container = service_container(doc)
        env = container_env(container)
        problems += check_env_names(doc.file, f"Knative Service {name}", env)
        refs = {
            (src.get("configMapRef") or {}).get("name") for src in container.get("envFrom") or []
        }
        if KNATIVE_CONFIGMAP not in refs:
            problems.append(
                Problem(doc.file, f"Knative Service {name}: envFrom lacks {KNATIVE_CONFIGMAP}")
            )
    env = dockerfile_env(root / "Dockerfile")
    problems += check_env_names("Dockerfile", "ENV", [n for n in env if n.startswith(ENV_PREFIX)])
    return problems


def check_secrets(root: Path) -> list[Problem]:
    """Secret names are secret_file_name(f) for f in SECRET_FIELDS, on both platforms."""
    problems = []
    stack_secrets: set[str] = set()
    for name, spec in stack_functions(root).items():
        for secret in spec.get("secrets") or []:
            stack_secrets.add(secret)
            if secret not in SECRET_NAMES:
                problems.append(
                    Problem(
                        STACK_FILE, f"{name}: secret {secret!r} is not read by shared_lib.config"
                    )
                )
    example = f"{KNATIVE_DIR}/secret.example.yaml"
    keys: set[str] = set()
    for doc in load_documents(root, KNATIVE_DIR):
        if doc.kind == "Secret" and doc.name == KNATIVE_SECRET:
            keys = set((doc.body.get("stringData") or {}) | (doc.body.get("data") or {}))
    if not keys:
        problems.append(Problem(example, f"no Secret {KNATIVE_SECRET} example"))
    for key in sorted(keys - SECRET_NAMES):
        problems.append(Problem(example, f"key {key!r} is not read by shared_lib.config"))
    if keys and keys != stack_secrets:
        problems.append(
            Problem(
                example,
                f"keys {sorted(keys)} differ from the stack.yml secrets {sorted(stack_secrets)}",
            )
        )
    secrets_dir = configmap_data(root)[1].get(f"{ENV_PREFIX}SECRETS_DIR")
    for name, doc in knative_services(root).items():
        template = doc.body.get("spec", {}).get("template", {}).get("spec", {})
        volumes = {
            v.get("name")
            for v in template.get("volumes") or []
            if (v.get("secret") or {}).get("secretName") == KNATIVE_SECRET
        }
        mounts = [
            m.get("mountPath")
            for m in service_container(doc).get("volumeMounts") or []
            if m.get("name") in volumes
        ]
        if mounts != [secrets_dir]:
            problems.append(
                Problem(
                    doc.file,
                    f"Knative Service {name}: {KNATIVE_SECRET} must be mounted at "
                    f"PSI_SECRETS_DIR ({secrets_dir}), found {mounts}",
                )
            )
    return problems


# ---------------------------------------------------------------- probes


def check_probes(root: Path) -> list[Problem]:
    """Readiness and liveness paths are the functions' health paths."""
    problems = []
    for name, doc in knative_services(root).items():
        container = service_container(doc)
        for probe, allowed in (("readinessProbe", READY_PATHS), ("livenessProbe", LIVE_PATHS)):
            path = ((container.get(probe) or {}).get("httpGet") or {}).get("path")
            if path not in allowed:
                problems.append(
                    Problem(
                        doc.file,
                        f"Knative Service {name}: {probe} path {path!r} is not one of {allowed}",
                    )
                )
    for name, spec in stack_functions(root).items():
        annotations = spec.get("annotations") or {}
        for key, allowed in (
            (OPENFAAS_READY_ANNOTATION, READY_PATHS),
            (OPENFAAS_HEALTH_ANNOTATION, LIVE_PATHS),
        ):
            if annotations.get(key) not in allowed:
                problems.append(
                    Problem(
                        STACK_FILE,
                        f"{name}: {key} is {annotations.get(key)!r}, not one of {allowed}",
                    )
                )
    return problems


# ---------------------------------------------------------------- schemas


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


# ---------------------------------------------------------------- kustomize, build


def kustomization(root: Path, directory: str) -> dict[str, Any] | None:
    path = root / directory / "kustomization.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_kustomizations(root: Path) -> list[Problem]:
    """Each kustomization lists every manifest of its folder except the *.example.yaml."""
    problems = []
    for directory in (KNATIVE_DIR, DATA_DIR):
        file = f"{directory}/kustomization.yaml"
        spec = kustomization(root, directory)
        if spec is None:
            problems.append(Problem(file, "missing"))
            continue
        listed = list(spec.get("resources") or [])
        present = sorted(
            p.name
            for p in (root / directory).glob("*.yaml")
            if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")
        )
        for name in sorted(set(present) - set(listed)):
            problems.append(Problem(file, f"does not list {name}"))
        for name in sorted(set(listed) - set(present)):
            problems.append(Problem(file, f"lists {name}, which does not exist"))
        namespace = spec.get("namespace")
        for doc in load_documents(root, directory):
            if doc.file.endswith(".example.yaml") or doc.kind in ("Kustomization", "Namespace"):
                continue
            own = (doc.body.get("metadata") or {}).get("namespace")
            if own and own != namespace:
                problems.append(
                    Problem(
                        doc.file, f"{doc.label}: namespace {own} but kustomize sets {namespace}"
                    )
                )
    return problems


def dockerfile_instructions(path: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, arguments = stripped.partition(" ")
            yield instruction.upper(), arguments.strip()


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for instruction, arguments in dockerfile_instructions(path):
        if instruction == "ENV":
            for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", arguments):
                env[match.group(1)] = match.group(2)
    return env


def expand_args(text: str, args: dict[str, str]) -> str:
    """${NAME} -> the ARG default (enough for FROM lines)."""
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), text)


def check_dockerfiles(root: Path) -> list[Problem]:
    """The image: python:3.11-slim pinned by digest, exactly the lock installed (hashes
    checked), non-root, gunicorn + shared_lib.wsgi, port 8080."""
    problems = []
    file = "Dockerfile"
    steps = list(dockerfile_instructions(root / file))
    args = {a.split("=", 1)[0]: a.split("=", 1)[-1] for i, a in steps if i == "ARG"}
    bases = [expand_args(a.split()[0], args) for i, a in steps if i == "FROM"]
    stages = {a.split()[-1] for i, a in steps if i == "FROM" and " AS " in a.upper()}
    for base in bases:
        if base not in stages and not BASE_IMAGE.match(base):
            problems.append(
                Problem(file, f"base image {base!r} is not python:3.11-slim pinned by digest")
            )
    runs = [a for i, a in steps if i == "RUN"]
    locked = f"--require-hashes --no-deps -r {LOCK_FILE}"
    if not any(locked in run for run in runs):
        problems.append(Problem(file, f"the image must install {LOCK_FILE} ({locked})"))
    loose = [r for r in runs if "pip install" in r and locked not in r and "--no-deps" not in r]
    for run in loose:
        problems.append(Problem(file, f"pip installs past the lock: {run}"))
    if not (root / LOCK_FILE).is_file():
        problems.append(Problem(LOCK_FILE, "missing: make lock writes it"))
    users = [a for i, a in steps if i == "USER"]
    if not users or users[-1].split(":")[0] in ("", "0", "root"):
        problems.append(Problem(file, "the image must run as a non-root user"))
    cmd = next((a for i, a in reversed(steps) if i == "CMD"), "")
    if "gunicorn.conf.py" not in cmd or "shared_lib.wsgi:app" not in cmd:
        problems.append(
            Problem(file, "CMD must run gunicorn with gunicorn.conf.py shared_lib.wsgi:app")
        )
    if dockerfile_env(root / file).get("PORT") != "8080":
        problems.append(Problem(file, "ENV PORT must be 8080"))
    return problems


def check_runtime_env(root: Path) -> list[Problem]:
    """RUNTIME_ENV lists every variable the runtime files read, and nothing else."""
    read: set[str] = set()
    for file in ("gunicorn.conf.py", "shared_lib/wsgi.py", "shared_lib/serving.py"):
        text = (root / file).read_text(encoding="utf-8")
        read |= set(re.findall(r"""environ(?:\.get)?\(\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
        read |= set(re.findall(r"""environ\[\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
    problems = [
        Problem("tests/deploy/manifests.py", f"RUNTIME_ENV lacks {name}, read by the runtime")
        for name in sorted(read - RUNTIME_ENV)
    ]
    problems += [
        Problem("tests/deploy/manifests.py", f"RUNTIME_ENV has {name}, which nothing reads")
        for name in sorted(RUNTIME_ENV - read)
    ]
    return problems


CHECKS: tuple[Callable[[Path], list[Problem]], ...] = (
    check_handlers,
    check_functions_deployed,
    check_images,
    check_concurrency,
    check_stack_topics,
    check_kafka_sources,
    check_strimzi_topics,
    check_bootstrap,
    check_nightly,
    check_environment,
    check_secrets,
    check_probes,
    check_schemas,
    check_kustomizations,
    check_dockerfiles,
    check_runtime_env,
)


def check_all(root: Path) -> list[Problem]:
    return sorted(problem for check in CHECKS for problem in check(root))
