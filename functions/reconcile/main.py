"""reconcile: compare Redis, MySQL balances and the ledger; repair drift; expire holds.

Triggered nightly (psi.reconcile.requested from PingSource/KafkaSink, or OpenFaaS
cron-connector's cron-function topic) and by hand over HTTP. One effective run per run key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flask
import functions_framework

from shared_lib import topics
from shared_lib.domain.model import utcnow
from shared_lib.http import Call, FunctionApp, Reply, Route
from shared_lib.http.delivery import CRON_TOPIC

if TYPE_CHECKING:
    from shared_lib.http.schemas import ReconcileBody


def run_key_of(call: Call) -> str:
    """The body's run key; a scheduled trigger's is the date, so redeliveries run once."""
    body: ReconcileBody = call.body
    if body.run_key:
        return body.run_key
    if call.delivery is not None and call.delivery.scheduled:
        return f"nightly-{utcnow().date().isoformat()}"
    return call.meta.idempotency_key


def run(call: Call) -> Reply:
    result = call.platform.reconcile(run_key_of(call), repair=call.body.repair)
    return Reply(200, result)


app = FunctionApp(
    "reconcile",
    [
        Route(
            "POST",
            "/",
            run,
            "admin",
            "Run (or answer for) the reconcile of a run key",
            body="ReconcileBody",
            topic=topics.RECONCILE_REQUESTED,
            also_topics=(CRON_TOPIC,),
            key_required=False,
        ),
    ],
    description="Nightly reconciliation of the Redis gate, the balances and the ledger.",
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
