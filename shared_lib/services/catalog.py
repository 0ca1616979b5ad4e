"""The catalog: products and warehouses that stock movements refer to.

Writes go through `guarded_write`, so a replay answers like the first call and a reused key
with another request is refused. Their answer is ``{"created": bool, <what>: {...}}``: the
entry point turns ``created`` into 201 or 200, also when it replays the first answer.

A product can be deleted only while nothing refers to it: no balance with stock on hand or
reserved, no ledger row and no order line. The ledger is append-only and must keep naming a
known product, so a product that ever moved stays (set ``track_inventory`` false instead).
"""

from __future__ import annotations

from typing import Any

from shared_lib.domain.catalog import DeleteProduct, PutProduct, PutWarehouse
from shared_lib.domain.errors import StockStillHeld, UnknownSku
from shared_lib.domain.model import Level, RequestMeta
from shared_lib.services.guard import Deps, Outcome, guarded_write
from shared_lib.services.ports import StockStore


def put_product(deps: Deps, command: PutProduct, meta: RequestMeta) -> Outcome:
    """Create the product or replace all of its fields."""
    product = command.product()

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        created = store.upsert_product(product)
        return {"created": created, "product": product.as_dict()}, []

    return guarded_write(deps, command, meta, work)


def delete_product(deps: Deps, command: DeleteProduct, meta: RequestMeta) -> Outcome:
    """Remove a product nothing refers to; one with stock or history is refused."""

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        if store.product(command.sku) is None:
            raise UnknownSku(command.sku)
        if store.product_in_use(command.sku) or not store.delete_product(command.sku):
            raise StockStillHeld(f"product {command.sku!r}")
        return {"deleted": command.sku}, []

    return guarded_write(deps, command, meta, work)


def put_warehouse(deps: Deps, command: PutWarehouse, meta: RequestMeta) -> Outcome:
    """Create the warehouse or rename it."""
    warehouse = command.warehouse()

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        created = store.upsert_warehouse(warehouse)
        return {"created": created, "warehouse": warehouse.as_dict()}, []

    return guarded_write(deps, command, meta, work)


__all__ = ["delete_product", "put_product", "put_warehouse"]
