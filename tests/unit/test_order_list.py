"""Order lists and movement filters on in-memory fakes: filters, newest first, keyset pages
across equal timestamps, and the 422s of bad filter values (each names its parameter)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared_lib.domain.catalog import PutProduct, PutWarehouse
from shared_lib.domain.errors import InvalidRequest
from shared_lib.domain.model import (
    CancelOrder,
    Line,
    OrderStatus,
    PlaceOrder,
    ReceiveStock,
    RequestMeta,
)
from shared_lib.services import Deps, cancel_order, place_order, receive_stock
from shared_lib.services.catalog import put_product, put_warehouse
from shared_lib.services.ports import TimeRange
from shared_lib.services.queries import (
    Page,
    encode_cursor,
    movements_list,
    order_view,
    orders_list,
    status_filter,
    text_filter,
    time_range,
)
from tests.fakes import FakeTransactions

T0 = datetime(2026, 11, 30, 8, 0, 0)


class Clock:
    """The time the services see; a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deps(clock: Clock) -> Deps:
    deps = Deps(tx=FakeTransactions(), clock=clock)
    for sku in ("A", "B"):
        put_product(deps, PutProduct(sku, f"product {sku}"), meta(f"p-{sku}"))
    for code in ("W1", "W2"):
        put_warehouse(deps, PutWarehouse(code, f"warehouse {code}"), meta(f"w-{code}"))
        lines = (Line("A", 1000), Line("B", 1000))
        receive_stock(deps, ReceiveStock(code, lines, reference=f"PO-{code}"), meta(f"r-{code}"))
    return deps


def meta(key: str) -> RequestMeta:
    return RequestMeta(idempotency_key=key, actor="tester")


def place(deps: Deps, order_id: str, wh: str = "W1", customer: str | None = None) -> None:
    command = PlaceOrder(order_id, wh, (Line("A", 1), Line("B", 2)), customer)
    place_order(deps, command, meta(order_id))


def ids(body: dict[str, Any]) -> list[str]:
    return [item["order_id"] for item in body["items"]]


