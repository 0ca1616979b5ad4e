"""stock-out: ship a reserved order, or issue goods directly; never below zero."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flask
import functions_framework

from shared_lib import services, topics
from shared_lib.domain.model import IssueStock, ShipOrder, TransferStock
from shared_lib.http.app import FunctionApp, outcome_metric
from shared_lib.http.routes import Call, Route
from shared_lib.services import Outcome

if TYPE_CHECKING:
    from pydantic import BaseModel

    from shared_lib.http.schemas import TransferBody


def stock_out_body(document: dict[str, Any]) -> BaseModel:
    """`{order_id}` ships an order; `{warehouse, lines, reason}` issues directly."""
    # pydantic loads with the first body, not at start
    from shared_lib.http.schemas import IssueBody, ShipBody

    return ShipBody(**document) if "order_id" in document else IssueBody(**document)


@outcome_metric("issue")
def issue_or_ship(call: Call) -> Outcome:
    from shared_lib.http.schemas import IssueBody, ShipBody, lines_of

    deps = call.platform.deps
    if isinstance(call.body, ShipBody):
        return services.ship_order(
            deps, ShipOrder(call.body.order_id, call.body.reference), call.meta
        )
    body: IssueBody = call.body
    command = IssueStock(body.warehouse, lines_of(body), body.reason, body.reference)
    return services.issue_stock(deps, command, call.meta)


@outcome_metric("transfer")
def transfer(call: Call) -> Outcome:
    from shared_lib.http.schemas import lines_of

    body: TransferBody = call.body
    command = TransferStock(
        body.source, body.destination, lines_of(body), body.reason, body.reference
    )
    return services.transfer_stock(call.platform.deps, command, call.meta)


app = FunctionApp(
    "stock-out",
    [
        Route(
            "POST",
            "/",
            issue_or_ship,
            scope="stock:write",
            summary="Ship a reserved order ({order_id}) or issue goods directly",
            response=["OrderChange", "Levels"],
            operation_id="issueOrShip",
            tags=("issues",),
            example={
                "warehouse": "MAIN",
                "lines": [{"sku": "SKU-1", "qty": 1}],
                "reason": "counter sale",
            },
            body=stock_out_body,
            body_schema=["ShipBody", "IssueBody"],
            topic=topics.STOCK_OUT_REQUESTED,
        ),
        Route(
            "POST",
            "/transfers",
            transfer,
            scope="stock:write",
            summary="Move goods between warehouses",
            response="Levels",
            operation_id="transfer",
            tags=("transfers",),
            example={
                "source": "MAIN",
                "destination": "SIDE",
                "lines": [{"sku": "SKU-1", "qty": 3}],
                "reason": "rebalance",
            },
            body="TransferBody",
        ),
    ],
    description="Shipments of reserved orders, counter sales, scrap, negative adjustments.",
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
