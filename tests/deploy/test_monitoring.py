"""infra/monitoring agrees with the code: every metric and label the alert rules and the
dashboard use is defined in shared_lib/http/metrics.py, the rule file is well formed and has
the alerts the runbook names, and promtool accepts the rules, their unit tests and every
dashboard query. promtool is required with CI=true, skipped elsewhere when missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared_lib.http import metrics
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
SEVERITIES = {"critical", "warning", "info"}
EXPECTED_ALERTS = {
    "PsiFunctionDown": "critical",
    "PsiHigh5xxRate": "critical",
    "PsiDegradedMode": "warning",
    "PsiOutboxLag": "warning",
    "PsiDeadLettersIncreasing": "warning",
    "PsiReconcileDriftFound": "warning",
    "PsiReconcileDriftUnrepaired": "critical",
    "PsiOversellRejectionsSpike": "info",
}
METRIC = re.compile(r"\bpsi_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(psi_[a-z0-9_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Grafana's variables, replaced by plain PromQL before promtool reads a dashboard query
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1d", "$function": ".*"}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    document = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in document["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # rows may hold collapsed panels
    return panels


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def alert_queries() -> list[str]:
    return [rule["expr"] for rule in rules()]


def problems_in(expr: str) -> list[str]:
    """Metric names not defined in metrics.py, label matchers and groupings they lack."""
    problems = [
        f"unknown metric {name}" for name in METRIC.findall(expr) if name not in metrics.NAMES
    ]
    for name, matchers in SELECTOR.findall(expr):
        for matcher in filter(None, (m.strip() for m in matchers.split(","))):
            label = re.split(r"[=!~]", matcher, maxsplit=1)[0].strip()
            if name in metrics.NAMES and label not in metrics.NAMES[name]:
                problems.append(f"{name} has no label {label!r}")
    used = set(METRIC.findall(expr))
    known = {label for name in used if name in metrics.NAMES for label in metrics.NAMES[name]}
    known |= {"instance", "job"}  # target labels every series gets from the scrape
    if re.search(r"\bup\b", expr):
        known.add("function")  # `up` carries the target's function label (see README)
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            if label not in known:
                problems.append(f"grouping by {label!r}, which {sorted(used)} do not have")
    return problems


def test_the_rule_file_is_well_formed_with_the_expected_alerts() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"}
    seen: dict[str, str] = {}
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert rule["alert"] not in seen, f"duplicate alert {rule['alert']}"
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
            seen[rule["alert"]] = rule["labels"]["severity"]
    assert seen == EXPECTED_ALERTS


def test_alerts_use_only_metrics_and_labels_that_exist() -> None:
    problems = [f"{e.splitlines()[0]}: {p}" for e in alert_queries() for p in problems_in(e)]
    assert not problems, "\n".join(problems)
    used = {name for expr in alert_queries() for name in METRIC.findall(expr)}
    # each kind of signal of the issue has an alert
    for name in (
        "psi_http_requests_total",
        "psi_degraded_mode",
        "psi_outbox_lag_seconds",
        "psi_dead_letters_total",
        "psi_reconcile_drift_total",
        "psi_oversell_rejections_total",
    ):
        assert name in used, name
    assert any(re.search(r"\bup\{", expr) for expr in alert_queries())


def test_the_dashboard_is_valid_json_over_metrics_that_exist() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] and document["title"] and document["panels"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
    problems = [f"{e}: {p}" for e in dashboard_queries() for p in problems_in(e)]
    assert not problems, "\n".join(problems)
    used = {name for expr in dashboard_queries() for name in METRIC.findall(expr)}
    # every metric is on the dashboard (the histogram through its series)
    assert set(metrics.NAMES) - {"psi_http_request_duration_seconds"} <= used


def test_metrics_module_names_every_exported_series() -> None:
    exported = set()
    for collector in (
        metrics.REQUESTS,
        metrics.LATENCY,
        metrics.STOCK_OPERATIONS,
        metrics.OVERSELL_REJECTIONS,
        metrics.DEGRADED,
        metrics.DEAD_LETTERS,
        metrics.OUTBOX_PENDING,
        metrics.OUTBOX_LAG,
        metrics.RECONCILE_DRIFT,
        metrics.RECONCILE_GATES_REBUILT,
    ):
        for family in collector.describe():
            exported.add(family.name)
    bases = {name.removesuffix("_total") for name in metrics.NAMES}
    assert exported <= bases | set(metrics.NAMES), exported - bases


# ---- promtool ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if IN_CI:
            pytest.fail(message + " (CI=true: it is required)", pytrace=False)
        pytest.skip(message)
    return found


def run(promtool: str, *args: str, cwd: Path) -> None:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules(promtool: str) -> None:
    run(promtool, "check", "rules", str(ALERTS), cwd=ROOT)


def test_promtool_unit_tests_of_the_rules_pass(promtool: str, tmp_path: Path) -> None:
    # promtool compares annotations too; the unit tests are about labels and timing
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    run(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    records = []
    for n, expr in enumerate(dashboard_queries()):
        for variable, replacement in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, replacement)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        records.append({"record": f"psi:dashboard_query_{n}", "expr": expr})
    rule_file = tmp_path / "dashboard.rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    run(promtool, "check", "rules", str(rule_file), cwd=tmp_path)


def readme_yaml_blocks() -> list[str]:
    text = (MONITORING / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def test_the_readmes_prometheus_configuration_is_valid(promtool: str, tmp_path: Path) -> None:
    """The plain prometheus.yml snippet, as promtool reads a configuration (its keys are
    snake_case: camelCase ones from the operator's CRDs are errors there)."""
    (config,) = [b for b in readme_yaml_blocks() if b.startswith("scrape_configs:")]
    document = yaml.safe_load(config)
    assert document["rule_files"]
    document["rule_files"] = [str(ALERTS)]
    for job in document["scrape_configs"]:
        # Debian's Prometheus is built without Kubernetes discovery: a static target stands
        # in for it, and everything else (relabelings, their keys) is checked as written
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    target = tmp_path / "prometheus.yml"
    target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    run(promtool, "check", "config", str(target), cwd=tmp_path)


def test_the_readmes_pod_monitor_uses_the_operators_keys() -> None:
    (monitor,) = [b for b in readme_yaml_blocks() if "kind: PodMonitor" in b]
    document = yaml.safe_load(monitor)
    endpoint = document["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "http"  # the name faas-netes gives the function's port
    for relabeling in endpoint["relabelings"]:
        assert set(relabeling) <= {"sourceLabels", "targetLabel", "replacement", "regex", "action"}
