"""Health probes and the containers' hardening."""

from __future__ import annotations

from pathlib import Path

from shared_lib.http.routes import LIVE_PATHS, READY_PATHS
from tests.deploy.manifests.loading import (
    OPENFAAS_HEALTH_ANNOTATION,
    OPENFAAS_READY_ANNOTATION,
    STACK_FILE,
    Problem,
    knative_services,
    service_container,
    stack_functions,
)


def check_hardening(root: Path) -> list[Problem]:
    """Every function container: non-root, no privilege escalation, no capabilities, the
    runtime's default seccomp profile, a read-only root file system with /tmp on an
    emptyDir (Knative allows these container fields: serving's SecurityContextMask)."""
    problems = []
    for name, doc in knative_services(root).items():
        container = service_container(doc)
        context = container.get("securityContext") or {}
        wanted = {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            "capabilities": {"drop": ["ALL"]},
        }
        for key, value in wanted.items():
            if context.get(key) != value:
                problems.append(
                    Problem(
                        doc.file, f"Knative Service {name}: securityContext.{key} is not {value}"
                    )
                )
        spec = doc.body.get("spec", {}).get("template", {}).get("spec", {})
        empty = {v.get("name") for v in spec.get("volumes") or [] if "emptyDir" in v}
        mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts") or []}
        if mounts.get("/tmp") not in empty:
            problems.append(Problem(doc.file, f"Knative Service {name}: /tmp is not an emptyDir"))
    return problems


def check_probes(root: Path) -> list[Problem]:
    """Readiness and liveness paths are the functions' health paths; readiness is left to
    Knative's startup probing (no periodSeconds)."""
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
        ready = container.get("readinessProbe") or {}
        if "periodSeconds" in ready or "failureThreshold" in ready:
            problems.append(
                Problem(
                    doc.file,
                    f"Knative Service {name}: readinessProbe sets periodSeconds or"
                    " failureThreshold: Knative's fast startup probing is lost",
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
