"""The use cases on in-memory fakes: the order path, idempotency, compensation, degraded mode."""

from __future__ import annotations

import pytest

from shared_lib import topics
from shared_lib.domain.errors import (
    CountMismatch,
    IdempotencyConflict,
    InsufficientStock,
    InvalidOrderState,
    InvalidRequest,
    RequestInProgress,
    StoreUnavailable,
    UnknownSku,
    UnknownWarehouse,
)
from shared_lib.domain.model import (
    AdjustStock,
    CancelOrder,
    IssueStock,
    Line,
    PlaceOrder,
    Product,
    ReceiveStock,
    RequestMeta,
    ShipOrder,
    TransferStock,
    Warehouse,
    parse_lines,
)
from shared_lib.services import (
    Deps,
    adjust_stock,
    cancel_order,
    issue_stock,
    place_order,
    receive_stock,
    ship_order,
    transfer_stock,
)
from shared_lib.services.cache import rebuild_warehouse
from shared_lib.services.guard import request_id
from tests.fakes import FakeTransactions, MemoryGate


@pytest.fixture
def tx() -> FakeTransactions:
    tx = FakeTransactions()
    for sku, rp in (("A", 0), ("B", 5), ("C", 0)):
        tx.state.products[sku] = Product(sku, f"product {sku}", reorder_point=rp)
    for code in ("W1", "W2"):
        tx.state.warehouses[code] = Warehouse(code, code)
    return tx


@pytest.fixture
def gate(tx: FakeTransactions) -> MemoryGate:
    gate = MemoryGate()
    for wh in ("W1", "W2"):
        assert rebuild_warehouse(tx, gate, wh) == 0
    return gate


@pytest.fixture
def deps(tx: FakeTransactions, gate: MemoryGate) -> Deps:
    return Deps(tx=tx, gate=gate)


def lines(**qty: int) -> tuple[Line, ...]:
    return parse_lines([{"sku": s, "qty": q} for s, q in qty.items()])


def key(name: str) -> RequestMeta:
    return RequestMeta(idempotency_key=name, actor="tester")


def levels(tx: FakeTransactions) -> dict[tuple[str, str], tuple[int, int]]:
    return {k: (v.on_hand, v.reserved) for k, v in tx.state.levels.items()}


def ledger_matches_balances(tx: FakeTransactions) -> None:
    sums: dict[tuple[str, str], list[int]] = {}
    for m in tx.state.movements:
        s = sums.setdefault((m["warehouse"], m["sku"]), [0, 0])
        s[0] += m["delta_on_hand"]
        s[1] += m["delta_reserved"]
    assert {k: tuple(v) for k, v in sums.items()} == levels(tx)


def receive(deps: Deps, name: str = "r1", wh: str = "W1", **qty: int) -> None:
    receive_stock(deps, ReceiveStock(wh, lines(**qty)), key(name))


def test_receive_then_order_reserves_and_the_gate_agrees(deps, tx, gate):
    receive(deps, A=10, B=3)
    out = place_order(deps, PlaceOrder("o1", "W1", lines(A=4, B=3)), key("o1"))
    assert out.body["status"] == "reserved"
    assert {(lv["sku"], lv["available"]) for lv in out.body["levels"]} == {("A", 6), ("B", 0)}
    assert levels(tx) == {("W1", "A"): (10, 4), ("W1", "B"): (3, 3)}
    assert gate.available("W1", "A") == 6 and gate.available("W1", "B") == 0
    assert gate.holds == {}
    ledger_matches_balances(tx)
    topics_out = [t for t, _, _ in tx.state.outbox]
    assert topics_out.count(topics.STOCK_CHANGED) == 4
    assert topics.ORDER_CREATED in topics_out
    assert topics.STOCK_LOW not in topics_out  # B never was above its reorder point (5)


def test_low_stock_event_only_when_crossing_the_reorder_point(deps, tx):
    receive(deps, "r1", B=8)
    issue_stock(deps, IssueStock("W1", lines(B=2), "sale"), key("i1"))  # 8 -> 6: above 5
    assert [t for t, _, _ in tx.state.outbox].count(topics.STOCK_LOW) == 0
    issue_stock(deps, IssueStock("W1", lines(B=2), "sale"), key("i2"))  # 6 -> 4: crosses
    issue_stock(deps, IssueStock("W1", lines(B=1), "sale"), key("i3"))  # 4 -> 3: already low
    low = [e for t, _, e in tx.state.outbox if t == topics.STOCK_LOW]
    assert [e["data"]["available"] for e in low] == [4]


