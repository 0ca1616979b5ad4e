"""reconcile: compare Redis, MySQL balances and the ledger; repair drift; expire holds.

Triggered nightly (psi.reconcile.requested from PingSource/KafkaSink, or OpenFaaS
cron-connector's cron-function topic) and by hand over HTTP. One effective run per run key:
asking again for a finished run key answers its result (Idempotent-Replayed), asking for it
with the other ``repair`` is refused (409). An Idempotency-Key names one request, as for
every mutation: the same key with another body is refused (409).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flask
import functions_framework

from shared_lib import topics
from shared_lib.domain.model import RunReconcile, utcnow
from shared_lib.http.app import FunctionApp
from shared_lib.http.delivery import CRON_TOPIC
from shared_lib.http.routes import Call, Route
from shared_lib.services.guard import Outcome, answer_once, derived_id

if TYPE_CHECKING:
    from shared_lib.http.schemas import ReconcileBody


def run_key_of(call: Call) -> str:
    """The body's run key; a scheduled trigger's is the date, so redeliveries run once."""
    body: ReconcileBody = call.body
    if body.run_key:
        return body.run_key
    if call.delivery is not None and call.delivery.scheduled:
        return f"nightly-{utcnow().date().isoformat()}"
    return derived_id("run", call.meta.idempotency_key)


def run(call: Call) -> Outcome:
    from shared_lib.services.reconcile import StoredAnswer

    command = RunReconcile(run_key_of(call), call.body.repair)

    def produce() -> tuple[dict[str, object], bool]:
        trace = call.meta.trace if call.meta else None
        result = call.platform.reconcile(command.run_key, repair=command.repair, trace=trace)
        return result, isinstance(result, StoredAnswer)

    return answer_once(
        call.platform.deps, call.meta.idempotency_key, command.fingerprint(), command.kind, produce
    )


app = FunctionApp(
    "reconcile",
    [
        Route(
            "POST",
            "/",
            run,
            scope="admin",
            summary="Run (or answer for) the reconcile of a run key",
            response="ReconcileRun",
            operation_id="run",
            tags=("reconcile-runs",),
            example={"run_key": "nightly-2026-11-30", "repair": True},
            body="ReconcileBody",
            topic=topics.RECONCILE_REQUESTED,
            also_topics=(CRON_TOPIC,),
        ),
    ],
    description="Nightly reconciliation of the Redis gate, the balances and the ledger.",
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
