"""stock-in: receive goods into a warehouse (HTTP and psi.stock-in.requested), cycle counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import flask
import functions_framework

from shared_lib import services, topics
from shared_lib.domain.model import AdjustStock, ReceiveStock
from shared_lib.http.app import FunctionApp, outcome_metric
from shared_lib.http.routes import Call, Route
from shared_lib.services import Outcome

if TYPE_CHECKING:
    from shared_lib.http.schemas import AdjustBody, StockInBody


@outcome_metric("receive")
def receive(call: Call) -> Outcome:
    from shared_lib.http.schemas import lines_of  # pydantic loads with the first body, not at start

    body: StockInBody = call.body
    command = ReceiveStock(body.warehouse, lines_of(body), body.reason, body.reference)
    return services.receive_stock(call.platform.deps, command, call.meta)


@outcome_metric("adjust")
def adjust(call: Call) -> Outcome:
    body: AdjustBody = call.body
    command = AdjustStock(body.warehouse, body.sku, body.counted, body.expected, body.reason)
    return services.adjust_stock(call.platform.deps, command, call.meta)


app = FunctionApp(
    "stock-in",
    [
        Route(
            "POST",
            "/",
            receive,
            scope="stock:write",
            summary="Receive goods into a warehouse",
            response="Levels",
            operation_id="receive",
            tags=("receipts",),
            example={
                "warehouse": "MAIN",
                "lines": [{"sku": "SKU-1", "qty": 10}],
                "reason": "purchase receipt",
                "reference": "PO-1001",
            },
            body="StockInBody",
            topic=topics.STOCK_IN_REQUESTED,
        ),
        Route(
            "POST",
            "/adjustments",
            adjust,
            scope="stock:write",
            summary="Cycle count: set on_hand to the counted quantity",
            response="Levels",
            operation_id="adjust",
            tags=("adjustments",),
            example={"warehouse": "MAIN", "sku": "SKU-1", "counted": 40, "reason": "cycle count"},
            body="AdjustBody",
        ),
    ],
    description="Purchase receipts, returns and positive adjustments; cycle counts.",
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
