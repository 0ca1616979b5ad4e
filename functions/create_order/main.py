"""create-order: reserve every line of a sales order or none; read and cancel orders."""

from __future__ import annotations

from typing import TYPE_CHECKING

import flask
import functions_framework

from shared_lib import services
from shared_lib.domain.errors import UnknownOrder
from shared_lib.domain.model import ORDER_ID_MAX, CancelOrder, PlaceOrder, check_code
from shared_lib.http.app import FunctionApp, outcome_metric
from shared_lib.http.routes import Call, Reply, Route
from shared_lib.services import Outcome
from shared_lib.services.guard import derived_id
from shared_lib.services.queries import order_view

if TYPE_CHECKING:
    from shared_lib.http.schemas import OrderBody


@outcome_metric("place_order")
def create(call: Call) -> Outcome:
    from shared_lib.http.schemas import lines_of  # pydantic loads with the first body, not at start

    body: OrderBody = call.body
    order_id = body.order_id or derived_id("ord", call.meta.idempotency_key)
    command = PlaceOrder(order_id, body.warehouse, lines_of(body), body.customer, body.hold_seconds)
    return services.place_order(call.platform.deps, command, call.meta)


def show(call: Call) -> Reply:
    order_id = check_code("order_id", call.params["order_id"], ORDER_ID_MAX)
    view = order_view(call.platform.deps, order_id)
    if view is None:
        raise UnknownOrder(order_id)
    return Reply(200, view)


@outcome_metric("cancel_order")
def cancel(call: Call) -> Outcome:
    order_id = check_code("order_id", call.params["order_id"], ORDER_ID_MAX)
    return services.cancel_order(call.platform.deps, CancelOrder(order_id), call.meta)


app = FunctionApp(
    "create-order",
    [
        Route(
            "POST",
            "/",
            create,
            scope="orders:write",
            summary="Place an order: reserve all lines or none",
            body="OrderBody",
            created=True,
        ),
        Route(
            "GET",
            "/{order_id}",
            show,
            scope="stock:read",
            summary="An order with its lines and status",
        ),
        Route(
            "POST",
            "/{order_id}/cancel",
            cancel,
            scope="orders:write",
            summary="Cancel a reserved order and release its stock",
        ),
    ],
    description="Sales orders (TCC: try in Redis, persist in MySQL, confirm by stock-out).",
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