def test_one_short_line_reserves_nothing_and_names_the_line(deps, tx, gate):
    receive(deps, A=10, B=1)
    before, outbox_before = levels(tx), len(tx.state.outbox)
    with pytest.raises(InsufficientStock) as err:
        place_order(deps, PlaceOrder("o1", "W1", lines(A=2, B=3)), key("o1"))
    assert [s.as_dict() for s in err.value.shortfalls] == [
        {"sku": "B", "requested": 3, "available": 1}
    ]
    assert levels(tx) == before and len(tx.state.outbox) == outbox_before
    assert gate.available("W1", "A") == 10 and gate.holds == {}
    assert ("W1", request_id("o1")) not in gate.markers
    assert "o1" not in tx.state.orders


def test_short_in_the_gate_costs_no_database_transaction(deps, tx):
    receive(deps, A=1)
    commits = tx.commits
    with pytest.raises(InsufficientStock):
        place_order(deps, PlaceOrder("o1", "W1", lines(A=2)), key("o1"))
    assert tx.commits == commits


def test_same_key_three_times_has_one_effect_and_the_same_answer(deps, tx):
    receive(deps, A=10)
    command = PlaceOrder("o1", "W1", lines(A=3))
    answers = [place_order(deps, command, key("k")) for _ in range(3)]
    assert [a.replayed for a in answers] == [False, True, True]
    assert answers[0].body == answers[1].body == answers[2].body
    assert levels(tx)[("W1", "A")] == (10, 3)
    assert len(tx.state.orders) == 1


def test_same_key_with_another_body_is_rejected_and_changes_nothing(deps, tx):
    receive(deps, A=10)
    place_order(deps, PlaceOrder("o1", "W1", lines(A=3)), key("k"))
    before = levels(tx)
    with pytest.raises(IdempotencyConflict):
        place_order(deps, PlaceOrder("o1", "W1", lines(A=4)), key("k"))
    with pytest.raises(IdempotencyConflict):
        receive_stock(deps, ReceiveStock("W1", lines(A=1)), key("k"))
    assert levels(tx) == before


def test_replay_is_answered_by_the_database_when_the_gate_forgot(deps, tx, gate):
    receive(deps, A=10)
    first = place_order(deps, PlaceOrder("o1", "W1", lines(A=3)), key("k"))
    gate.markers.clear()
    again = place_order(deps, PlaceOrder("o1", "W1", lines(A=3)), key("k"))
    assert again.replayed and again.body == first.body
    assert gate.holds == {} and gate.available("W1", "A") == 7


def test_duplicate_still_in_flight_is_reported(deps, gate, tx):
    receive(deps, A=10)
    command = PlaceOrder("o1", "W1", lines(A=3))
    gate.markers[("W1", request_id("k"))] = command.fingerprint()
    with pytest.raises(RequestInProgress):
        place_order(deps, command, key("k"))


def test_database_failure_after_the_hold_releases_it(deps, tx, gate):
    receive(deps, A=10)
    command = PlaceOrder("o1", "W1", lines(A=4))
    tx.fail_next = StoreUnavailable("database")
    with pytest.raises(StoreUnavailable):
        place_order(deps, command, key("o1"))
    assert gate.available("W1", "A") == 10 and gate.holds == {}
    # the write may have committed, for all the caller knows: the marker stays, flagged
    assert gate.markers[("W1", request_id("o1"))] == "?" + command.fingerprint()
    assert levels(tx)[("W1", "A")] == (10, 0)
    out = place_order(deps, command, key("o1"))  # the database has no record: it runs
    assert out.body["status"] == "reserved" and not out.replayed
    assert levels(tx)[("W1", "A")] == (10, 4)


