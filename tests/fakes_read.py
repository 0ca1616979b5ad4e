"""The read side's fake (services.ports.ReadModel) over tests/fakes.py's State: the lists the
queries page through, filtered and ordered as the SQL read model does."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING

from shared_lib.domain.model import Level, Order, Product, Warehouse
from shared_lib.services.ports import MovementFilter, MovementRecord, OrderFilter, OrderRecord

if TYPE_CHECKING:
    from tests.fakes import State


class FakeReadModel:
    """services.ports.ReadModel over the shared State."""

    s: State

    def products_page(self, after_sku: str | None, limit: int) -> list[Product]:
        skus = sorted(s for s in self.s.products if after_sku is None or s > after_sku)
        return [self.s.products[s] for s in skus[:limit]]

    def warehouses_page(self, after_code: str | None, limit: int) -> list[Warehouse]:
        codes = sorted(c for c in self.s.warehouses if after_code is None or c > after_code)
        return [self.s.warehouses[c] for c in codes[:limit]]

    def levels_where(
        self,
        warehouse: str | None,
        sku: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[Level]:
        keys = sorted(
            k
            for k in self.s.levels
            if (warehouse is None or k[0] == warehouse)
            and (sku is None or k[1] == sku)
            and (after is None or k > after)
        )
        return [self.s.levels[k] for k in keys[:limit]]

    def low_stock_page(
        self, warehouse: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[Level, int]]:
        out: list[tuple[Level, int]] = []
        for level in self.levels_where(warehouse, None, after, len(self.s.levels)):
            product = self.s.products.get(level.sku)
            if product and product.track_inventory and level.available <= product.reorder_point:
                out.append((level, product.reorder_point))
        return out[:limit]

    def movements_page(
        self, where: MovementFilter, before_id: int | None, limit: int
    ) -> list[MovementRecord]:
        rows = [
            m
            for m in reversed(self.s.movements)
            if all(
                value is None or m[name] == value
                for name, value in (
                    ("sku", where.sku),
                    ("warehouse", where.warehouse),
                    ("reference", where.reference),
                )
            )
            and where.created.holds(m["created_at"])
            and (before_id is None or m["id"] < before_id)
        ]
        return [
            MovementRecord(**{f.name: m[f.name] for f in fields(MovementRecord)})
            for m in rows[:limit]
        ]

    def orders_page(
        self, where: OrderFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[OrderRecord]:
        keys = sorted(
            (
                (at, order_id)
                for order_id, at in self.s.order_placed_at.items()
                if _order_matches(self.s.orders[order_id], at, where)
                and (after is None or (at, order_id) < after)
            ),
            reverse=True,
        )
        return [OrderRecord(self.s.orders[order_id], at) for at, order_id in keys[:limit]]


def _order_matches(order: Order, at: datetime, where: OrderFilter) -> bool:
    return (
        (where.status is None or order.status is where.status)
        and (where.warehouse is None or order.warehouse == where.warehouse)
        and (where.customer is None or order.customer == where.customer)
        and where.created.holds(at)
    )
