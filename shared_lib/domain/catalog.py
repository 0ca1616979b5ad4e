"""Catalog commands: products and warehouses are created or replaced whole, deleted by key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shared_lib.domain.model import Command, Product, Warehouse


@dataclass(frozen=True)
class PutProduct(Command):
    """Create the product, or replace every field of it (omitted fields take the defaults)."""

    sku: str
    name: str
    unit: str = "pcs"
    reorder_point: int = 0
    track_inventory: bool = True
    kind: ClassVar[str] = "put_product"

    def product(self) -> Product:
        return Product(self.sku, self.name, self.unit, self.reorder_point, self.track_inventory)


@dataclass(frozen=True)
class DeleteProduct(Command):
    """Remove a product that never held stock (the ledger keeps referring to the others)."""

    sku: str
    kind: ClassVar[str] = "delete_product"


@dataclass(frozen=True)
class PutWarehouse(Command):
    """Create the warehouse, or rename it."""

    code: str
    name: str
    kind: ClassVar[str] = "put_warehouse"

    def warehouse(self) -> Warehouse:
        return Warehouse(self.code, self.name)
