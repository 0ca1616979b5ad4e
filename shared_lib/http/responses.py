"""Response bodies of the HTTP contract, as the OpenAPI document describes them.

The services build their answers as plain dicts (``as_dict`` of the domain values,
``services/queries.py``'s views, the use cases' ``{"levels": [...]}``); these models only
describe them, exactly: every member is listed and required unless it may be absent, and
a body is closed (``additionalProperties: false``) unless it really is open (a problem's
extension members). Each model carries one ``EXAMPLE`` for the document. A route names its
model (``Route(response="Order")``); like the request models, pydantic loads with the
first OpenAPI document, never with the function.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from shared_lib.domain.errors import InsufficientStock
from shared_lib.domain.errors import Shortfall as ShortLine
from shared_lib.domain.model import Movement as MovementKind
from shared_lib.domain.model import OrderStatus
from shared_lib.http.errors import problem

Count = Annotated[int, Field(ge=0)]
STATUSES = Literal[tuple(status.value for status in OrderStatus)]  # type: ignore[valid-type]
KINDS = Literal[tuple(kind.value for kind in MovementKind)]  # type: ignore[valid-type]
# a member that is left out rather than null: documented as its type, not required
Absent = SkipJsonSchema[None]


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    EXAMPLE: ClassVar[dict[str, Any]]


# ---- catalog ----------------------------------------------------------------------------


class Product(Answer):
    sku: str
    name: str
    unit: str
    reorder_point: Count
    track_inventory: bool
    EXAMPLE = {
        "sku": "SKU-1",
        "name": "Blue mug",
        "unit": "pcs",
        "reorder_point": 5,
        "track_inventory": True,
    }


class Warehouse(Answer):
    code: str
    name: str
    EXAMPLE = {"code": "MAIN", "name": "Main warehouse"}


class Deleted(Answer):
    """The sku of the product that was deleted."""

    deleted: str
    EXAMPLE = {"deleted": "SKU-9"}


# ---- stock ------------------------------------------------------------------------------


class Level(Answer):
    """A balance: available = on_hand - reserved."""

    sku: str
    warehouse: str
    on_hand: Count
    reserved: Count
    available: Count
    EXAMPLE = {"sku": "SKU-1", "warehouse": "MAIN", "on_hand": 40, "reserved": 2, "available": 38}


class LowStockLevel(Level):
    """A balance at or below its product's reorder point."""

    reorder_point: Count
    EXAMPLE = {**Level.EXAMPLE, "on_hand": 5, "available": 3, "reorder_point": 5}


class SkuLevels(Answer):
    """One product's balance in every warehouse, with the totals."""

    sku: str
    on_hand: Count
    reserved: Count
    available: Count
    levels: list[Level]
    EXAMPLE = {
        "sku": "SKU-1",
        "on_hand": 40,
        "reserved": 2,
        "available": 38,
        "levels": [Level.EXAMPLE],
    }


class Levels(Answer):
    """What a stock movement answers: every balance it changed, by (warehouse, sku)."""

    levels: list[Level]
    EXAMPLE = {"levels": [Level.EXAMPLE]}


class Movement(Answer):
    """One ledger row: what changed, the balance after it, and why."""

    id: int
    kind: KINDS
    sku: str
    warehouse: str
    delta_on_hand: int
    delta_reserved: int
    on_hand_after: Count
    reserved_after: Count
    reason: str | None
    reference: str | None
    order_id: str | None
    actor: str | None
    idempotency_key: str | None
    created_at: datetime
    EXAMPLE = {
        "id": 7,
        "kind": "receive",
        "sku": "SKU-1",
        "warehouse": "MAIN",
        "delta_on_hand": 10,
        "delta_reserved": 0,
        "on_hand_after": 40,
        "reserved_after": 2,
        "reason": "purchase receipt",
        "reference": "PO-1001",
        "order_id": None,
        "actor": "erp",
        "idempotency_key": "erp/receipt-1001",
        "created_at": "2026-11-30T09:15:02.120Z",
    }


# ---- orders -----------------------------------------------------------------------------


class Line(Answer):
    sku: str
    qty: Annotated[int, Field(ge=1)]
    EXAMPLE = {"sku": "SKU-1", "qty": 2}


class Order(Answer):
    """An order with its lines; reserved until hold_until unless shipped or cancelled."""

    order_id: str
    warehouse: str
    status: STATUSES
    customer: str | None
    lines: list[Line]
    hold_until: datetime
    EXAMPLE = {
        "order_id": "SO-1001",
        "warehouse": "MAIN",
        "status": "reserved",
        "customer": "C-42",
        "lines": [Line.EXAMPLE],
        "hold_until": "2026-11-30T10:15:02Z",
    }


class OrderChange(Order):
    """An order as a change left it (placed, cancelled, shipped), with the balances the
    change moved (none when it changed nothing, as for an order expired already)."""

    levels: list[Level]
    EXAMPLE = {**Order.EXAMPLE, "levels": [Level.EXAMPLE]}


