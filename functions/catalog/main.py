"""catalog: products and warehouses, created or replaced by PUT, listed in keyset pages."""

from __future__ import annotations

from typing import TYPE_CHECKING

import flask
import functions_framework

from shared_lib.domain.catalog import DeleteProduct, PutProduct, PutWarehouse
from shared_lib.domain.errors import UnknownSku, UnknownWarehouse
from shared_lib.domain.model import SKU_MAX, WAREHOUSE_MAX, check_code
from shared_lib.http.app import FunctionApp
from shared_lib.http.routes import Call, Reply, Route
from shared_lib.services import Outcome
from shared_lib.services import catalog as services
from shared_lib.services.queries import (
    Page,
    product_view,
    products_list,
    warehouse_view,
    warehouses_list,
)

if TYPE_CHECKING:
    from shared_lib.http.schemas import ProductBody


def saved(outcome: Outcome, what: str) -> Reply:
    """201 when the first answer created the record, 200 when it replaced one; a replay
    repeats that status and says it is a replay."""
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return Reply(201 if outcome.body["created"] else 200, outcome.body[what], headers)


def put_product(call: Call) -> Reply:
    sku = check_code("sku", call.params["sku"], SKU_MAX)
    body: ProductBody = call.body
    command = PutProduct(sku, body.name, body.unit, body.reorder_point, body.track_inventory)
    outcome = services.put_product(call.platform.deps, command, call.meta, call.expected)
    return saved(outcome, "product")


def show_product(call: Call) -> Reply:
    sku = check_code("sku", call.params["sku"], SKU_MAX)
    view = product_view(call.platform.deps, sku)
    if view is None:
        raise UnknownSku(sku)
    return Reply(200, view)


def list_products(call: Call) -> Reply:
    return Reply(200, products_list(call.platform.deps, Page.from_query(call.query)))


def delete_product(call: Call) -> Reply:
    sku = check_code("sku", call.params["sku"], SKU_MAX)
    command = DeleteProduct(sku)
    outcome = services.delete_product(call.platform.deps, command, call.meta, call.expected)
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
    return Reply(200, outcome.body, headers)


def put_warehouse(call: Call) -> Reply:
    code = check_code("code", call.params["code"], WAREHOUSE_MAX)
    command = PutWarehouse(code, call.body.name)
    outcome = services.put_warehouse(call.platform.deps, command, call.meta, call.expected)
    return saved(outcome, "warehouse")


def show_warehouse(call: Call) -> Reply:
    code = check_code("code", call.params["code"], WAREHOUSE_MAX)
    view = warehouse_view(call.platform.deps, code)
    if view is None:
        raise UnknownWarehouse(code)
    return Reply(200, view)


def list_warehouses(call: Call) -> Reply:
    return Reply(200, warehouses_list(call.platform.deps, Page.from_query(call.query)))


app = FunctionApp(
    "catalog",
    [
        Route(
            "GET",
            "/products",
            list_products,
            scope="stock:read",
            summary="Products by sku, in pages",
            response="ProductPage",
            operation_id="listProducts",
            tags=("products",),
            query=("limit", "cursor"),
        ),
        Route(
            "PUT",
            "/products/{sku}",
            put_product,
            scope="stock:write",
            summary="Create a product (201) or replace all its fields (200)",
            response="Product",
            operation_id="putProduct",
            tags=("products",),
            example={"name": "Blue mug", "unit": "pcs", "reorder_point": 5},
            body="ProductBody",
            created=True,
            responses={201: "Created", 200: "An existing product was replaced"},
            etag=True,
            conditional=True,
        ),
        Route(
            "GET",
            "/products/{sku}",
            show_product,
            scope="stock:read",
            summary="One product",
            response="Product",
            operation_id="getProduct",
            tags=("products",),
            etag=True,
        ),
        Route(
            "DELETE",
            "/products/{sku}",
            delete_product,
            scope="stock:write",
            summary="Delete a product that never held stock",
            response="Deleted",
            operation_id="deleteProduct",
            tags=("products",),
            responses={409: "The product has stock, ledger history or order lines"},
            conditional=True,
        ),
        Route(
            "GET",
            "/warehouses",
            list_warehouses,
            scope="stock:read",
            summary="Warehouses by code, in pages",
            response="WarehousePage",
            operation_id="listWarehouses",
            tags=("warehouses",),
            query=("limit", "cursor"),
        ),
        Route(
            "PUT",
            "/warehouses/{code}",
            put_warehouse,
            scope="stock:write",
            summary="Create a warehouse (201) or rename it (200)",
            response="Warehouse",
            operation_id="putWarehouse",
            tags=("warehouses",),
            example={"name": "Main warehouse"},
            body="WarehouseBody",
            created=True,
            responses={201: "Created", 200: "An existing warehouse was renamed"},
            etag=True,
            conditional=True,
        ),
        Route(
            "GET",
            "/warehouses/{code}",
            show_warehouse,
            scope="stock:read",
            summary="One warehouse",
            response="Warehouse",
            operation_id="getWarehouse",
            tags=("warehouses",),
            etag=True,
        ),
    ],
    description="Products and warehouses: the catalog every stock movement refers to.",
    needs_redis=False,
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    return app(request)
