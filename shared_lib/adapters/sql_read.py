"""The read model over SQL: pages of products, warehouses, levels, low stock, the ledger
and orders (stock-query, catalog, create-order), separate from the writes a use case makes
in its transaction. Every list has an index that serves its filters in the list's order
(sql_tables; tests/integration/test_list_indexes.py reads the plans)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shared_lib.adapters import sql_tables as t
from shared_lib.domain.model import Level, Line, Order, OrderStatus, Product, Warehouse
from shared_lib.services.ports import (
    MovementFilter,
    MovementRecord,
    OrderFilter,
    OrderRecord,
    TimeRange,
)


def level_from_row(row: Any) -> Level:
    return Level(row.sku, row.warehouse, int(row.on_hand), int(row.reserved), int(row.version))


def product_from_row(row: Any) -> Product:
    return Product(row.sku, row.name, row.unit, int(row.reorder_point), bool(row.track_inventory))


def order_from_row(row: Any, lines: Sequence[Line]) -> Order:
    status = OrderStatus(row.status)
    return Order(row.order_id, row.warehouse, status, tuple(lines), row.hold_until, row.customer)


class SqlReadModel:
    """Keyset pages for the read side (implements the read part of services.ports.StockStore)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def products_page(self, after_sku: str | None, limit: int) -> list[Product]:
        p = t.products
        query = sa.select(p)
        if after_sku is not None:
            query = query.where(p.c.sku > after_sku)
        return [
            product_from_row(r) for r in self.conn.execute(query.order_by(p.c.sku).limit(limit))
        ]

    def warehouses_page(self, after_code: str | None, limit: int) -> list[Warehouse]:
        w = t.warehouses
        query = sa.select(w.c.code, w.c.name)
        if after_code is not None:
            query = query.where(w.c.code > after_code)
        return [
            Warehouse(r.code, r.name)
            for r in self.conn.execute(query.order_by(w.c.code).limit(limit))
        ]

    def levels_where(
        self,
        warehouse: str | None,
        sku: str | None,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[Level]:
        s = t.stock_levels
        query = _level_filters(sa.select(s), warehouse, sku, after)
        return [
            level_from_row(r)
            for r in self.conn.execute(query.order_by(s.c.warehouse, s.c.sku).limit(limit))
        ]

    def low_stock_page(
        self, warehouse: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[Level, int]]:
        s, p = t.stock_levels, t.products
        query = _level_filters(
            sa.select(s, p.c.reorder_point).join(p, p.c.sku == s.c.sku), warehouse, None, after
        ).where(s.c.on_hand - s.c.reserved <= p.c.reorder_point, p.c.track_inventory == sa.true())
        rows = self.conn.execute(query.order_by(s.c.warehouse, s.c.sku).limit(limit))
        return [(level_from_row(r), int(r.reorder_point)) for r in rows]

    def movements_page(
        self, where: MovementFilter, before_id: int | None, limit: int
    ) -> list[MovementRecord]:
        m = t.movements
        query = _within(sa.select(m), m.c.created_at, where.created)
        for column, value in (
            (m.c.sku, where.sku),
            (m.c.warehouse, where.warehouse),
            (m.c.reference, where.reference),
        ):
            if value is not None:
                query = query.where(column == value)
        if before_id is not None:
            query = query.where(m.c.id < before_id)
        rows = self.conn.execute(query.order_by(m.c.id.desc()).limit(limit))
        return [
            MovementRecord(
                id=int(r.id),
                kind=r.kind,
                sku=r.sku,
                warehouse=r.warehouse,
                delta_on_hand=int(r.delta_on_hand),
                delta_reserved=int(r.delta_reserved),
                on_hand_after=int(r.on_hand_after),
                reserved_after=int(r.reserved_after),
                reason=r.reason,
                reference=r.reference,
                order_id=r.order_id,
                actor=r.actor,
                idempotency_key=r.idempotency_key,
                created_at=r.created_at,
            )
            for r in rows
        ]

    def orders_page(
        self, where: OrderFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[OrderRecord]:
        o = t.orders
        query = _within(sa.select(o), o.c.created_at, where.created)
        for column, value in (
            (o.c.status, where.status.value if where.status else None),
            (o.c.warehouse, where.warehouse),
            (o.c.customer, where.customer),
        ):
            if value is not None:
                query = query.where(column == value)
        if after is not None:
            # keyset on (created_at, order_id): the first condition alone bounds the index's
            # range on every dialect (SQLite does not range an OR), the second is a filter
            query = query.where(
                o.c.created_at <= after[0],
                (o.c.created_at < after[0]) | (o.c.order_id < after[1]),
            )
        newest_first = query.order_by(o.c.created_at.desc(), o.c.order_id.desc())
        rows = self.conn.execute(newest_first.limit(limit)).all()
        lines = self._lines_of([r.order_id for r in rows])
        return [OrderRecord(order_from_row(r, lines[r.order_id]), r.created_at) for r in rows]

    def _lines_of(self, order_ids: Sequence[str]) -> dict[str, list[Line]]:
        """The lines of a page of orders in one statement (by the primary key)."""
        ol = t.order_lines
        lines: dict[str, list[Line]] = defaultdict(list)
        if order_ids:
            query = sa.select(ol.c.order_id, ol.c.sku, ol.c.qty).where(ol.c.order_id.in_(order_ids))
            for r in self.conn.execute(query.order_by(ol.c.order_id, ol.c.sku)):
                lines[r.order_id].append(Line(r.sku, int(r.qty)))
        return lines


def _within(
    query: sa.Select[Any], column: sa.ColumnElement[Any], when: TimeRange
) -> sa.Select[Any]:
    if when.start is not None:
        query = query.where(column >= when.start)
    if when.end is not None:
        query = query.where(column < when.end)
    return query


def _level_filters(
    query: sa.Select[Any], warehouse: str | None, sku: str | None, after: tuple[str, str] | None
) -> sa.Select[Any]:
    s = t.stock_levels
    if warehouse is not None:
        query = query.where(s.c.warehouse == warehouse)
    if sku is not None:
        query = query.where(s.c.sku == sku)
    if after is not None:
        # keyset on (warehouse, sku), spelled out so every dialect can use the primary key
        query = query.where(
            (s.c.warehouse > after[0]) | ((s.c.warehouse == after[0]) & (s.c.sku > after[1]))
        )
    return query