# ---- reconcile --------------------------------------------------------------------------


class ReconcileRun(Answer):
    """The result of a run key's reconcile (the first run's, when it was asked again)."""

    run_id: str
    run_key: str
    checked: Count
    drift_found: Count
    drift_repaired: Count
    expired_holds: Count
    outbox_redriven: Count
    gates_rebuilt: Count
    report_uri: str | None
    EXAMPLE = {
        "run_id": "0b7f2f0e-4a8e-4c59-9d7e-2f3b1f1f6a10",
        "run_key": "nightly-2026-11-30",
        "checked": 1200,
        "drift_found": 1,
        "drift_repaired": 1,
        "expired_holds": 3,
        "outbox_redriven": 0,
        "gates_rebuilt": 0,
        "report_uri": "file:///var/lib/psi/reports/nightly-2026-11-30.json",
    }


# ---- pages ------------------------------------------------------------------------------


class Page(Answer):
    """A keyset page: next_cursor continues the list, null on its last page."""

    next_cursor: str | None


class ProductPage(Page):
    items: list[Product]
    EXAMPLE = {"items": [Product.EXAMPLE], "next_cursor": "WyJTS1UtMSJd"}


class WarehousePage(Page):
    items: list[Warehouse]
    EXAMPLE = {"items": [Warehouse.EXAMPLE], "next_cursor": None}


class LevelPage(Page):
    items: list[Level]
    EXAMPLE = {"items": [Level.EXAMPLE], "next_cursor": "WyJNQUlOIiwiU0tVLTEiXQ"}


class LowStockPage(Page):
    items: list[LowStockLevel]
    EXAMPLE = {"items": [LowStockLevel.EXAMPLE], "next_cursor": None}


class MovementPage(Page):
    items: list[Movement]
    EXAMPLE = {"items": [Movement.EXAMPLE], "next_cursor": "Wzdd"}


class OrderPage(Page):
    items: list[Order]
    EXAMPLE = {"items": [Order.EXAMPLE], "next_cursor": None}


# ---- health -----------------------------------------------------------------------------


class Liveness(Answer):
    status: Literal["ok"]
    function: str
    EXAMPLE = {"status": "ok", "function": "stock-in"}


class Readiness(Answer):
    """Ready; mode is degraded while Redis is unreachable (the database guard only)."""

    status: Literal["ready"]
    mode: Literal["normal", "degraded"]
    database: Literal["ok"]
    redis: Annotated[
        Literal["ok", "unreachable"] | Absent,
        Field(description="Absent where the function does not use the gate"),
    ] = None
    EXAMPLE = {"status": "ready", "mode": "normal", "database": "ok", "redis": "ok"}


class Unready(Answer):
    """Not ready: the database does not answer (a plain JSON body, as probes expect)."""

    status: Literal["unavailable"]
    database: Literal["unreachable"]
    EXAMPLE = {"status": "unavailable", "database": "unreachable"}


# ---- problems (RFC 9457) ----------------------------------------------------------------


class Shortfall(Answer):
    sku: str
    warehouse: str | Absent = None
    requested: Count
    available: int
    EXAMPLE = {"sku": "SKU-1", "requested": 5, "available": 3}


class FieldProblem(Answer):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (application/problem+json). Open: members other than
    these may come with a problem (e.g. ``key``, ``order_id``, ``allowed``)."""

    model_config = ConfigDict(extra="allow")

    type: Annotated[
        str,
        Field(
            json_schema_extra={"format": "uri"},
            description="The problem type: a URI, one per error code (ends in the code)",
        ),
    ]
    title: Annotated[str, Field(description="Short summary of the problem type")]
    status: Annotated[int, Field(ge=400, le=599, description="The HTTP status code")]
    detail: Annotated[str, Field(description="What went wrong with this request")]
    instance: Annotated[str, Field(description="The request id (X-Request-Id)")]
    error: Annotated[str, Field(description="The stable error code, e.g. insufficient_stock")]
    field: Annotated[str | Absent, Field(description="The offending field or parameter")] = None
    shortfalls: Annotated[
        list[Shortfall] | Absent, Field(description="Every short line (insufficient_stock)")
    ] = None
    warehouse: Annotated[str | Absent, Field(description="The warehouse concerned")] = None
    problems: Annotated[
        list[FieldProblem] | Absent, Field(description="Every invalid field (invalid_request)")
    ] = None
    message: Annotated[str | Absent, Field(description="Deprecated: repeats detail")] = None
    EXAMPLE: ClassVar[dict[str, Any]] = problem(
        409,
        InsufficientStock("MAIN", [ShortLine("SKU-1", 5, 3)]).as_dict(),
        "3f1c9a7e0d2b4c6f8a1e5d7b9c0f2a4e",
    )
