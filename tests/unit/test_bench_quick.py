"""`python -m bench --quick` runs every scenario at tiny sizes and asserts correctness only.

Needs the real MariaDB and Redis (skipped without them, failed with CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"hot_sku", "flash_sale", "many_skus", "reconcile", "cold_start", "http"}
RUN_FIELDS = {"ops_per_s", "p50_ms", "p99_ms", "ops", "succeeded", "failed"}

pytestmark = pytest.mark.integration


def test_quick_bench_writes_every_scenario_with_correctness_counts(
    mysql_server: str, redis_server: str, tmp_path: Path
) -> None:
    if shutil.which("wrk") is None:
        service_missing("wrk (the http scenario's load generator)", FileNotFoundError("wrk"))
    env = {**os.environ, "PSI_BENCH_MYSQL_URL": mysql_server, "PSI_BENCH_REDIS_URL": redis_server}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "latest.json").read_text())

    assert data["quick"] is True
    assert {"cores", "python", "mariadb_version", "redis_version"} <= set(data["machine"])
    assert data["started_at"]
    assert set(data["scenarios"]) == SCENARIOS
    for name, scenario in data["scenarios"].items():
        assert "error" not in scenario, (name, scenario.get("error"))
        assert scenario["correct"] is True, (name, scenario["checks"])
        assert scenario["checks"], name
        assert scenario["variants"], name
        for target in scenario["targets"].values():
            assert {"value", "required", "met"} <= set(target)

    hot = data["scenarios"]["hot_sku"]["variants"]
    assert set(hot) == {"mysql_for_update", "mysql_conditional", "redis_evalsha", "psi_order_path"}
    for variant in hot.values():
        assert set(variant) >= RUN_FIELDS
        assert variant["succeeded"] > 0 and variant["failed"] == 0
    assert hot["psi_order_path"]["orders"] == hot["psi_order_path"]["succeeded"]
    for name, variant in hot.items():
        cpu = variant["cpu_ms_per_op"]
        assert {"clients", "mariadb", "redis"} <= set(cpu), name
        assert cpu["clients"] > 0, name
    for name in ("mysql_for_update", "mysql_conditional", "psi_order_path"):
        assert 0 <= hot[name]["row_lock_wait_share"] <= 1, name
        assert hot[name]["ceiling_ops_per_s"] > 0, name

    flash = data["scenarios"]["flash_sale"]
    psi = flash["variants"]["psi_order_path"]
    assert set(psi) >= RUN_FIELDS
    assert psi["succeeded"] == flash["params"]["units"]
    assert psi["failed"] == flash["params"]["attempts"] - flash["params"]["units"]
    assert psi["statements_from_losers"] == 0
    assert psi["checkouts_from_losers"] == 0
    assert flash["variants"]["redis_evalsha"]["succeeded"] == flash["params"]["units"]
    assert flash["targets"]["statements_from_losers"]["met"] is True
    assert psi["cpu_ms_per_op"]["clients"] > 0 and psi["ceiling_ops_per_s"] > 0

    many = data["scenarios"]["many_skus"]
    assert set(many["variants"]) == {f"clients_{n}" for n in many["params"]["clients"]}
    assert many["totals"]["reserved_in_mysql"] == many["totals"]["succeeded"] > 0

    reconcile = data["scenarios"]["reconcile"]
    for size in reconcile["variants"].values():
        assert size["drift_seeded"] > 0
        assert size["drift_detected_by_bench"] == size["drift_seeded"]
        if "skipped" not in reconcile:
            assert size["drift_found"] == size["drift_repaired"] == size["drift_seeded"]
            assert size["drift_left"] == 0

    cold = data["scenarios"]["cold_start"]["variants"]
    functions = {p.parent.name for p in ROOT.glob("functions/*/main.py")}
    assert set(cold) == {"hello"} | functions
    assert all(v["succeeded"] == v["runs"] >= 1 for v in cold.values())
    web = data["scenarios"]["http"]
    assert set(web["variants"]) == {
        *("hello", "flash_sale", "hot_psi", "hot_psi_one_by_one", "hot_conditional"),
        *("hot_psi_x2", "hot_conditional_x2"),
    }
    for name, variant in web["variants"].items():
        assert variant["requests"] > 0 and variant["other"] == variant["socket_errors"] == 0, name
        assert {"functions", "mariadb", "redis", "client"} <= set(variant["cpu_ms_per_request"])
    assert web["variants"]["flash_sale"]["won_in_mysql"] == web["params"]["stock"]
    assert set(web["cold_start"]) == {"hello", "create_order", "reconcile"}
    assert (tmp_path / "hot_sku.png").is_file()
    assert (tmp_path / "http.png").is_file()
