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
from shared_lib.domain.errors import PreconditionFailed, StockStillHeld, UnknownSku
from shared_lib.domain.model import Level, Product, RequestMeta, Warehouse
from shared_lib.domain.versions import Expected, tag_of
from shared_lib.services.guard import Deps, Outcome, guarded_write
from shared_lib.services.ports import StockStore


def _check(what: str, current: Product | Warehouse | None, expected: Expected | None) -> None:
    """A write that names the versions it may change goes ahead only on one of them."""
    if expected is None:
        return
    view = current.as_dict() if current is not None else None
    if not expected.allows(view):
        raise PreconditionFailed(what, tag_of(view) if view is not None else None)


def put_product(
    deps: Deps, command: PutProduct, meta: RequestMeta, expected: Expected | None = None
) -> Outcome:
    """Create the product or replace all of its fields (only over an expected version)."""
    product = command.product()

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        if expected is not None:
            _check(f"product {product.sku!r}", store.locked_product(product.sku), expected)
        created = store.upsert_product(product)
        return {"created": created, "product": product.as_dict()}, []

    return guarded_write(deps, command, meta, work)


def delete_product(
    deps: Deps, command: DeleteProduct, meta: RequestMeta, expected: Expected | None = None
) -> Outcome:
    """Remove a product nothing refers to; one with stock or history is refused."""

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        current = store.locked_product(command.sku) if expected else store.product(command.sku)
        if current is None:
            raise UnknownSku(command.sku)
        _check(f"product {command.sku!r}", current, expected)
        if store.product_in_use(command.sku) or not store.delete_product(command.sku):
            raise StockStillHeld(f"product {command.sku!r}")
        return {"deleted": command.sku}, []

    return guarded_write(deps, command, meta, work)


def put_warehouse(
    deps: Deps, command: PutWarehouse, meta: RequestMeta, expected: Expected | None = None
) -> Outcome:
    """Create the warehouse or rename it (only over an expected version)."""
    warehouse = command.warehouse()

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        if expected is not None:
            current = store.locked_warehouse(warehouse.code)
            _check(f"warehouse {warehouse.code!r}", current, expected)
        created = store.upsert_warehouse(warehouse)
        return {"created": created, "warehouse": warehouse.as_dict()}, []

    return guarded_write(deps, command, meta, work)


__all__ = ["delete_product", "put_product", "put_warehouse"]
