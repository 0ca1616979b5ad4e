"""kustomizations, the Dockerfile and the runtime's environment."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests.loading import (
    BASE_IMAGE,
    DATA_DIR,
    KNATIVE_DIR,
    LOCK_FILE,
    RUNTIME_ENV,
    Problem,
    load_documents,
)


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


RUNTIME_ENV_FILE = "tests/deploy/manifests/loading.py"


def check_runtime_env(root: Path) -> list[Problem]:
    """RUNTIME_ENV lists every variable the runtime files read, and nothing else."""
    read: set[str] = set()
    for file in ("gunicorn.conf.py", "shared_lib/wsgi.py", "shared_lib/serving.py"):
        text = (root / file).read_text(encoding="utf-8")
        read |= set(re.findall(r"""environ(?:\.get)?\(\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
        read |= set(re.findall(r"""environ\[\s*["']([A-Z_][A-Z0-9_]*)["']""", text))
    problems = [
        Problem(RUNTIME_ENV_FILE, f"RUNTIME_ENV lacks {name}, read by the runtime")
        for name in sorted(read - RUNTIME_ENV)
    ]
    problems += [
        Problem(RUNTIME_ENV_FILE, f"RUNTIME_ENV has {name}, which nothing reads")
        for name in sorted(RUNTIME_ENV - read)
    ]
    return problems
