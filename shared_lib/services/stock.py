"""Stock movements that are not tied to a sales order."""

from __future__ import annotations

from typing import Any

from shared_lib.domain.errors import InvalidRequest, UnknownSku, UnknownWarehouse
from shared_lib.domain.model import (
    AdjustStock,
    Change,
    IssueStock,
    Level,
    Movement,
    ReceiveStock,
    RequestMeta,
    TransferStock,
    holds_of,
)
from shared_lib.services.guard import Deps, Outcome, apply_changes, guarded_write, levels_body
from shared_lib.services.ports import MovementNote, StockStore


def _movement(
    deps: Deps,
    command: ReceiveStock | IssueStock | TransferStock,
    meta: RequestMeta,
) -> Outcome:
    changes = command.changes()
    note = MovementNote(meta, deps.clock(), command.reason, command.reference)

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        levels = apply_changes(store, changes, note, deps.source)
        return {"levels": levels_body(levels)}, levels

    return guarded_write(deps, command, meta, work, holds=holds_of(changes))


def receive_stock(deps: Deps, command: ReceiveStock, meta: RequestMeta) -> Outcome:
    """Goods arrive: purchase receipt, customer return, positive correction."""
    return _movement(deps, command, meta)


def issue_stock(deps: Deps, command: IssueStock, meta: RequestMeta) -> Outcome:
    """Goods leave without an order: counter sale, scrap, negative correction."""
    return _movement(deps, command, meta)


def transfer_stock(deps: Deps, command: TransferStock, meta: RequestMeta) -> Outcome:
    """Goods move between warehouses: out of one and into the other in one transaction."""
    if command.source == command.destination:
        raise InvalidRequest("destination", "must differ from source")
    return _movement(deps, command, meta)


def adjust_stock(deps: Deps, command: AdjustStock, meta: RequestMeta) -> Outcome:
    """Cycle count: on_hand becomes what was counted, if it is still what the counter saw."""
    note = MovementNote(meta, deps.clock(), command.reason)

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        if store.warehouse(command.warehouse) is None:
            raise UnknownWarehouse(command.warehouse)
        if store.product(command.sku) is None:
            raise UnknownSku(command.sku)
        current = store.level(command.warehouse, command.sku)
        if current is None:
            store.create_level(command.warehouse, command.sku)
            current = Level(command.sku, command.warehouse, 0, 0)
        expected = current.on_hand if command.expected is None else command.expected
        if command.counted < current.reserved:
            raise InvalidRequest(
                "counted", f"is below the {current.reserved} units reserved for orders"
            )
        change = Change(
            command.warehouse,
            command.sku,
            Movement.ADJUST,
            command.counted - expected,
            0,
            expect_on_hand=expected,
        )
        levels = apply_changes(store, [change], note, deps.source)
        return {"levels": levels_body(levels)}, levels

    return guarded_write(deps, command, meta, work)
