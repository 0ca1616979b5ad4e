"""The model of the stateful property test (test_state_machine.py): on_hand / reserved per
(warehouse, sku) and the status of each order, what each command must do to them (an error
type, or the change), and the same request with another body for key reuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared_lib.domain.errors import (
    CountMismatch,
    InsufficientStock,
    InvalidOrderState,
    InvalidRequest,
    UnknownOrder,
    UnknownSku,
)
from shared_lib.domain.model import (
    AdjustStock,
    CancelOrder,
    Command,
    IssueStock,
    Line,
    PlaceOrder,
    ReceiveStock,
    ShipOrder,
    TransferStock,
)

WAREHOUSES = ("W1", "W2")
SKUS = ("A", "B", "C")
GHOST = "GHOST"  # not in the catalog


@dataclass
class Prediction:
    error: type[Exception] | None = None
    apply: Callable[[], None] = lambda: None


@dataclass
class Call:
    key: str
    command: Command
    outcome: str  # ok | refused | failed
    body: dict[str, Any] | None = None


class Model:
    def __init__(self) -> None:
        self.levels: dict[tuple[str, str], list[int]] = {}
        self.orders: dict[str, tuple[str, tuple[Line, ...], str]] = {}

    def level(self, warehouse: str, sku: str) -> list[int]:
        return self.levels.setdefault((warehouse, sku), [0, 0])

    def available(self, warehouse: str, sku: str) -> int:
        on_hand, reserved = self.levels.get((warehouse, sku), (0, 0))
        return on_hand - reserved

    def short(self, warehouse: str, lines: tuple[Line, ...]) -> bool:
        return any(ln.qty > self.available(warehouse, ln.sku) for ln in lines)

    def predict(self, command: Command) -> Prediction:
        """What the service must do with ``command`` (an error type, or the change)."""
        match command:
            case ReceiveStock(warehouse=wh, lines=lines):
                if any(ln.sku == GHOST for ln in lines):
                    return Prediction(UnknownSku)
                return Prediction(apply=lambda: self._add(wh, lines, on_hand=1))
            case IssueStock(warehouse=wh, lines=lines):
                if any(ln.sku == GHOST for ln in lines):
                    return Prediction(UnknownSku)
                if self.short(wh, lines):
                    return Prediction(InsufficientStock)
                return Prediction(apply=lambda: self._add(wh, lines, on_hand=-1))
            case PlaceOrder(order_id=oid, warehouse=wh, lines=lines):
                if any(ln.sku == GHOST for ln in lines):
                    return Prediction(UnknownSku)
                if self.short(wh, lines):
                    return Prediction(InsufficientStock)

                def place() -> None:
                    self._add(wh, lines, reserved=1)
                    self.orders[oid] = (wh, lines, "reserved")

                return Prediction(apply=place)
            case CancelOrder(order_id=oid) | ShipOrder(order_id=oid):
                return self._close(
                    oid, "cancelled" if isinstance(command, CancelOrder) else "shipped"
                )
            case AdjustStock(warehouse=wh, sku=sku, counted=counted, expected=expected):
                if sku == GHOST:
                    return Prediction(UnknownSku)
                on_hand, reserved = self.levels.get((wh, sku), (0, 0))
                if counted < reserved:
                    return Prediction(InvalidRequest)
                if expected is not None and expected != on_hand:
                    return Prediction(CountMismatch)

                def adjust() -> None:
                    self.level(wh, sku)[0] = counted

                return Prediction(apply=adjust)
            case TransferStock(source=src, destination=dst, lines=lines):
                if src == dst:
                    return Prediction(InvalidRequest)
                if any(ln.sku == GHOST for ln in lines):
                    return Prediction(UnknownSku)
                if self.short(src, lines):
                    return Prediction(InsufficientStock)

                def transfer() -> None:
                    self._add(src, lines, on_hand=-1)
                    self._add(dst, lines, on_hand=1)

                return Prediction(apply=transfer)
        raise AssertionError(f"no model for {command!r}")

    def _add(
        self, warehouse: str, lines: tuple[Line, ...], *, on_hand: int = 0, reserved: int = 0
    ) -> None:
        for ln in lines:
            level = self.level(warehouse, ln.sku)
            level[0] += on_hand * ln.qty
            level[1] += reserved * ln.qty

    def _close(self, order_id: str, status: str) -> Prediction:
        if order_id not in self.orders:
            return Prediction(UnknownOrder)
        wh, lines, current = self.orders[order_id]
        if current != "reserved":  # closing happens once; a replay of its key is answered
            return Prediction(InvalidOrderState)

        def close() -> None:
            self._add(wh, lines, on_hand=-1 if status == "shipped" else 0, reserved=-1)
            self.orders[order_id] = (wh, lines, status)

        return Prediction(apply=close)


def altered(command: Command) -> Command:
    """The same kind of request with another body."""
    match command:
        case ReceiveStock() | IssueStock() | PlaceOrder() | TransferStock():
            first = command.lines[0]
            lines = (Line(first.sku, first.qty + 1), *command.lines[1:])
            return type(command)(**{**vars(command), "lines": lines})
        case AdjustStock():
            return AdjustStock(command.warehouse, command.sku, command.counted + 1, None)
        case CancelOrder() | ShipOrder():
            return type(command)(**{**vars(command), "order_id": command.order_id + "-x"})
    raise AssertionError(f"cannot alter {command!r}")