@pytest.mark.parametrize("sold_out", [False, True])
def test_a_commit_whose_answer_was_lost_is_answered_truly_on_retry(deps, tx, gate, sold_out):
    """The 503 of a commit whose acknowledgement was lost means "retry with the same key":
    the retry gets the first answer, even when the stock is gone by then."""
    receive(deps, A=10)
    command = PlaceOrder("o1", "W1", lines(A=4))
    tx.lose_answer_next = StoreUnavailable("database")
    with pytest.raises(StoreUnavailable):
        place_order(deps, command, key("o1"))
    assert levels(tx)[("W1", "A")] == (10, 4)  # it did commit
    if sold_out:
        place_order(deps, PlaceOrder("o2", "W1", lines(A=6)), key("o2"))
    again = place_order(deps, command, key("o1"))
    assert again.replayed and again.body["order_id"] == "o1"
    with pytest.raises(IdempotencyConflict):
        place_order(deps, PlaceOrder("o9", "W1", lines(A=1)), key("o1"))
    assert levels(tx)[("W1", "A")] == (10, 10 if sold_out else 4)


def test_degraded_mode_uses_the_database_guard(deps, tx, gate):
    receive(deps, A=5)
    gate.reachable = False
    out = place_order(deps, PlaceOrder("o1", "W1", lines(A=5)), key("o1"))
    assert out.degraded
    with pytest.raises(InsufficientStock) as err:
        place_order(deps, PlaceOrder("o2", "W1", lines(A=1)), key("o2"))
    assert err.value.shortfalls[0].available == 0
    assert levels(tx)[("W1", "A")] == (5, 5)


def test_not_ready_gate_asks_for_a_rebuild_and_the_rebuild_catches_up(tx):
    gate = MemoryGate()
    asked: list[str] = []
    deps = Deps(tx=tx, gate=gate, on_gate_not_ready=asked.append)
    receive(deps, A=5)
    place_order(deps, PlaceOrder("o1", "W1", lines(A=2)), key("o1"))
    assert asked == ["W1"]
    assert rebuild_warehouse(tx, gate, "W1") == 1
    assert gate.available("W1", "A") == 3
    with pytest.raises(InsufficientStock):
        place_order(deps, PlaceOrder("o2", "W1", lines(A=4)), key("o2"))


def test_rebuild_is_refused_when_invalidated_meanwhile(tx):
    gate = MemoryGate()
    generation = gate.generation("W1")
    gate.invalidate("W1")
    assert not gate.mark_ready("W1", generation)
    assert rebuild_warehouse(tx, gate, "W1") == 0 and gate.is_ready("W1")


def test_cancel_happens_once_like_ship_replayed_by_its_key(deps, tx, gate):
    receive(deps, A=5)
    place_order(deps, PlaceOrder("o1", "W1", lines(A=5)), key("o1"))
    out = cancel_order(deps, CancelOrder("o1"), key("c1"))
    assert out.body["status"] == "cancelled"
    assert levels(tx)[("W1", "A")] == (5, 0) and gate.available("W1", "A") == 5
    replay = cancel_order(deps, CancelOrder("o1"), key("c1"))
    assert replay.replayed and replay.body == out.body
    with pytest.raises(InvalidOrderState, match="is cancelled; cannot cancel"):
        cancel_order(deps, CancelOrder("o1"), key("c2"))
    assert levels(tx)[("W1", "A")] == (5, 0)
    with pytest.raises(InvalidOrderState):
        ship_order(deps, ShipOrder("o1"), key("s1"))
    ledger_matches_balances(tx)


def test_ship_takes_the_reserved_units_away(deps, tx, gate):
    receive(deps, A=5, C=2)
    place_order(deps, PlaceOrder("o1", "W1", lines(A=3, C=2)), key("o1"))
    out = ship_order(deps, ShipOrder("o1"), key("s1"))
    assert out.body["status"] == "shipped"
    assert levels(tx) == {("W1", "A"): (2, 0), ("W1", "C"): (0, 0)}
    assert gate.available("W1", "A") == 2
    with pytest.raises(InvalidOrderState):
        ship_order(deps, ShipOrder("o1"), key("s2"))
    with pytest.raises(InvalidOrderState):
        cancel_order(deps, CancelOrder("o1"), key("c1"))
    ledger_matches_balances(tx)


