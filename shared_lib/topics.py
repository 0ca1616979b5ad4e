"""Kafka topic names: the one list the code, the events/ schemas and the manifests share."""

STOCK_IN_REQUESTED = "psi.stock-in.requested"
STOCK_OUT_REQUESTED = "psi.stock-out.requested"
RECONCILE_REQUESTED = "psi.reconcile.requested"

STOCK_CHANGED = "psi.stock.changed"
STOCK_LOW = "psi.stock.low"
ORDER_CREATED = "psi.order.created"
ORDER_CANCELLED = "psi.order.cancelled"
ORDER_SHIPPED = "psi.order.shipped"
ORDER_EXPIRED = "psi.order.expired"
RECONCILE_COMPLETED = "psi.reconcile.completed"
DEAD_LETTER = "psi.dead-letter"

ALL_IN = (STOCK_IN_REQUESTED, STOCK_OUT_REQUESTED, RECONCILE_REQUESTED)
ALL_OUT = (
    STOCK_CHANGED,
    STOCK_LOW,
    ORDER_CREATED,
    ORDER_CANCELLED,
    ORDER_SHIPPED,
    ORDER_EXPIRED,
    RECONCILE_COMPLETED,
    DEAD_LETTER,
)

# function directory -> the topic whose messages trigger it
CONSUMED_BY: dict[str, str] = {
    "stock_in": STOCK_IN_REQUESTED,
    "stock_out": STOCK_OUT_REQUESTED,
    "reconcile": RECONCILE_REQUESTED,
}
