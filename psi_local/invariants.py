"""The product's invariants, checked against the real stores: one module for the tests, the
fault tests and the bench.

* Balances: nothing negative (reserved >= 0, available = on_hand - reserved >= 0), and every
  balance is the sum of its ledger (no ledger rows without a balance either). The database
  adds the ledger up; memory stays flat however many balances there are.
* Gate: every warehouse that has balances is ready, every balance's (on_hand, reserved,
  version) is in Redis, and every held unit belongs to a hold that is registered; once the
  system is settled, no hold is left at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared_lib.adapters.redis_gate import RedisGate

SAMPLE = 20
PAGE = 20_000

_LEDGER = (
    "SELECT warehouse, sku, SUM(delta_on_hand) AS oh, SUM(delta_reserved) AS rs"
    " FROM movements GROUP BY warehouse, sku"
)
_MISMATCHED = (
    f"SELECT s.warehouse, s.sku, s.on_hand, s.reserved, m.oh, m.rs FROM stock_levels s"
    f" LEFT JOIN ({_LEDGER}) m ON m.warehouse = s.warehouse AND m.sku = s.sku"
    " WHERE COALESCE(m.oh, 0) <> s.on_hand OR COALESCE(m.rs, 0) <> s.reserved"
)
_ORPHANED = (
    f"SELECT m.warehouse, m.sku FROM ({_LEDGER}) m LEFT JOIN stock_levels s"
    " ON s.warehouse = m.warehouse AND s.sku = m.sku WHERE s.sku IS NULL"
)
_NEGATIVE = (
    "SELECT warehouse, sku, on_hand, reserved FROM stock_levels"
    " WHERE reserved < 0 OR on_hand - reserved < 0"
)


@dataclass
class Findings:
    """How many were checked, how many broke a rule, and the first of them, in words."""

    checked: int = 0
    broken: Counter[str] = field(default_factory=Counter)
    sample: list[str] = field(default_factory=list)

    def add(self, rule: str, text: str) -> None:
        self.broken[rule] += 1
        if len(self.sample) < SAMPLE:
            self.sample.append(text)

    @property
    def ok(self) -> bool:
        return not self.broken


def balance_findings(engine: Engine) -> Findings:
    found = Findings()
    with engine.connect() as conn:
        found.checked = int(conn.exec_driver_sql("SELECT COUNT(*) FROM stock_levels").scalar_one())
        for w, sku, oh, rs in conn.exec_driver_sql(_NEGATIVE):
            found.add("negative", f"{w}/{sku}: on_hand={oh} reserved={rs}")
        for w, sku, oh, rs, loh, lrs in conn.exec_driver_sql(_MISMATCHED):
            found.add("ledger", f"{w}/{sku}: balance ({oh}, {rs}) != ledger ({loh}, {lrs})")
        for w, sku in conn.exec_driver_sql(_ORPHANED):
            found.add("ledger_orphan", f"{w}/{sku}: ledger rows without a balance")
    return found


def _levels(engine: Engine) -> Iterator[tuple[str, list[tuple[str, int, int, int]]]]:
    """Every warehouse's balances, a keyset page at a time."""
    with engine.connect() as conn:
        warehouses = list(
            conn.exec_driver_sql("SELECT DISTINCT warehouse FROM stock_levels").scalars()
        )
    query = sa.text(
        "SELECT sku, on_hand, reserved, version FROM stock_levels"
        " WHERE warehouse = :w AND sku > :s ORDER BY sku LIMIT :n"
    )
    for warehouse in sorted(warehouses):
        after = ""
        while True:
            with engine.connect() as conn:
                rows = conn.execute(query, {"w": warehouse, "s": after, "n": PAGE}).all()
            if not rows:
                break
            yield warehouse, [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]
            after = rows[-1][0]


def _registered_holds(gate: RedisGate, warehouse: str) -> Counter[str]:
    """Units held per sku by the holds the gate has registered (its holds zset)."""
    held: Counter[str] = Counter()
    tag = gate.tag(warehouse)
    for req in gate.client.zrange(f"{tag}:holds", 0, -1):
        name = req.decode() if isinstance(req, bytes) else str(req)
        for sku, qty in gate.client.hgetall(f"{tag}:hold:{name}").items():
            held[sku.decode() if isinstance(sku, bytes) else str(sku)] += int(qty)
    return held


def gate_findings(
    engine: Engine,
    gate: RedisGate,
    *,
    settled: bool,
    only_skus: Collection[str] | None = None,
) -> Findings:
    """Redis == the database. ``settled``: no request is in flight, so no hold may be left."""
    found = Findings()
    ready: dict[str, bool] = {}
    holds: dict[str, Counter[str]] = {}
    for warehouse, page in _levels(engine):
        if warehouse not in ready:
            ready[warehouse] = gate.is_ready(warehouse)
            if not ready[warehouse]:
                found.add("not_ready", f"{warehouse}: gate not ready")
            holds[warehouse] = _registered_holds(gate, warehouse)
            if settled and holds[warehouse]:
                found.add("holds_left", f"{warehouse}: holds left {dict(holds[warehouse])}")
        rows = page if only_skus is None else [r for r in page if r[0] in only_skus]
        cached = gate.read(warehouse, [r[0] for r in rows]) if rows else {}
        for sku, on_hand, reserved, version in rows:
            found.checked += 1
            got = cached.get(sku)
            where = f"{warehouse}/{sku}"
            if got is None:
                found.add("missing", f"{where}: missing in the gate")
                continue
            if (got.on_hand, got.reserved, got.version) != (on_hand, reserved, version):
                found.add(
                    "mismatch",
                    f"{where}: gate {(got.on_hand, got.reserved, got.version)}"
                    f" != database {(on_hand, reserved, version)}",
                )
            expected = holds[warehouse].get(sku, 0)
            if got.held != expected:
                found.add("held", f"{where}: held {got.held} != registered holds {expected}")
    return found
