"""Request bodies of the HTTP contract (pydantic: validation and the OpenAPI schemas)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from shared_lib.domain import model as m

_CODE = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Sku = Annotated[str, Field(min_length=1, max_length=m.SKU_MAX, pattern=_CODE, examples=["SKU-1"])]
WarehouseCode = Annotated[
    str, Field(min_length=1, max_length=m.WAREHOUSE_MAX, pattern=_CODE, examples=["MAIN"])
]
OrderId = Annotated[str, Field(min_length=1, max_length=m.ORDER_ID_MAX, pattern=_CODE)]
Qty = Annotated[StrictInt, Field(ge=1, le=m.MAX_QTY)]


def _plain(value: str) -> str:
    unsafe = m.unsafe_character(value)
    if unsafe:
        raise ValueError(f"must not contain control characters ({unsafe})")
    return value


def Text(max_length: int, min_length: int = 0) -> Any:
    """Free text: bounded, and without the characters m.UNSAFE_TEXT names (documented as a
    pattern; checked with a message that names the character)."""
    pattern = f"^[^{m.UNSAFE_TEXT.pattern[1:-1]}]*$"
    return Annotated[
        str,
        Field(min_length=min_length, max_length=max_length, json_schema_extra={"pattern": pattern}),
        AfterValidator(_plain),
    ]


Reason = Text(m.TEXT_MAX["reason"])
Reference = Text(m.TEXT_MAX["reference"])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class LineIn(Body):
    sku: Sku
    qty: Qty


Lines = Annotated[list[LineIn], Field(min_length=1, max_length=m.MAX_LINES)]


class StockInBody(Body):
    """Goods received into a warehouse."""

    warehouse: WarehouseCode
    lines: Lines
    reason: Reason | None = None
    reference: Reference | None = None


class IssueBody(Body):
    """Goods issued directly (counter sale, scrap, negative adjustment)."""

    warehouse: WarehouseCode
    lines: Lines
    reason: Reason
    reference: Reference | None = None


class ShipBody(Body):
    """Ship a reserved order."""

    order_id: OrderId
    reference: Reference | None = None


class AdjustBody(Body):
    """Cycle count: set on_hand to what was counted (optionally only if it is `expected`)."""

    warehouse: WarehouseCode
    sku: Sku
    counted: Annotated[StrictInt, Field(ge=0, le=m.MAX_QTY)]
    expected: Annotated[StrictInt, Field(ge=0, le=m.MAX_QTY)] | None = None
    reason: Reason = "cycle count"


class TransferBody(Body):
    """Move goods between warehouses."""

    source: WarehouseCode
    destination: WarehouseCode
    lines: Lines
    reason: Reason | None = None
    reference: Reference | None = None


class OrderBody(Body):
    """A sales order: every line is reserved, or none."""

    order_id: OrderId | None = None
    warehouse: WarehouseCode
    lines: Lines
    customer: Text(m.TEXT_MAX["customer"]) | None = None
    hold_seconds: Annotated[StrictInt, Field(ge=1, le=30 * 24 * 3600)] | None = None


class ProductBody(Body):
    name: Text(m.TEXT_MAX["name"], 1)
    unit: Text(m.TEXT_MAX["unit"], 1) = "pcs"
    reorder_point: Annotated[StrictInt, Field(ge=0, le=m.MAX_QTY)] = 0
    track_inventory: StrictBool = True


class WarehouseBody(Body):
    name: Text(m.TEXT_MAX["name"], 1)


class ReconcileBody(Body):
    run_key: Text(100, 1) | None = None
    repair: StrictBool = True


def lines_of(body: StockInBody | IssueBody | TransferBody | OrderBody) -> tuple[m.Line, ...]:
    return m.parse_lines([line.model_dump() for line in body.lines])
