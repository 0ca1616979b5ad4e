"""The deployment files agree with the code: every check of tests/deploy/manifests on the real
repository (and on a copy with stub functions), plus what the checks cannot say.

The checks on the real repository that need functions/<dir>/main.py fail until the
functions exist; the drift tests (test_drift_wiring.py, test_drift_workloads.py) run on a
copy with stub functions, so they do not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from shared_lib import topics
from tests.deploy import manifests
from tests.deploy.manifests import Problem
from tests.deploy.repo_copy import ROOT


@pytest.mark.parametrize("check", manifests.CHECKS, ids=lambda c: c.__name__)
def test_repository_is_consistent(check: Callable[[Path], list[Problem]]) -> None:
    problems = check(ROOT)
    assert not problems, "\n".join(map(str, problems))


def test_the_copy_with_stub_functions_is_consistent(copy: Path) -> None:
    assert manifests.function_dirs(copy) == sorted(
        ["catalog", "create_order", "reconcile", "stock_in", "stock_out", "stock_query"]
    )
    assert manifests.check_all(copy) == []


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