def all_pages(fetch: Callable[[Page], dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = fetch(Page(limit, cursor))
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# ---- orders -----------------------------------------------------------------------------


def test_orders_come_newest_first_each_as_its_order_view(deps: Deps, clock: Clock) -> None:
    place(deps, "o1", customer="ACME")
    clock.now = T0 + timedelta(minutes=1)
    place(deps, "o2")
    body = orders_list(deps, Page())
    assert ids(body) == ["o2", "o1"] and body["next_cursor"] is None
    first = body["items"][1]
    assert first == order_view(deps, "o1")
    assert first["lines"] == [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}]
    assert first["customer"] == "ACME" and first["status"] == "reserved"


def test_orders_filter_by_status_warehouse_and_customer(deps: Deps, clock: Clock) -> None:
    placed = [("W1", "ACME"), ("W2", "ACME"), ("W1", "Bob"), ("W2", None)]
    for n, (wh, customer) in enumerate(placed):
        clock.now = T0 + timedelta(seconds=n)
        place(deps, f"o{n}", wh, customer)
    cancel_order(deps, CancelOrder("o2"), meta("c2"))

    assert ids(orders_list(deps, Page(), status=OrderStatus.CANCELLED)) == ["o2"]
    assert ids(orders_list(deps, Page(), status=OrderStatus.RESERVED)) == ["o3", "o1", "o0"]
    assert ids(orders_list(deps, Page(), status=OrderStatus.SHIPPED)) == []
    assert ids(orders_list(deps, Page(), warehouse="W2")) == ["o3", "o1"]
    assert ids(orders_list(deps, Page(), customer="ACME")) == ["o1", "o0"]
    assert ids(orders_list(deps, Page(), customer="acme")) == []
    both = orders_list(deps, Page(), warehouse="W1", customer="ACME", status=OrderStatus.RESERVED)
    assert ids(both) == ["o0"]
    assert ids(orders_list(deps, Page(), warehouse="W9")) == []


def test_orders_created_range_includes_from_and_excludes_to(deps: Deps, clock: Clock) -> None:
    for n in range(4):
        clock.now = T0 + timedelta(hours=n)
        place(deps, f"o{n}")
    window = TimeRange(T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    assert ids(orders_list(deps, Page(), created=window)) == ["o2", "o1"]
    assert ids(orders_list(deps, Page(), created=TimeRange(start=T0 + timedelta(hours=3)))) == [
        "o3"
    ]
    assert ids(orders_list(deps, Page(), created=TimeRange(end=T0 + timedelta(hours=1)))) == ["o0"]


def test_pages_of_orders_placed_at_the_same_instant_miss_none_and_repeat_none(
    deps: Deps, clock: Clock
) -> None:
    """A group commit writes a whole batch with one timestamp: the order id breaks the tie."""
    place(deps, "early")
    clock.now = T0 + timedelta(seconds=1)
    batch = [f"b{n:02d}" for n in range(7)]
    for order_id in batch:
        place(deps, order_id)
    clock.now = T0 + timedelta(seconds=2)
    place(deps, "late")
    for limit in (1, 2, 3, 7, 9):
        paged = [item["order_id"] for item in all_pages(lambda p: orders_list(deps, p), limit)]
        assert paged == ["late", *reversed(batch), "early"], limit
    cancel_order(deps, CancelOrder("b03"), meta("c3"))
    reserved = OrderStatus.RESERVED
    first = orders_list(deps, Page(1), status=reserved)
    rest = orders_list(deps, Page(100, first["next_cursor"]), status=reserved)
    assert ids(first) + ids(rest) == ["late", *reversed(batch[:3] + batch[4:]), "early"]


def test_a_cursor_of_another_list_is_refused(deps: Deps) -> None:
    place(deps, "o1")
    for foreign in (encode_cursor(7), encode_cursor("W1", "A"), encode_cursor("2026-13-01", "x")):
        with pytest.raises(InvalidRequest) as bad:
            orders_list(deps, Page(10, foreign))
        assert bad.value.field == "cursor"


# ---- movements --------------------------------------------------------------------------


def test_movements_filter_by_reference_and_time_with_sku_and_warehouse(
    deps: Deps, clock: Clock
) -> None:
    clock.now = T0 + timedelta(hours=1)
    receive_stock(deps, ReceiveStock("W1", (Line("A", 5),), reference="PO-9"), meta("r9"))
    clock.now = T0 + timedelta(hours=2)
    both = (Line("A", 1), Line("B", 1))
    receive_stock(deps, ReceiveStock("W2", both, reference="PO-9"), meta("r10"))

    def refs(**filters: Any) -> list[tuple[str, str, str | None]]:
        items = movements_list(deps, Page(), **filters)["items"]
        return [(m["warehouse"], m["sku"], m["reference"]) for m in items]

    assert refs(reference="PO-9") == [("W2", "B", "PO-9"), ("W2", "A", "PO-9"), ("W1", "A", "PO-9")]
    assert refs(reference="PO-9", warehouse="W2", sku="A") == [("W2", "A", "PO-9")]
    assert refs(reference="PO-W1") == [("W1", "B", "PO-W1"), ("W1", "A", "PO-W1")]
    assert refs(reference="PO-") == []
    hour_one = TimeRange(T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert refs(created=hour_one) == [("W1", "A", "PO-9")]
    assert len(refs(created=TimeRange(end=T0 + timedelta(hours=1)))) == 4
    assert refs(created=TimeRange(start=T0 + timedelta(hours=2)), sku="B") == [("W2", "B", "PO-9")]
    paged = all_pages(lambda p: movements_list(deps, p, reference="PO-9"), 1)
    assert [(m["warehouse"], m["sku"]) for m in paged] == [("W2", "B"), ("W2", "A"), ("W1", "A")]


# ---- filter values ----------------------------------------------------------------------


def test_status_filter_takes_the_order_statuses_only() -> None:
    assert status_filter({}) is None
    assert status_filter({"status": "shipped"}) is OrderStatus.SHIPPED
    for bad in ("", "SHIPPED", "open", "reserved "):
        with pytest.raises(InvalidRequest) as refused:
            status_filter({"status": bad})
        assert refused.value.field == "status"
        assert "reserved, shipped, cancelled, expired" in refused.value.message


def test_text_filters_are_exact_bounded_and_without_control_characters() -> None:
    assert text_filter({}, "customer") is None
    assert text_filter({"customer": ""}, "customer") is None
    assert text_filter({"customer": "ACME Ltd. / Zürich"}, "customer") == "ACME Ltd. / Zürich"
    assert text_filter({"reference": "r" * 100}, "reference") == "r" * 100
    for name, bad in (("reference", "r" * 101), ("customer", "a\x00b"), ("customer", "\u202eevil")):
        with pytest.raises(InvalidRequest) as refused:
            text_filter({name: bad}, name)
        assert refused.value.field == name


def test_time_range_reads_rfc_3339_and_keeps_utc() -> None:
    assert time_range({}, "from", "to") == TimeRange()
    window = time_range(
        {"from": "2026-11-30T10:00:00+02:00", "to": "2026-11-30t08:00:00.5z"}, "from", "to"
    )
    assert window == TimeRange(T0, T0 + timedelta(milliseconds=500))
    only_end = time_range({"created_to": "2026-11-30T08:00:00Z"}, "created_from", "created_to")
    assert only_end == TimeRange(None, T0)


def test_time_beyond_microseconds_rounds_up_so_both_bounds_keep_their_meaning() -> None:
    """from is inclusive and to exclusive: a row at 08:00:00.000000 is before both bounds
    given as 08:00:00.0000001, so neither may round down onto it."""
    window = time_range(
        {"from": "2026-11-30T08:00:00.0000001Z", "to": "2026-11-30T08:00:00.0000010Z"},
        "from",
        "to",
    )
    assert window == TimeRange(T0 + timedelta(microseconds=1), T0 + timedelta(microseconds=1))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": ""}, "from"),
        ({"from": "2026-11-30"}, "from"),
        ({"from": "2026-11-30T08:00:00"}, "from"),  # no offset: not RFC 3339
        ({"from": "2026-11-30 08:00:00Z"}, "from"),
        ({"from": "2026-11-30T08:00Z"}, "from"),
        ({"from": "2026-02-30T08:00:00Z"}, "from"),
        ({"from": "2026-11-30T24:00:00Z"}, "from"),
        ({"from": "2026-11-30T23:59:60Z"}, "from"),  # a leap second cannot be stored
        ({"from": "0000-01-01T00:00:00Z"}, "from"),
        ({"from": "2026-11-30T08:00:00+05:75"}, "from"),
        ({"from": "2026-11-30T08:00:00 01:00"}, "from"),  # a '+' that was not URL-encoded
        (
            {"from": "\uff12\uff10\uff12\uff16-11-30T08:00:00Z"},
            "from",
        ),  # digits, but not ASCII ones
        ({"from": "0001-01-01T00:00:00+01:00"}, "from"),  # before the first representable instant
        ({"to": "9999-12-31T23:59:59.9999999Z"}, "to"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-11-30T08:00:00Z", "to": "2026-11-30T08:00:00Z"}, "to"),
        ({"from": "2026-11-30T09:00:00Z", "to": "2026-11-30T10:00:00+02:00"}, "to"),
    ],
)
def test_bad_times_are_refused_naming_the_parameter(query: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        time_range(query, "from", "to")
    assert refused.value.field == field
