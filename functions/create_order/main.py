"""create-order: reserve every line of a sales order or none; read, list and cancel orders."""

from __future__ import annotations

from typing import TYPE_CHECKING

import flask
import functions_framework

from shared_lib import services
from shared_lib.domain.errors import UnknownOrder
from shared_lib.domain.model import (
    ORDER_ID_MAX,
    WAREHOUSE_MAX,
    CancelOrder,
    PlaceOrder,
    check_code,
)
from shared_lib.http.app import FunctionApp, outcome_metric
from shared_lib.http.routes import Call, Reply, Route
from shared_lib.services import Outcome
from shared_lib.services.guard import derived_id
from shared_lib.services.queries import (
    Page,
    code_filter,
    order_view,
    orders_list,
    status_filter,
    text_filter,
    time_range,
)

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


def orders(call: Call) -> Reply:
    body = orders_list(
        call.platform.deps,
        Page.from_query(call.query),
        status=status_filter(call.query),
        warehouse=code_filter(call.query, "warehouse", WAREHOUSE_MAX),
        customer=text_filter(call.query, "customer"),
        created=time_range(call.query, "created_from", "created_to"),
    )
    return Reply(200, body)


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
            response="OrderChange",
            operation_id="place",
            tags=("orders",),
            example={
                "order_id": "SO-1001",
                "warehouse": "MAIN",
                "lines": [{"sku": "SKU-1", "qty": 2}],
                "customer": "C-42",
            },
            body="OrderBody",
            created=True,
            location=lambda order: f"/{order['order_id']}",
        ),
        Route(
            "GET",
            "/",
            orders,
            scope="stock:read",
            summary="Orders, newest first, by status, warehouse, customer and time placed",
            response="OrderPage",
            operation_id="list",
            tags=("orders",),
            query=(
                "status",
                "warehouse",
                "customer",
                "created_from",
                "created_to",
                "limit",
                "cursor",
            ),
        ),
        Route(
            "GET",
            "/{order_id}",
            show,
            scope="stock:read",
            summary="An order with its lines and status",
            response="Order",
            operation_id="get",
            tags=("orders",),
            etag=True,
        ),
        Route(
            "POST",
            "/{order_id}/cancel",
            cancel,
            scope="orders:write",
            summary="Cancel a reserved order and release its stock",
            response="OrderChange",
            operation_id="cancel",
            tags=("orders",),
        ),
    ],
    description="Sales orders (TCC: try in Redis, persist in MySQL, confirm by stock-out).",
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
