"""The functions as deployed: handlers, one image, concurrency."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.deploy.manifests.loading import (
    DEFAULT_CONNECTIONS,
    DEFAULT_WORKERS,
    FUNCTIONS_DIR,
    IMAGE_NAME,
    KNATIVE_DIR,
    STACK_FILE,
    Problem,
    container_env,
    dashed,
    function_dirs,
    handler_dir,
    knative_services,
    service_container,
    stack_functions,
)


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
