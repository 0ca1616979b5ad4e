"""Use cases, named for what the business does with stock."""

from shared_lib.services.guard import Deps, Outcome
from shared_lib.services.orders import cancel_order, expire_order, place_order, ship_order
from shared_lib.services.stock import adjust_stock, issue_stock, receive_stock, transfer_stock

__all__ = [
    "Deps",
    "Outcome",
    "adjust_stock",
    "cancel_order",
    "expire_order",
    "issue_stock",
    "place_order",
    "receive_stock",
    "ship_order",
    "transfer_stock",
]
