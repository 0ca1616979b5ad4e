"""stock-query: balances, the low-stock list and movement history (read replica)."""

from __future__ import annotations

import flask
import functions_framework

from shared_lib.domain.errors import UnknownSku
from shared_lib.domain.model import SKU_MAX, WAREHOUSE_MAX, check_code
from shared_lib.http.app import FunctionApp
from shared_lib.http.routes import Call, Reply, Route
from shared_lib.services.queries import (
    Page,
    code_filter,
    levels_list,
    low_stock_list,
    movements_list,
    sku_levels,
    text_filter,
    time_range,
)


def levels(call: Call) -> Reply:
    body = levels_list(
        call.platform.deps,
        Page.from_query(call.query),
        warehouse=code_filter(call.query, "warehouse", WAREHOUSE_MAX),
        sku=code_filter(call.query, "sku", SKU_MAX),
    )
    return Reply(200, body)


def levels_of_sku(call: Call) -> Reply:
    sku = check_code("sku", call.params["sku"], SKU_MAX)
    view = sku_levels(call.platform.deps, sku)
    if view is None:
        raise UnknownSku(sku)
    return Reply(200, view)


def low_stock(call: Call) -> Reply:
    body = low_stock_list(
        call.platform.deps,
        Page.from_query(call.query),
        warehouse=code_filter(call.query, "warehouse", WAREHOUSE_MAX),
    )
    return Reply(200, body)


def movements(call: Call) -> Reply:
    body = movements_list(
        call.platform.deps,
        Page.from_query(call.query),
        sku=code_filter(call.query, "sku", SKU_MAX),
        warehouse=code_filter(call.query, "warehouse", WAREHOUSE_MAX),
        reference=text_filter(call.query, "reference"),
        created=time_range(call.query, "from", "to"),
    )
    return Reply(200, body)


app = FunctionApp(
    "stock-query",
    [
        Route(
            "GET",
            "/levels",
            levels,
            scope="stock:read",
            summary="Balances by warehouse and sku",
            response="LevelPage",
            operation_id="listLevels",
            tags=("levels",),
            query=("warehouse", "sku", "limit", "cursor"),
        ),
        Route(
            "GET",
            "/levels/{sku}",
            levels_of_sku,
            scope="stock:read",
            summary="One product's balance in every warehouse, with totals",
            response="SkuLevels",
            operation_id="getSkuLevels",
            tags=("levels",),
            etag=True,
        ),
        Route(
            "GET",
            "/low-stock",
            low_stock,
            scope="stock:read",
            summary="Balances whose available is at or below the reorder point",
            response="LowStockPage",
            operation_id="listLowStock",
            tags=("levels",),
            query=("warehouse", "limit", "cursor"),
        ),
        Route(
            "GET",
            "/movements",
            movements,
            scope="stock:read",
            summary="Ledger rows, newest first, by sku, warehouse, reference and time",
            response="MovementPage",
            operation_id="listMovements",
            tags=("movements",),
            query=("sku", "warehouse", "reference", "from", "to", "limit", "cursor"),
        ),
    ],
    description="What users look at after they changed stock; served from the read replica.",
    needs_redis=False,
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
