"""Typed domain errors. Entry points map each to an HTTP status once (shared_lib/http)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PsiError(Exception):
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


class InvalidRequest(PsiError):
    """Input that can never succeed; names the offending field."""

    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.field = field


class NotFound(PsiError):
    code = "not_found"


class UnknownSku(NotFound):
    code = "unknown_sku"

    def __init__(self, sku: str) -> None:
        super().__init__(f"unknown sku {sku!r}", sku=sku)


class UnknownWarehouse(NotFound):
    code = "unknown_warehouse"

    def __init__(self, warehouse: str) -> None:
        super().__init__(f"unknown warehouse {warehouse!r}", warehouse=warehouse)


class UnknownOrder(NotFound):
    code = "unknown_order"

    def __init__(self, order_id: str) -> None:
        super().__init__(f"unknown order {order_id!r}", order_id=order_id)


class Conflict(PsiError):
    code = "conflict"


@dataclass(frozen=True, slots=True)
class Shortfall:
    sku: str
    requested: int
    available: int

    def as_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "requested": self.requested, "available": self.available}


class InsufficientStock(Conflict):
    code = "insufficient_stock"

    def __init__(self, warehouse: str, shortfalls: list[Shortfall]) -> None:
        super().__init__(
            f"insufficient stock in {warehouse!r} for " + ", ".join(s.sku for s in shortfalls),
            warehouse=warehouse,
            shortfalls=[s.as_dict() for s in shortfalls],
        )
        self.shortfalls = shortfalls


class IdempotencyConflict(Conflict):
    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__("this Idempotency-Key was already used with a different request", key=key)


class RequestInProgress(Conflict):
    code = "request_in_progress"

    def __init__(self, key: str) -> None:
        super().__init__("a request with this Idempotency-Key is still in progress", key=key)


class RunKeyConflict(Conflict):
    code = "run_key_reused"

    def __init__(self, run_key: str, repair: bool) -> None:
        super().__init__(
            f"reconcile run {run_key!r} already ran with repair={str(repair).lower()}",
            run_key=run_key,
            repair=repair,
        )


class InvalidOrderState(Conflict):
    code = "invalid_order_state"

    def __init__(self, order_id: str, status: str, wanted: str) -> None:
        super().__init__(
            f"order {order_id!r} is {status}; cannot {wanted}",
            order_id=order_id,
            order_status=status,
        )


class OrderExists(Conflict):
    code = "order_exists"

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} already exists", order_id=order_id)


class CountMismatch(Conflict):
    code = "count_mismatch"

    def __init__(self, sku: str, warehouse: str, expected: int, actual: int) -> None:
        super().__init__(
            f"on_hand of {sku!r} in {warehouse!r} is {actual}, not the expected {expected}",
            sku=sku,
            warehouse=warehouse,
            expected=expected,
            actual=actual,
        )


class StockStillHeld(Conflict):
    code = "stock_exists"

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} still has stock or history and cannot be deleted")


class PreconditionFailed(PsiError):
    """The caller's copy is stale: the record changed (or went) since it was read."""

    code = "precondition_failed"

    def __init__(self, what: str, current: str | None) -> None:
        state = "no longer exists" if current is None else "changed since it was read"
        super().__init__(f"{what} {state}", current=current)


class StoreUnavailable(PsiError):
    """A store needed for this request is down and no degraded path exists."""

    code = "store_unavailable"

    def __init__(self, store: str, retry_after: int = 5) -> None:
        super().__init__(f"{store} is unavailable; retry later", store=store)
        self.retry_after = retry_after


def restore(data: dict[str, Any]) -> PsiError:
    """The error another process raised, from its `as_dict()` (the group-commit answer):
    same class, message and details, so it maps to the same HTTP answer."""
    details = {k: v for k, v in data.items() if k not in ("error", "message")}
    found = _by_code(PsiError).get(str(data.get("error")), PsiError)
    error = found.__new__(found)
    PsiError.__init__(error, str(data.get("message", "")), **details)
    if isinstance(error, InsufficientStock):
        error.shortfalls = [Shortfall(**s) for s in details.get("shortfalls", [])]
    if isinstance(error, StoreUnavailable):
        error.retry_after = 5
    if isinstance(error, InvalidRequest):
        error.field = str(details.get("field", ""))
    return error


def _by_code(cls: type[PsiError]) -> dict[str, type[PsiError]]:
    found = {cls.code: cls}
    for sub in cls.__subclasses__():
        found.update(_by_code(sub))
    return found