def test_adjust_compares_and_refuses_going_below_reserved(deps, tx):
    receive(deps, A=10)
    place_order(deps, PlaceOrder("o1", "W1", lines(A=4)), key("o1"))
    with pytest.raises(CountMismatch):
        adjust_stock(deps, AdjustStock("W1", "A", counted=8, expected=9), key("a1"))
    with pytest.raises(InvalidRequest) as err:
        adjust_stock(deps, AdjustStock("W1", "A", counted=3), key("a2"))
    assert err.value.field == "counted"
    out = adjust_stock(deps, AdjustStock("W1", "A", counted=8, expected=10), key("a3"))
    assert out.body["levels"][0]["on_hand"] == 8
    ledger_matches_balances(tx)


def test_transfer_moves_between_warehouses_in_one_transaction(deps, tx, gate):
    receive(deps, A=10)
    transfer_stock(deps, TransferStock("W1", "W2", lines(A=4)), key("t1"))
    assert levels(tx)[("W1", "A")] == (6, 0) and levels(tx)[("W2", "A")] == (4, 0)
    assert gate.available("W1", "A") == 6 and gate.available("W2", "A") == 4
    with pytest.raises(InsufficientStock):
        transfer_stock(deps, TransferStock("W1", "W2", lines(A=7)), key("t2"))
    with pytest.raises(InvalidRequest):
        transfer_stock(deps, TransferStock("W1", "W1", lines(A=1)), key("t3"))
    ledger_matches_balances(tx)


def test_unknown_sku_and_warehouse_are_named(deps):
    with pytest.raises(UnknownSku):
        receive(deps, Z=1)
    with pytest.raises(UnknownWarehouse):
        receive(deps, "r2", wh="W9", A=1)
    with pytest.raises(UnknownSku):
        place_order(deps, PlaceOrder("o1", "W1", lines(Z=1)), key("o1"))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "lines"),
        ([{"sku": "A", "qty": 0}], "lines[0].qty"),
        ([{"sku": "A", "qty": 1.5}], "lines[0].qty"),
        ([{"sku": "A", "qty": True}], "lines[0].qty"),
        ([{"sku": "", "qty": 1}], "lines[0].sku"),
        ([{"sku": "A B", "qty": 1}], "lines[0].sku"),
        ([{"sku": "A\n", "qty": 1}], "lines[0].sku"),
        ([{"sku": "A", "qty": 1}, "x"], "lines[1]"),
    ],
)
def test_bad_lines_name_the_field(raw, field):
    with pytest.raises(InvalidRequest) as err:
        parse_lines(raw)
    assert err.value.field == field


def test_repeated_skus_merge_in_lock_order():
    assert parse_lines(
        [{"sku": "B", "qty": 1}, {"sku": "A", "qty": 2}, {"sku": "B", "qty": 3}]
    ) == (
        Line("A", 2),
        Line("B", 4),
    )


def test_every_event_the_services_write_matches_its_schema(deps, tx):
    from psi_local.events_schema import validate_event

    receive(deps, A=10, B=8)
    place_order(deps, PlaceOrder("o1", "W1", lines(A=2), customer="c-1"), key("o1"))
    place_order(deps, PlaceOrder("o2", "W1", lines(B=4)), key("o2"))
    ship_order(deps, ShipOrder("o1", reference="parcel-1"), key("s1"))
    cancel_order(deps, CancelOrder("o2"), key("c2"))
    issue_stock(deps, IssueStock("W1", lines(B=4), "scrap"), key("i1"))
    transfer_stock(deps, TransferStock("W1", "W2", lines(A=1)), key("t1"))
    adjust_stock(deps, AdjustStock("W1", "A", counted=5), key("a1"))
    seen = set()
    for topic, event_key, event in tx.state.outbox:
        validate_event(topic, event)
        assert event["type"] == topic
        assert event_key == event["subject"]
        seen.add(topic)
    assert seen == {
        topics.STOCK_CHANGED,
        topics.STOCK_LOW,
        topics.ORDER_CREATED,
        topics.ORDER_SHIPPED,
        topics.ORDER_CANCELLED,
    }


def test_replay_of_a_degraded_first_attempt_answers_the_first_answer(tx):
    gate = MemoryGate()
    deps = Deps(tx=tx, gate=gate)
    receive(deps, A=4)
    first = place_order(deps, PlaceOrder("o1", "W1", lines(A=4)), key("o1"))
    assert first.degraded
    assert rebuild_warehouse(tx, gate, "W1") == 1
    again = place_order(deps, PlaceOrder("o1", "W1", lines(A=4)), key("o1"))
    assert again.replayed and again.body == first.body
