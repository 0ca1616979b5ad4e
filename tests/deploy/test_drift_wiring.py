"""Drift in how the parts are wired together, on a copy of the repository: each test breaks
one thing and expects the exact problem. Topics, Kafka sources and sinks, the deployed
functions and their handlers, settings and secrets, the nightly run and the kustomizations."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shared_lib import topics
from tests.deploy import manifests
from tests.deploy.manifests import Problem
from tests.deploy.repo_copy import add_function, container, edit_documents, edit_stack, named


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
