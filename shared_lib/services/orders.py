"""Sales orders: reserve all lines or none, then ship, cancel or let the hold expire."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared_lib import topics
from shared_lib.domain import events
from shared_lib.domain.errors import OrderExists, UnknownOrder
from shared_lib.domain.model import (
    CancelOrder,
    Change,
    ExpireOrder,
    Level,
    Movement,
    Order,
    OrderStatus,
    PlaceOrder,
    RequestMeta,
    ShipOrder,
    holds_of,
)
from shared_lib.services import group_commit
from shared_lib.services.group_commit import Pending
from shared_lib.services.guard import (
    Deps,
    Outcome,
    Work,
    apply_changes,
    check_catalog,
    guarded_write,
    order_body,
)
from shared_lib.services.ports import MovementNote, StockStore

_EVENT = {
    OrderStatus.CANCELLED: topics.ORDER_CANCELLED,
    OrderStatus.SHIPPED: topics.ORDER_SHIPPED,
    OrderStatus.EXPIRED: topics.ORDER_EXPIRED,
}
_MOVEMENT = {
    OrderStatus.CANCELLED: Movement.RELEASE,
    OrderStatus.SHIPPED: Movement.SHIP,
    OrderStatus.EXPIRED: Movement.EXPIRE,
}


def place_order(deps: Deps, command: PlaceOrder, meta: RequestMeta) -> Outcome:
    """Reserve every line for the order, or nothing and report each short line.
    With a journal the order is group-committed with its warehouse's other orders."""
    now = deps.clock()
    hold = command.hold_seconds or deps.order_hold_seconds
    order = Order(
        command.order_id,
        command.warehouse,
        OrderStatus.RESERVED,
        command.lines,
        now + timedelta(seconds=hold),
        command.customer,
    )
    pending = Pending(order, meta, command.fingerprint(), now)
    if deps.journal is None:
        return guarded_write(
            deps, command, meta, _reserve(deps, pending), holds=holds_of(command.changes())
        )
    outcome = group_commit.place(deps, deps.journal, pending, lambda p: _reserve(deps, p))
    if outcome is not None:
        return outcome
    return guarded_write(deps, command, meta, _reserve(deps, pending), degraded=True)


def _reserve(deps: Deps, pending: Pending) -> Work:
    """One order's transaction on the one-by-one path."""
    order, now = pending.order, pending.at
    changes = [Change(order.warehouse, ln.sku, Movement.RESERVE, 0, ln.qty) for ln in order.lines]
    note = MovementNote(pending.meta, now, "order", None, order.order_id)

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        if store.order(order.order_id) is not None:
            raise OrderExists(order.order_id)
        products = check_catalog(store, changes)
        # the balance rows are the contended ones: lock them last, hold them shortest
        store.add_order(order, now)
        store.add_event(
            topics.ORDER_CREATED,
            order.order_id,
            events.cloud_event(
                topics.ORDER_CREATED,
                deps.source,
                order.order_id,
                events.order_data(order),
                now,
                pending.meta.trace,
            ),
        )
        levels = apply_changes(store, changes, note, deps.source, products=products)
        return order_body(order, levels), levels

    return work


def _close(
    deps: Deps,
    command: CancelOrder | ShipOrder | ExpireOrder,
    meta: RequestMeta,
    status: OrderStatus,
    *,
    reference: str | None = None,
) -> Outcome:
    now = deps.clock()

    def work(store: StockStore) -> tuple[dict[str, Any], list[Level]]:
        order = store.order(command.order_id, lock=True)
        if order is None:
            raise UnknownOrder(command.order_id)
        if order.status is status is OrderStatus.EXPIRED:
            return order_body(order, []), []  # the sweep may find it again: nothing to do
        closed = order.moved_to(status)
        note = MovementNote(meta, now, status.value, reference, order.order_id)
        store.set_order_status(order.order_id, status, now)
        store.add_event(
            _EVENT[status],
            order.order_id,
            events.cloud_event(
                _EVENT[status],
                deps.source,
                order.order_id,
                events.order_data(closed),
                now,
                meta.trace,
            ),
        )
        levels = apply_changes(store, order.changes(_MOVEMENT[status]), note, deps.source)
        return order_body(closed, levels), levels

    return guarded_write(deps, command, meta, work)


def cancel_order(deps: Deps, command: CancelOrder, meta: RequestMeta) -> Outcome:
    """Release the order's reservation. Like shipping, it happens once: the same
    Idempotency-Key replays the answer, a new one on a closed order is refused (409)."""
    return _close(deps, command, meta, OrderStatus.CANCELLED)


def ship_order(deps: Deps, command: ShipOrder, meta: RequestMeta) -> Outcome:
    """Confirm: the reserved units leave the warehouse."""
    return _close(deps, command, meta, OrderStatus.SHIPPED, reference=command.reference)


def expire_order(deps: Deps, command: ExpireOrder, meta: RequestMeta) -> Outcome:
    """Release an order whose hold deadline passed without shipment."""
    return _close(deps, command, meta, OrderStatus.EXPIRED)
