"""Settings and secrets in the manifests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from shared_lib.config import ENV_PREFIX, ConfigError, Settings, secret_file_name
from tests.deploy.manifests.build import dockerfile_env
from tests.deploy.manifests.loading import (
    CREDENTIAL_FIELDS,
    KNATIVE_CONFIGMAP,
    KNATIVE_DIR,
    KNATIVE_SECRET,
    RUNTIME_ENV,
    SECRET_NAMES,
    STACK_FILE,
    Problem,
    container_env,
    knative_services,
    load_documents,
    manifests,
    service_container,
    stack_functions,
)


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
