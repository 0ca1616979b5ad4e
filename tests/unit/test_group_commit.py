"""The group-commit batch on in-memory fakes: one transaction for many orders, the same
answers the one-by-one path gives, and one-by-one when the batch as a whole is refused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import timedelta

import pytest

from shared_lib import topics
from shared_lib.domain.errors import (
    IdempotencyConflict,
    InsufficientStock,
    OrderExists,
    Shortfall,
    StoreUnavailable,
    UnknownSku,
    restore,
)
from shared_lib.domain.model import (
    AdjustStock,
    Command,
    Level,
    Line,
    Order,
    OrderStatus,
    PlaceOrder,
    Product,
    ReceiveStock,
    RequestMeta,
    TransferStock,
    Warehouse,
    utcnow,
)
from shared_lib.services import Deps
from shared_lib.services.group_commit import Pending, Result, persist
from shared_lib.services.orders import _reserve
from tests.fakes import FakeTransactions


@pytest.fixture
def tx() -> FakeTransactions:
    tx = FakeTransactions()
    for sku, rp in (("A", 0), ("B", 7)):
        tx.state.products[sku] = Product(sku, sku, reorder_point=rp)
    tx.state.warehouses["W1"] = Warehouse("W1", "W1")
    tx.state.levels[("W1", "A")] = Level("A", "W1", 10, 0, 1)
    tx.state.levels[("W1", "B")] = Level("B", "W1", 10, 0, 1)
    return tx


@pytest.fixture
def deps(tx: FakeTransactions) -> Deps:
    return Deps(tx=tx)


def pending(order_id: str, key: str | None = None, **qty: int) -> Pending:
    now = utcnow()
    lines = tuple(Line(s, q) for s, q in sorted(qty.items()))
    order = Order(order_id, "W1", OrderStatus.RESERVED, lines, now + timedelta(minutes=15))
    fingerprint = PlaceOrder(order_id, "W1", lines).fingerprint()
    return Pending(order, RequestMeta(key or f"key-{order_id}", "tester"), fingerprint, now)


def run(deps: Deps, batch: list[Pending]) -> tuple[dict[str, Result], list[Level]]:
    return persist(deps, "W1", batch, lambda p: _reserve(deps, p))


def test_a_batch_is_one_transaction_with_a_running_ledger(deps: Deps, tx: FakeTransactions):
    batch = [pending("o1", A=2), pending("o2", A=3, B=4), pending("o3", B=1)]
    results, levels = run(deps, batch)
    assert tx.commits == 1
    assert {lv.sku: (lv.on_hand, lv.reserved) for lv in levels} == {"A": (10, 5), "B": (10, 5)}
    # the ledger tells the batch as a sequence of orders: reserved_after runs up per SKU
    rows = [(m["order_id"], m["sku"], m["reserved_after"]) for m in tx.state.movements]
    assert rows == [("o1", "A", 2), ("o2", "A", 5), ("o2", "B", 4), ("o3", "B", 5)]
    body = results[batch[1].request].body
    assert body is not None and body["order_id"] == "o2"
    assert [(lv["sku"], lv["reserved"]) for lv in body["levels"]] == [("A", 5), ("B", 4)]
    kinds = [topic for topic, _, _ in tx.state.outbox]
    assert kinds.count(topics.ORDER_CREATED) == 3
    assert kinds.count(topics.STOCK_CHANGED) == 4
    # B crossed its reorder point (7) once: available 10 -> 6 on o2
    assert kinds.count(topics.STOCK_LOW) == 1
    assert set(tx.state.records) == {"key-o1", "key-o2", "key-o3"}


def test_each_entry_gets_the_answer_the_one_by_one_path_would_give(
    deps: Deps, tx: FakeTransactions
):
    first = pending("o1", A=1)
    run(deps, [first])
    batch = [
        first,  # already recorded: its first answer again
        pending("o1", key="other-key", A=1),  # the order id is taken
        pending("o3", Z=1),  # unknown sku
        pending("o4", A=1),
    ]
    results, _ = run(deps, batch)
    replayed = results[batch[0].request]
    assert replayed.replayed and replayed.body == tx.state.records["key-o1"][1]
    assert isinstance(results[batch[1].request].error, OrderExists)
    assert isinstance(results[batch[2].request].error, UnknownSku)
    assert results[batch[3].request].body is not None
    reused = pending("o2", key="key-o1", A=2)  # the same key with another body
    assert isinstance(run(deps, [reused])[0][reused.request].error, IdempotencyConflict)
    assert tx.state.levels[("W1", "A")].reserved == 2
    assert sorted(tx.state.orders) == ["o1", "o4"]


def test_a_batch_that_does_not_fit_commits_exactly_the_orders_that_do(
    deps: Deps, tx: FakeTransactions
):
    batch = [pending(f"o{i}", A=3) for i in range(5)]  # 15 wanted, 10 on hand
    results, levels = run(deps, batch)
    won = [p for p in batch if results[p.request].body is not None]
    lost = [results[p.request].error for p in batch if results[p.request].error is not None]
    assert len(won) == 3 and len(lost) == 2
    assert all(isinstance(e, InsufficientStock) for e in lost)
    assert tx.state.levels[("W1", "A")].reserved == 9
    assert [lv.reserved for lv in levels] == [9]
    assert len(tx.state.movements) == 3 and len(tx.state.records) == 3


def test_a_lost_database_answers_every_entry_and_writes_nothing(deps: Deps, tx: FakeTransactions):
    tx.fail_next = StoreUnavailable("database")
    batch = [pending("o1", A=1), pending("o2", A=1)]
    results, levels = run(deps, batch)
    assert levels == []
    assert all(isinstance(results[p.request].error, StoreUnavailable) for p in batch)
    assert tx.state.orders == {} and tx.state.movements == []


def test_a_reply_restores_the_error_with_its_details():
    error = InsufficientStock("W1", [Shortfall("A", 3, 1)])
    data = json.loads(Result(error=error).reply())["error"]
    again = restore(data)
    assert type(again) is InsufficientStock
    assert again.as_dict() == error.as_dict()
    assert again.shortfalls == error.shortfalls


@pytest.mark.parametrize(
    "command",
    [
        PlaceOrder("o1", "W1", (Line("A", 2), Line("B", 1)), customer="c", hold_seconds=60),
        PlaceOrder("o2", "W1", (Line("A", 1),)),
        ReceiveStock("W1", (Line("A", 5),), reason="po", reference=None),
        TransferStock("W1", "W2", (Line("A", 1),)),
        AdjustStock("W1", "A", 3, expected=4),
    ],
)
def test_fingerprints_are_the_canonical_json_of_the_whole_command(command: Command):
    # the stored idempotency records and gate markers depend on this staying the same
    body = json.dumps(
        {"kind": command.kind, **asdict(command)},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    assert command.fingerprint() == hashlib.sha256(body.encode()).hexdigest()


def test_every_batch_is_told_with_its_size_and_how_it_was_written(deps: Deps, tx: FakeTransactions):
    flushes: list[tuple[int, bool]] = []
    deps.on_flush = lambda size, one_by_one: flushes.append((size, one_by_one))
    run(deps, [pending("o1", A=2), pending("o2", A=3)])
    run(deps, [pending(f"p{i}", A=3) for i in range(3)])  # 9 wanted, 5 left
    assert flushes == [(2, False), (3, True)]
