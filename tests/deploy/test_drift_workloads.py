"""Drift in the workloads, on a copy of the repository: each test breaks one thing and expects
the exact problem. The manifests' schemas (CRDs, Kubernetes, the OpenFaaS stack), probes,
concurrency, the image and its Dockerfile, and the containers' hardening."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.deploy import manifests
from tests.deploy.manifests import Problem
from tests.deploy.repo_copy import container, edit_documents, edit_stack, named


def test_wrong_probe_path_is_reported(copy: Path) -> None:
    def wrong(documents: list[dict[str, Any]]) -> None:
        container(documents)["readinessProbe"]["httpGet"]["path"] = "/healthz"

    edit_documents(copy, "infra/knative/service-stock-in.yaml", wrong)
    assert manifests.check_probes(copy) == [
        Problem(
            "infra/knative/service-stock-in.yaml",
            "Knative Service stock-in: readinessProbe path '/healthz' is not one of "
            "('/health/ready', '/_/ready')",
        )
    ]


def test_wrong_openfaas_ready_path_is_reported(copy: Path) -> None:
    def wrong(stack: dict[str, Any]) -> None:
        stack["functions"]["catalog"]["annotations"]["com.openfaas.ready.http.path"] = (
            "/health/live"
        )

    edit_stack(copy, wrong)
    assert manifests.check_probes(copy) == [
        Problem(
            "stack.yml",
            "catalog: com.openfaas.ready.http.path is '/health/live', not one of "
            "('/health/ready', '/_/ready')",
        )
    ]


def test_a_readiness_period_is_reported(copy: Path) -> None:
    def slow(documents: list[dict[str, Any]]) -> None:
        container(documents)["readinessProbe"]["periodSeconds"] = 2

    edit_documents(copy, "infra/knative/service-catalog.yaml", slow)
    assert manifests.check_probes(copy) == [
        Problem(
            "infra/knative/service-catalog.yaml",
            "Knative Service catalog: readinessProbe sets periodSeconds or failureThreshold:"
            " Knative's fast startup probing is lost",
        )
    ]


def test_crd_field_typo_fails_its_schema(copy: Path) -> None:
    def typo(documents: list[dict[str, Any]]) -> None:
        spec = named(documents, "KafkaSource", "reconcile")["spec"]
        spec["initalOffset"] = spec.pop("initialOffset")

    edit_documents(copy, "infra/knative/kafka-sources.yaml", typo)
    assert manifests.check_schemas(copy) == [
        Problem(
            "infra/knative/kafka-sources.yaml",
            "KafkaSource reconcile: spec: Additional properties are not allowed "
            "('initalOffset' was unexpected)",
        )
    ]


def test_knative_container_uses_kubernetes_types(copy: Path) -> None:
    def bad(documents: list[dict[str, Any]]) -> None:
        container(documents)["env"].append({"name": "WEB_CONCURRENCY", "valeu": "2"})

    edit_documents(copy, "infra/knative/service-reconcile.yaml", bad)
    problems = manifests.check_schemas(copy)
    assert len(problems) == 1
    assert problems[0].file == "infra/knative/service-reconcile.yaml"
    assert problems[0].message.startswith(
        "Service reconcile: spec.template.spec.containers.0.env.6:"
    )
    assert "'valeu' was unexpected" in problems[0].message


def test_unknown_autoscaling_annotation_fails_its_schema(copy: Path) -> None:
    def typo(documents: list[dict[str, Any]]) -> None:
        annotations = documents[0]["spec"]["template"]["metadata"]["annotations"]
        annotations["autoscaling.knative.dev/minScale"] = annotations.pop(
            "autoscaling.knative.dev/min-scale"
        )

    edit_documents(copy, "infra/knative/service-catalog.yaml", typo)
    problems = manifests.check_schemas(copy)
    assert [p.file for p in problems] == ["infra/knative/service-catalog.yaml"]
    assert "autoscaling.knative.dev/minScale" in problems[0].message


def test_core_kind_typo_fails_kubernetes_schema(copy: Path) -> None:
    def typo(documents: list[dict[str, Any]]) -> None:
        metadata = named(documents, "ConfigMap", "redis-config")["metadata"]
        metadata["label"] = metadata.pop("labels")

    edit_documents(copy, "infra/data/redis.yaml", typo)
    assert manifests.check_schemas(copy) == [
        Problem(
            "infra/data/redis.yaml",
            "ConfigMap redis-config: metadata: Additional properties are not allowed "
            "('label' was unexpected)",
        )
    ]


def test_stack_field_typo_fails_its_schema(copy: Path) -> None:
    def typo(stack: dict[str, Any]) -> None:
        stack["functions"]["catalog"]["secret"] = stack["functions"]["catalog"].pop("secrets")

    edit_stack(copy, typo)
    problems = manifests.check_schemas(copy)
    assert problems == [
        Problem(
            "stack.yml",
            "stack: functions.catalog: Additional properties are not allowed "
            "('secret' was unexpected)",
        )
    ]


def test_unquoted_label_fails_the_stack_schema(copy: Path) -> None:
    def unquote(stack: dict[str, Any]) -> None:
        stack["functions"]["catalog"]["labels"]["com.openfaas.scale.max"] = 10

    edit_stack(copy, unquote)
    problems = manifests.check_schemas(copy)
    assert problems == [
        Problem(
            "stack.yml",
            "stack: functions.catalog.labels.com.openfaas.scale.max: 10 is not of type 'string'",
        )
    ]


def test_concurrency_mismatch_is_reported(copy: Path) -> None:
    def more(documents: list[dict[str, Any]]) -> None:
        documents[0]["spec"]["template"]["spec"]["containerConcurrency"] = 50

    edit_documents(copy, "infra/knative/service-stock-query.yaml", more)
    assert manifests.check_concurrency(copy) == [
        Problem(
            "infra/knative/service-stock-query.yaml",
            "Knative Service stock-query: containerConcurrency 50 but gunicorn serves 128 at once",
        )
    ]


def test_image_tag_drift_is_reported(copy: Path) -> None:
    def retag(documents: list[dict[str, Any]]) -> None:
        container(documents)["image"] = "ghcr.io/psi-functions/psi:0.2.0"

    edit_documents(copy, "infra/knative/service-catalog.yaml", retag)
    assert manifests.check_images(copy) == [
        Problem(
            "infra/knative",
            "the functions run more than one image: ghcr.io/psi-functions/psi:0.1.0 (stack.yml"
            " stock-in), ghcr.io/psi-functions/psi:0.2.0 (Knative Service catalog)",
        )
    ]


def test_a_function_image_of_its_own_is_reported(copy: Path) -> None:
    def own(stack: dict[str, Any]) -> None:
        stack["functions"]["catalog"]["image"] = "ghcr.io/psi-functions/psi:0.1.0"
        stack["functions"]["catalog"]["environment"]["FUNCTION_DIR"] = "stock_in"
        stack["functions"]["catalog"]["skip_build"] = False

    edit_stack(copy, own)
    assert manifests.check_images(copy) == [
        Problem("stack.yml", "catalog: the image is pre-built: lang dockerfile, skip_build"),
        Problem("stack.yml", "catalog: environment FUNCTION_DIR 'stock_in', not catalog"),
    ]


def test_the_image_installs_the_lock_from_a_pinned_base(copy: Path) -> None:
    dockerfile = copy / "Dockerfile"
    text = dockerfile.read_text(encoding="utf-8")
    text = re.sub(r"python:3\.11-slim@sha256:[0-9a-f]{64}", "python:3.11-slim", text)
    text = text.replace(
        "pip install --require-hashes --no-deps -r requirements.lock", "pip install ."
    )
    dockerfile.write_text(text, encoding="utf-8")
    assert manifests.check_dockerfiles(copy) == [
        Problem(
            "Dockerfile", "base image 'python:3.11-slim' is not python:3.11-slim pinned by digest"
        ),
        Problem(
            "Dockerfile", "base image 'python:3.11-slim' is not python:3.11-slim pinned by digest"
        ),
        Problem(
            "Dockerfile",
            "the image must install requirements.lock (--require-hashes --no-deps -r"
            " requirements.lock)",
        ),
        Problem("Dockerfile", "pip installs past the lock: pip install ."),
    ]


def test_root_image_must_not_run_as_root(copy: Path) -> None:
    dockerfile = copy / "Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text(encoding="utf-8").replace("USER 10001:10001", "USER root"),
        encoding="utf-8",
    )
    assert manifests.check_dockerfiles(copy) == [
        Problem("Dockerfile", "the image must run as a non-root user")
    ]


def test_a_writable_root_file_system_is_reported(copy: Path) -> None:
    def writable(documents: list[dict[str, Any]]) -> None:
        del container(documents)["securityContext"]["readOnlyRootFilesystem"]
        container(documents)["volumeMounts"] = [
            m for m in container(documents)["volumeMounts"] if m["mountPath"] != "/tmp"
        ]

    edit_documents(copy, "infra/knative/service-catalog.yaml", writable)
    assert manifests.check_hardening(copy) == [
        Problem(
            "infra/knative/service-catalog.yaml",
            "Knative Service catalog: securityContext.readOnlyRootFilesystem is not True",
        ),
        Problem(
            "infra/knative/service-catalog.yaml", "Knative Service catalog: /tmp is not an emptyDir"
        ),
    ]
