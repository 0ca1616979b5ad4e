"""Catalog writes over SQL: products and warehouses created or changed (an upsert that a
concurrent writer cannot turn into a duplicate), and a product deleted only while nothing
references it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.sql_read import product_from_row
from shared_lib.domain.model import Product, Warehouse, utcnow


class SqlCatalogWrites:
    """The catalog part of services.ports.StockStore."""

    conn: Connection

    def locked_product(self, sku: str) -> Product | None:
        p = t.products
        query = sa.select(p.c.sku, p.c.name, p.c.unit, p.c.reorder_point, p.c.track_inventory)
        row = self.conn.execute(query.where(p.c.sku == sku).with_for_update()).first()
        return product_from_row(row) if row else None

    def locked_warehouse(self, code: str) -> Warehouse | None:
        w = t.warehouses
        query = sa.select(w.c.code, w.c.name).where(w.c.code == code).with_for_update()
        row = self.conn.execute(query).first()
        return Warehouse(row.code, row.name) if row else None

    def upsert_product(self, product: Product) -> bool:
        p = t.products
        values = {
            "name": product.name,
            "unit": product.unit,
            "reorder_point": product.reorder_point,
            "track_inventory": product.track_inventory,
        }
        return self._upsert(p, p.c.sku, product.sku, values)

    def upsert_warehouse(self, warehouse: Warehouse) -> bool:
        w = t.warehouses
        return self._upsert(w, w.c.code, warehouse.code, {"name": warehouse.name})

    def _upsert(
        self, table: sa.Table, key: sa.Column[Any], value: str, values: dict[str, Any]
    ) -> bool:
        now = utcnow()
        changed = self.conn.execute(
            sa.update(table).where(key == value).values(**values, updated_at=now)
        )
        if changed.rowcount == 1:
            return False
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    table.insert().values(
                        {key.name: value, **values, "created_at": now, "updated_at": now}
                    )
                )
        except sa.exc.IntegrityError:
            # a concurrent writer created it first: ours becomes an update of that row
            self.conn.execute(sa.update(table).where(key == value).values(**values, updated_at=now))
            return False
        return True

    def product_in_use(self, sku: str) -> bool:
        s, m, ol = t.stock_levels, t.movements, t.order_lines
        probes = (
            sa.select(s.c.sku).where(s.c.sku == sku, (s.c.on_hand > 0) | (s.c.reserved > 0)),
            sa.select(m.c.id).where(m.c.sku == sku),
            sa.select(ol.c.order_id).where(ol.c.sku == sku),
        )
        return any(self.conn.execute(probe.limit(1)).first() is not None for probe in probes)

    def delete_product(self, sku: str) -> bool:
        """Drop the product and its empty balance rows; False if rows still reference it."""
        s, p = t.stock_levels, t.products
        try:
            with self.conn.begin_nested():
                self.conn.execute(
                    sa.delete(s).where(s.c.sku == sku, s.c.on_hand == 0, s.c.reserved == 0)
                )
                deleted = self.conn.execute(sa.delete(p).where(p.c.sku == sku))
        except sa.exc.IntegrityError:
            # stock or history arrived after the caller's check: the foreign keys refuse
            return False
        return deleted.rowcount == 1
