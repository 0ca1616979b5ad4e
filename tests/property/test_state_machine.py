"""Stateful property test: the stock services on the REAL stores against a simple model.

A hypothesis ``RuleBasedStateMachine`` drives ``receive_stock``, ``issue_stock``,
``place_order``, ``cancel_order``, ``ship_order``, ``adjust_stock`` and ``transfer_stock``
(unknown SKUs, shortages, wrong counts and closed orders included), replays of earlier
idempotency keys (same body, and another body), gate flushes, invalidations and rebuilds, and
database writes that fail after their work (a transaction wrapper that raises once ``work``
returned, so the transaction rolls back after the Redis hold was taken). It runs on a SQLite
file and on a MariaDB database (one per run, emptied before each example) with the real
Redis under a unique key prefix per example (only that prefix is ever deleted).

The model (tests/property/model.py) is on_hand / reserved per (warehouse, sku) and the
status of each order. After every step it checks:

* available >= 0, reserved >= 0 for every balance; balance == the sum of its ledger;
* model == MySQL/SQLite (balances and order statuses); one stock.changed outbox row per
  ledger row;
* Redis == database: every level the gate has equals the database row (on_hand, reserved,
  version) with nothing held, no hold is registered, and a ready warehouse has every level;
* a replay of a key whose first call succeeded answers the first answer (``replayed``) and
  changes nothing; a key whose first call was refused or failed is evaluated afresh; another
  body under a succeeded key is refused with ``IdempotencyConflict``.

Replaying a failure exactly: every run uses one seed (random, or ``PSI_PROPERTY_SEED``), and
a failing run prints it. Run again with that seed, e.g.::

    PSI_PROPERTY_SEED=1234 CI=true .venv/bin/pytest tests/property/test_state_machine.py -k mysql

(``-k sqlite`` for the SQLite backend). The example database is off, so the seed alone
decides the examples. Shrinking re-runs many sequences on the real stores and can take
minutes, so it is off unless ``PSI_PROPERTY_SHRINK=1``: replay a failing seed with it to get
the smallest failing sequence. ``PSI_PROPERTY_EXAMPLES=200`` explores longer (default 50).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from psi_local.invariants import balance_findings
from shared_lib import topics
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.adapters.redis_journal import RedisJournal
from shared_lib.adapters.sql import SqlTransactions
from shared_lib.domain.errors import (
    IdempotencyConflict,
    PsiError,
)
from shared_lib.domain.model import (
    AdjustStock,
    CancelOrder,
    Command,
    IssueStock,
    Line,
    PlaceOrder,
    ReceiveStock,
    RequestMeta,
    ShipOrder,
    TransferStock,
    parse_lines,
)
from shared_lib.services import (
    Deps,
    Outcome,
    adjust_stock,
    cancel_order,
    issue_stock,
    place_order,
    receive_stock,
    ship_order,
    transfer_stock,
)
from shared_lib.services.cache import rebuild_all, rebuild_warehouse
from shared_lib.services.ports import StockStore
from tests.conftest import seed_catalog
from tests.property.model import GHOST, SKUS, WAREHOUSES, Call, Model, altered

T = TypeVar("T")

SEED = int(os.environ.get("PSI_PROPERTY_SEED") or random.SystemRandom().randrange(2**32))
SHRINK = os.environ.get("PSI_PROPERTY_SHRINK", "") not in ("", "0")
MUTABLE_TABLES = (
    t.movements,
    t.order_lines,
    t.orders,
    t.outbox,
    t.idempotency_records,
    t.processed_events,
    t.reconciliation_runs,
    t.stock_levels,
)
SETTINGS = settings(
    max_examples=int(os.environ.get("PSI_PROPERTY_EXAMPLES") or 50),
    stateful_step_count=30,
    deadline=None,
    database=None,
    print_blob=False,
    # shrinking re-runs many sequences on the real stores (minutes): opt in to it
    phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else []),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Service = Callable[[Deps, Any, RequestMeta], Outcome]
SERVICES: dict[type[Command], Service] = {
    ReceiveStock: receive_stock,
    IssueStock: issue_stock,
    PlaceOrder: place_order,
    CancelOrder: cancel_order,
    ShipOrder: ship_order,
    AdjustStock: adjust_stock,
    TransferStock: transfer_stock,
}


class WriteFailed(Exception):
    """The database write failed after its work (then the transaction rolls back)."""


class FailingTransactions:
    """Runs the work in a real transaction, then raises: nothing of it is committed."""

    def __init__(self, inner: SqlTransactions) -> None:
        self.inner = inner

    def run(self, work: Callable[[StockStore], T]) -> T:
        def fail_after(store: StockStore) -> T:
            work(store)
            raise WriteFailed("the database write failed after its work")

        return self.inner.run(fail_after)


# ---- strategies ------------------------------------------------------------------------

warehouses = st.sampled_from(WAREHOUSES)
skus = st.sampled_from(SKUS * 6 + (GHOST,))  # an unknown SKU now and then
raw_lines = st.lists(st.tuples(skus, st.integers(1, 6)), min_size=1, max_size=3)
receipts = st.lists(st.tuples(skus, st.integers(1, 20)), min_size=1, max_size=3)
OPENING = 8  # units of every SKU in every warehouse before the first rule


def lines_of(raw: list[tuple[str, int]]) -> tuple[Line, ...]:
    """As the HTTP layer does: repeated SKUs merged, lines in SKU order."""
    return parse_lines([{"sku": s, "qty": q} for s, q in raw])


# ---- the machine -----------------------------------------------------------------------


class StockMachine(RuleBasedStateMachine):
    engine: ClassVar[sa.Engine]
    tx: ClassVar[SqlTransactions]
    client: ClassVar[redis.Redis]

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as conn:
            for table in MUTABLE_TABLES:
                conn.execute(table.delete())
        self.prefix = f"psip{uuid.uuid4().hex[:10]}"
        self.gate = RedisGate(self.client, prefix=self.prefix)
        rebuild_all(self.tx, self.gate)
        # no background rebuilds: a warehouse is rebuilt when a rule says so (deterministic);
        # orders go through group commit, as in production (each leads its own batch here)
        self.deps = Deps(tx=self.tx, gate=self.gate, journal=RedisJournal(self.gate))
        self.failing = Deps(tx=FailingTransactions(self.tx), gate=self.gate, read_tx=self.tx)
        self.model = Model()
        self.calls: list[Call] = []
        self.serial = 0
        for wh in WAREHOUSES:
            opening = ReceiveStock(wh, tuple(Line(sku, OPENING) for sku in SKUS), "opening")
            self.execute(opening, f"opening-{wh}")

    def teardown(self) -> None:
        keys = list(self.client.scan_iter(match=f"{{{self.prefix}:*", count=1000))
        if keys:
            self.client.delete(*keys)

    # -- helpers
    def fresh_key(self) -> str:
        self.serial += 1
        return f"k{self.serial}"

    def execute(self, command: Command, key: str, *, failing: bool = False) -> Call:
        """Run ``command`` and check it against the model's prediction; returns the call."""
        prediction = self.model.predict(command)
        service = SERVICES[type(command)]
        deps = self.failing if failing else self.deps
        try:
            outcome = service(deps, command, RequestMeta(key, actor="property"))
        except WriteFailed:
            assert failing and prediction.error is None, f"{command}: write failed unexpectedly"
            return Call(key, command, "failed")
        except PsiError as exc:
            assert prediction.error is not None and isinstance(exc, prediction.error), (
                f"{command} under {key}: refused with {exc!r}, model expected "
                f"{prediction.error.__name__ if prediction.error else 'success'}"
            )
            return Call(key, command, "refused")
        assert not failing, f"{command}: succeeded through a failing transaction"
        assert prediction.error is None, (
            f"{command} under {key}: succeeded, model expected {prediction.error.__name__}"
        )
        assert not outcome.replayed, f"{command} under a fresh key answered as a replay"
        prediction.apply()
        for level in outcome.body.get("levels", []):
            assert self.model.levels.get((level["warehouse"], level["sku"])) == [
                level["on_hand"],
                level["reserved"],
            ], f"{command}: answered level {level} differs from the model"
        return Call(key, command, "ok", outcome.body)

    def record(self, call: Call) -> None:
        self.calls.append(call)

    # -- stock movements
    @rule(wh=warehouses, raw=receipts)
    def receive(self, wh: str, raw: list[tuple[str, int]]) -> None:
        self.record(self.execute(ReceiveStock(wh, lines_of(raw), "receipt"), self.fresh_key()))

    @rule(wh=warehouses, raw=raw_lines)
    def issue(self, wh: str, raw: list[tuple[str, int]]) -> None:
        self.record(self.execute(IssueStock(wh, lines_of(raw), "scrap"), self.fresh_key()))

    @rule(
        wh=warehouses,
        sku=skus,
        counted=st.integers(0, 30),
        expected=st.sampled_from(("right", "none", "wrong")),
    )
    def adjust(self, wh: str, sku: str, counted: int, expected: str) -> None:
        on_hand = self.model.levels.get((wh, sku), (0, 0))[0]
        seen = {"right": on_hand, "none": None, "wrong": on_hand + 1}[expected]
        self.record(self.execute(AdjustStock(wh, sku, counted, seen), self.fresh_key()))

    @rule(src=warehouses, same=st.sampled_from((False,) * 5 + (True,)), raw=raw_lines)
    def transfer(self, src: str, same: bool, raw: list[tuple[str, int]]) -> None:
        dst = src if same else WAREHOUSES[src == WAREHOUSES[0]]
        command = TransferStock(src, dst, lines_of(raw), "rebalance")
        self.record(self.execute(command, self.fresh_key()))

    # -- orders
    @rule(wh=warehouses, raw=raw_lines)
    def place(self, wh: str, raw: list[tuple[str, int]]) -> None:
        key = self.fresh_key()
        self.record(self.execute(PlaceOrder(f"o-{key}", wh, lines_of(raw), "c"), key))

    @rule(data=st.data(), ship=st.booleans())
    def close_order(self, data: st.DataObject, ship: bool) -> None:
        known = sorted(self.model.orders)
        order_id = data.draw(st.sampled_from([*known, "o-unknown"]) if known else st.just("o-x"))
        command = ShipOrder(order_id, "DN-1") if ship else CancelOrder(order_id)
        self.record(self.execute(command, self.fresh_key()))

    # -- idempotency
    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.calls))
        if call.outcome != "ok":
            # a refused or failed request left no trace: its retry is evaluated afresh
            again = self.execute(call.command, call.key)
            call.outcome, call.body = again.outcome, again.body
            return
        service = SERVICES[type(call.command)]
        # also after the gate lost its state: a rebuild restores the request's marker
        outcome = service(self.deps, call.command, RequestMeta(call.key, actor="property"))
        assert outcome.replayed, f"replay of {call.key} was not answered as a replay"
        assert outcome.body == call.body, f"replay of {call.key} answered another answer"

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data())
    def reuse_key_with_another_body(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.calls))
        command = altered(call.command)
        if call.outcome != "ok":
            again = self.execute(command, call.key)
            call.command, call.outcome, call.body = command, again.outcome, again.body
            return
        service = SERVICES[type(command)]
        with pytest.raises(IdempotencyConflict):
            service(self.deps, command, RequestMeta(call.key, actor="property"))

    # -- a database write that fails after the gate's hold was taken
    @rule(
        kind=st.sampled_from(("place", "issue", "transfer", "receive")),
        wh=warehouses,
        raw=raw_lines,
    )
    def failing_write(self, kind: str, wh: str, raw: list[tuple[str, int]]) -> None:
        key = self.fresh_key()
        lines = lines_of(raw)
        command: Command = {
            "place": lambda: PlaceOrder(f"o-{key}", wh, lines),
            "issue": lambda: IssueStock(wh, lines, "scrap"),
            "transfer": lambda: TransferStock(wh, WAREHOUSES[wh == WAREHOUSES[0]], lines),
            "receive": lambda: ReceiveStock(wh, lines),
        }[kind]()
        self.record(self.execute(command, key, failing=True))

    # -- the gate loses its state or is rebuilt
    @rule()
    def flush_gate(self) -> None:
        keys = list(self.client.scan_iter(match=f"{{{self.prefix}:*", count=1000))
        if keys:
            self.client.delete(*keys)

    @rule(wh=warehouses)
    def invalidate(self, wh: str) -> None:
        self.gate.invalidate(wh)

    @rule(wh=st.sampled_from((*WAREHOUSES, None)))
    def rebuild(self, wh: str | None) -> None:
        if wh is None:
            rebuild_all(self.tx, self.gate)
        else:
            assert rebuild_warehouse(self.tx, self.gate, wh) is not None

    # -- invariants
    @invariant()
    def stores_agree_with_the_model(self) -> None:
        s, m, o = t.stock_levels, t.movements, t.orders
        with self.engine.connect() as conn:
            rows = {
                (r.warehouse, r.sku): (int(r.on_hand), int(r.reserved), int(r.version))
                for r in conn.execute(sa.select(s))
            }
            statuses = dict(conn.execute(sa.select(o.c.order_id, o.c.status)).all())
            movements = conn.execute(sa.select(sa.func.count()).select_from(m)).scalar_one()
            changed = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.outbox)
                .where(t.outbox.c.topic == topics.STOCK_CHANGED)
            ).scalar_one()
        balances = balance_findings(self.engine)
        assert balances.ok, balances.sample
        for where in set(rows) | set(self.model.levels):
            db = rows.get(where, (0, 0, 0))[:2]
            assert tuple(self.model.levels.get(where, (0, 0))) == db, (
                f"{where}: model {self.model.levels.get(where)} != database {db}"
            )
        assert statuses == {oid: o[2] for oid, o in self.model.orders.items()}
        assert movements == changed, f"{movements} ledger rows, {changed} stock.changed events"
        self._gate_agrees(rows)

    def _gate_agrees(self, rows: dict[tuple[str, str], tuple[int, int, int]]) -> None:
        for wh in WAREHOUSES:
            tag = self.gate.tag(wh)
            assert self.client.zcard(f"{tag}:holds") == 0, f"{wh}: a hold is outstanding"
            db = {sku: level for (w, sku), level in rows.items() if w == wh}
            cached = self.gate.read(wh, [*SKUS, GHOST])
            assert GHOST not in cached
            for sku, got in cached.items():
                assert got.held == 0, f"{wh}/{sku}: {got.held} units held after the call"
                assert (got.on_hand, got.reserved, got.version) == db.get(sku), (
                    f"{wh}/{sku}: gate {(got.on_hand, got.reserved, got.version)} "
                    f"!= database {db.get(sku)}"
                )
            if self.gate.is_ready(wh):
                assert set(cached) == set(db), (
                    f"{wh} is ready without levels {set(db) - set(cached)}"
                )


@pytest.fixture
def machine(engine: sa.Engine, tx: SqlTransactions, redis_client: redis.Redis) -> type:
    seed_catalog(engine, dict.fromkeys(SKUS, 0), WAREHOUSES)
    StockMachine.engine, StockMachine.tx, StockMachine.client = engine, tx, redis_client
    return StockMachine


def test_services_keep_the_stores_in_step_with_a_model(machine: type) -> None:
    try:
        run_state_machine_as_test(seed(SEED)(machine), settings=SETTINGS)
    except BaseException as exc:
        message = f"replay this run with PSI_PROPERTY_SEED={SEED} (PSI_PROPERTY_SHRINK=1 shrinks)"
        print(message)
        exc.add_note(message)
        raise
    print(f"seed {SEED}")
