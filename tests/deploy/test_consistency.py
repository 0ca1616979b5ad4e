"""The deployment files agree with the code: every check of tests/deploy/manifests on the real
repository, then "drift" tests that mutate a copy and expect the exact problem.

The checks on the real repository that need functions/<dir>/main.py fail until the
functions exist; the drift tests run on a copy with stub functions, so they do not.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared_lib import topics
from tests.deploy import manifests
from tests.deploy.manifests import Problem

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


@pytest.mark.parametrize("check", manifests.CHECKS, ids=lambda c: c.__name__)
def test_repository_is_consistent(check: Callable[[Path], list[Problem]]) -> None:
    problems = check(ROOT)
    assert not problems, "\n".join(map(str, problems))


# ---------------------------------------------------------------- the copy


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


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    return make_copy(tmp_path / "repo")


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


# ---------------------------------------------------------------- drift


def test_the_copy_with_stub_functions_is_consistent(copy: Path) -> None:
    assert manifests.function_dirs(copy) == sorted(
        ["catalog", "create_order", "reconcile", "stock_in", "stock_out", "stock_query"]
    )
    assert manifests.check_all(copy) == []


def test_renamed_kafka_topic_is_reported_both_ways(copy: Path) -> None:
    def rename(documents: list[dict[str, Any]]) -> None:
        named(documents, "KafkaTopic", topics.STOCK_LOW)["metadata"]["name"] = "psi.stock.lowest"

    edit_documents(copy, "infra/data/kafka-topics.yaml", rename)
    problems = manifests.check_strimzi_topics(copy)
    assert problems == [
        Problem(
            "infra/data/kafka-topics.yaml",
            "KafkaTopic psi.stock.lowest is not in shared_lib/topics.py",
        ),
        Problem("infra/data", "topic psi.stock.low from shared_lib/topics.py has no KafkaTopic"),
    ]


def test_renamed_topic_annotation_is_reported(copy: Path) -> None:
    def rename(stack: dict[str, Any]) -> None:
        stack["functions"]["stock-in"]["annotations"]["topic"] = "psi.stock-in.request"

    edit_stack(copy, rename)
    assert manifests.check_stack_topics(copy) == [
        Problem(
            "stack.yml",
            "stock-in: topic annotation 'psi.stock-in.request' is not the input topic of "
            "functions/stock_in (CONSUMED_BY says 'psi.stock-in.requested')",
        ),
        Problem(
            "stack.yml",
            "no function is triggered by psi.stock-in.requested (CONSUMED_BY['stock_in'])",
        ),
    ]


def test_comma_separated_topics_with_cron_are_understood(copy: Path) -> None:
    def both(stack: dict[str, Any]) -> None:
        stack["functions"]["reconcile"]["annotations"]["topic"] = (
            f"{topics.RECONCILE_REQUESTED}, cron-function"
        )
        stack["functions"]["reconcile"]["annotations"]["schedule"] = "0 2 * * *"
        del stack["functions"]["reconcile-nightly"]

    edit_stack(copy, both)
    assert manifests.check_stack_topics(copy) == []
    assert manifests.check_nightly(copy) == []


def test_renamed_kafka_source_topic_is_reported(copy: Path) -> None:
    def rename(documents: list[dict[str, Any]]) -> None:
        named(documents, "KafkaSource", "stock-out")["spec"]["topics"] = ["psi.stock.changed"]

    edit_documents(copy, "infra/knative/kafka-sources.yaml", rename)
    assert manifests.check_kafka_sources(copy) == [
        Problem(
            "infra/knative/kafka-sources.yaml",
            "KafkaSource stock-out: topics ['psi.stock.changed'] but functions/stock_out "
            "consumes ['psi.stock-out.requested']",
        )
    ]


def test_dead_letter_sink_on_another_topic_is_reported(copy: Path) -> None:
    def retarget(documents: list[dict[str, Any]]) -> None:
        named(documents, "KafkaSink", "psi-dead-letter")["spec"]["topic"] = topics.STOCK_CHANGED

    edit_documents(copy, "infra/knative/kafka-sinks.yaml", retarget)
    assert manifests.check_kafka_sources(copy) == [
        Problem(
            "infra/knative/kafka-sources.yaml",
            f"KafkaSource {name}: dead letters must go to psi.dead-letter",
        )
        for name in ("stock-in", "stock-out", "reconcile")
    ]


def test_function_dropped_from_stack_and_knative_is_reported(copy: Path) -> None:
    edit_stack(copy, lambda stack: stack["functions"].pop("stock-out"))
    (copy / "infra/knative/service-stock-out.yaml").unlink()
    assert manifests.check_functions_deployed(copy) == [
        Problem("stack.yml", "functions/stock_out is not deployed (no function stock-out)"),
        Problem("infra/knative", "functions/stock_out has no Knative Service stock-out"),
    ]
    assert Problem(
        "infra/knative/kustomization.yaml",
        "lists service-stock-out.yaml, which does not exist",
    ) in manifests.check_kustomizations(copy)


def test_new_function_directory_must_be_deployed(copy: Path) -> None:
    add_function(copy, "stock_transfer")
    assert manifests.check_functions_deployed(copy) == [
        Problem(
            "stack.yml", "functions/stock_transfer is not deployed (no function stock-transfer)"
        ),
        Problem("infra/knative", "functions/stock_transfer has no Knative Service stock-transfer"),
    ]


def test_handler_without_handle_is_reported(copy: Path) -> None:
    add_function(copy, "catalog", "def main(request):\n    return 'ok'\n")
    assert manifests.check_handlers(copy) == [
        Problem("functions/catalog/main.py", "does not define handle")
    ]


def test_missing_handler_is_reported(copy: Path) -> None:
    shutil.rmtree(copy / "functions" / "catalog")
    assert manifests.check_handlers(copy) == [
        Problem("stack.yml", "catalog: handler ./functions/catalog has no main.py")
    ]


def test_misspelt_env_var_is_reported(copy: Path) -> None:
    def misspell(documents: list[dict[str, Any]]) -> None:
        data = documents[0]["data"]
        data["PSI_KAFKA_BOOTSTRAPS"] = data.pop("PSI_KAFKA_BOOTSTRAP")

    edit_documents(copy, "infra/knative/configmap.yaml", misspell)
    assert manifests.check_environment(copy) == [
        Problem(
            "infra/knative/configmap.yaml",
            "ConfigMap psi-config: PSI_KAFKA_BOOTSTRAPS is not a setting of shared_lib.config",
        )
    ]


def test_misspelt_stack_env_var_is_reported(copy: Path) -> None:
    def misspell(stack: dict[str, Any]) -> None:
        env = stack["functions"]["create-order"]["environment"]
        env["PSI_ORDER_HOLD_SECS"] = env.pop("PSI_ORDER_HOLD_SECONDS")

    edit_stack(copy, misspell)
    assert manifests.check_environment(copy) == [
        Problem(
            "stack.yml",
            "create-order.environment: PSI_ORDER_HOLD_SECS is not a setting of shared_lib.config",
        )
    ]


def test_invalid_setting_value_is_reported(copy: Path) -> None:
    def break_value(documents: list[dict[str, Any]]) -> None:
        documents[0]["data"]["PSI_ORDER_HOLD_SECONDS"] = "0"

    edit_documents(copy, "infra/knative/configmap.yaml", break_value)
    problems = manifests.check_environment(copy)
    assert [p.message.split(": ")[:2] for p in problems] == [
        ["ConfigMap psi-config", "PSI_ORDER_HOLD_SECONDS"]
    ]


def test_credential_in_plain_environment_is_reported(copy: Path) -> None:
    def leak(stack: dict[str, Any]) -> None:
        stack["functions"]["catalog"]["environment"]["PSI_DATABASE_URL"] = "sqlite:///x.db"

    edit_stack(copy, leak)
    assert manifests.check_environment(copy) == [
        Problem(
            "stack.yml",
            "catalog.environment: PSI_DATABASE_URL is a credential: use the secret "
            "psi-database-url",
        )
    ]


def test_unknown_secret_is_reported(copy: Path) -> None:
    def add_secret(stack: dict[str, Any]) -> None:
        stack["functions"]["stock-query"]["secrets"].append("psi-database-password")

    edit_stack(copy, add_secret)
    assert manifests.check_secrets(copy) == [
        Problem(
            "stack.yml",
            "stock-query: secret 'psi-database-password' is not read by shared_lib.config",
        ),
        Problem(
            "infra/knative/secret.example.yaml",
            "keys ['psi-api-keys', 'psi-database-read-url', 'psi-database-url', "
            "'psi-redis-url'] differ from the stack.yml secrets ['psi-api-keys', "
            "'psi-database-password', 'psi-database-read-url', 'psi-database-url', "
            "'psi-redis-url']",
        ),
    ]


def test_secret_mounted_elsewhere_is_reported(copy: Path) -> None:
    def move(documents: list[dict[str, Any]]) -> None:
        container(documents)["volumeMounts"][0]["mountPath"] = "/var/openfaas/secrets"

    edit_documents(copy, "infra/knative/service-catalog.yaml", move)
    assert manifests.check_secrets(copy) == [
        Problem(
            "infra/knative/service-catalog.yaml",
            "Knative Service catalog: psi-secrets must be mounted at PSI_SECRETS_DIR "
            "(/etc/psi/secrets), found ['/var/openfaas/secrets']",
        )
    ]


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


def test_nightly_schedule_drift_is_reported(copy: Path) -> None:
    def later(documents: list[dict[str, Any]]) -> None:
        documents[0]["spec"]["schedule"] = "0 3 * * *"

    edit_documents(copy, "infra/knative/nightly-reconcile.yaml", later)
    assert manifests.check_nightly(copy) == [
        Problem("infra/knative", "expected one PingSource at '0 2 * * *', found 0")
    ]


def test_wrong_bootstrap_is_reported(copy: Path) -> None:
    def other(documents: list[dict[str, Any]]) -> None:
        named(documents, "KafkaSink", "psi-dead-letter")["spec"]["bootstrapServers"] = [
            "kafka:9092"
        ]

    edit_documents(copy, "infra/knative/kafka-sinks.yaml", other)
    assert manifests.check_bootstrap(copy) == [
        Problem(
            "infra/knative/kafka-sinks.yaml",
            "KafkaSink psi-dead-letter: bootstrapServers is 'kafka:9092', expected "
            "'psi-kafka-kafka-bootstrap.psi-data.svc.cluster.local:9092'",
        )
    ]


def test_unlisted_manifest_is_reported(copy: Path) -> None:
    shutil.copy2(
        copy / "infra/knative/service-catalog.yaml", copy / "infra/knative/service-extra.yaml"
    )
    assert manifests.check_kustomizations(copy) == [
        Problem("infra/knative/kustomization.yaml", "does not list service-extra.yaml")
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


def test_stack_defaults_substitute_like_faas_cli() -> None:
    text = "image: ${REGISTRY:-ghcr.io/psi-functions}/x:${TAG:-0.1.0} and ${UNSET}"
    assert manifests.substitute_defaults(text) == "image: ghcr.io/psi-functions/x:0.1.0 and "


def test_every_kafka_source_sends_a_token_its_function_accepts() -> None:
    """The KafkaSource's sink.audience is what its Service checks, and the Service trusts
    that source's OIDC service account (``<name>-oidc-sources.knative.dev-kafkasource``)."""
    from psi_local.oidc import kafka_source_subject

    knative = ROOT / "infra" / "knative"
    namespace = yaml.safe_load((knative / "kustomization.yaml").read_text())["namespace"]
    sources = list(yaml.safe_load_all((knative / "kafka-sources.yaml").read_text()))
    assert {s["spec"]["sink"]["ref"]["name"] for s in sources} == {
        name.replace("_", "-") for name in topics.CONSUMED_BY
    }
    for source in sources:
        service_name = source["spec"]["sink"]["ref"]["name"]
        service = yaml.safe_load((knative / f"service-{service_name}.yaml").read_text())
        env = {
            e["name"]: e.get("value")
            for e in service["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["PSI_OIDC_DISCOVERY_URL"] == "https://kubernetes.default.svc"
        assert env["PSI_OIDC_AUDIENCE"] == source["spec"]["sink"]["audience"]
        subjects = env["PSI_OIDC_SUBJECTS"].split(",")
        assert kafka_source_subject(namespace, source["metadata"]["name"]) in subjects


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


def test_the_strimzi_operator_is_pinned_to_a_release_serving_the_manifests_api() -> None:
    """infra/data uses kafka.strimzi.io/v1: Strimzi serves it from 0.49 on (and only it from
    1.0); an unpinned install takes whatever the chart repository has that day."""
    from packaging.version import Version

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    installs = [ln for ln in readme.splitlines() if "strimzi/strimzi-kafka-operator" in ln]
    assert installs, "the README installs no Strimzi operator"
    for line in installs:
        pinned = re.search(r"--version (\S+)", line)
        assert pinned, line
        assert Version(pinned.group(1)) >= Version("0.49"), line
    from tests.deploy.manifests.loading import manifests as documents

    versions = {doc.api_version for doc in documents(ROOT) if "strimzi" in doc.api_version}
    assert versions == {"kafka.strimzi.io/v1"}
