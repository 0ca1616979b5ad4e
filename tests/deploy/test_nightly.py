"""The nightly trigger's payload is a request the reconcile function accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from psi_local.events_schema import validate_event
from shared_lib.http.schemas import ReconcileBody
from shared_lib.topics import RECONCILE_REQUESTED

ROOT = Path(__file__).resolve().parents[2]


def test_ping_source_data_is_a_valid_reconcile_request():
    documents = yaml.safe_load_all((ROOT / "infra/knative/nightly-reconcile.yaml").read_text())
    pings = [d for d in documents if d and d.get("kind") == "PingSource"]
    assert pings, "no PingSource in infra/knative/nightly-reconcile.yaml"
    import json

    for ping in pings:
        data = json.loads(ping["spec"]["data"])
        validate_event(RECONCILE_REQUESTED, data)
        assert ReconcileBody(**data).repair is True
