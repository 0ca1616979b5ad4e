"""Drift: the rows a reconcile reports, how the gate is compared with a page of balances,
confirmed and repaired (compare-and-set on the version seen), and the orphans found."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from shared_lib.domain.model import Level
from shared_lib.services.reconcile.ports import Balance, GateReading, ReconcileGate, ReconcileStore

CONFIRM_ATTEMPTS = 3


SPOOL_BYTES = 4 * 1024 * 1024
GATE_MISSING = "gate_missing"
GATE_MISMATCH = "gate_mismatch"
GATE_NOT_READY = "gate_not_ready"
GATE_HELD = "gate_held_mismatch"
GATE_ORPHAN = "gate_orphan"
LEDGER_MISMATCH = "ledger_mismatch"


@dataclass(frozen=True)
class Drift:
    kind: str
    warehouse: str
    sku: str | None = None
    db_on_hand: int | None = None
    db_reserved: int | None = None
    db_version: int | None = None
    gate_on_hand: int | None = None
    gate_reserved: int | None = None
    gate_version: int | None = None
    ledger_on_hand: int | None = None
    ledger_reserved: int | None = None
    gate_held: int | None = None
    expected_held: int | None = None
    repaired: bool = False


DRIFT_COLUMNS = tuple(f.name for f in fields(Drift))


def with_db(drift: Drift, level: Level | None) -> Drift:
    if level is None:
        return drift
    return replace(
        drift, db_on_hand=level.on_hand, db_reserved=level.reserved, db_version=level.version
    )


def with_gate(drift: Drift, cached: GateReading | None) -> Drift:
    if cached is None:
        return drift
    return replace(
        drift,
        gate_on_hand=cached.on_hand,
        gate_reserved=cached.reserved,
        gate_version=cached.version,
    )


class DriftLog:
    """Drift rows spooled to a temporary file (memory only while small)."""

    def __init__(self) -> None:
        # closed by close(): the log outlives any one block
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_BYTES, mode="w+", newline=""
        )
        self.found = 0
        self.repaired = 0
        self.gates_rebuilt = 0  # warehouses brought back on the fast path: upkeep, not drift

    def add(self, drift: Drift) -> None:
        self.found += 1
        self.repaired += int(drift.repaired)
        self._file.write(json.dumps(asdict(drift), separators=(",", ":")) + "\n")

    def add_all(self, rows: Iterable[Drift]) -> None:
        for drift in rows:
            self.add(drift)

    def rows(self) -> Iterator[dict[str, Any]]:
        self._file.seek(0)
        for line in self._file:
            yield json.loads(line)

    def close(self) -> None:
        self._file.close()


def ledger_drift(balance: Balance) -> Drift:
    level = balance.level
    row = Drift(
        LEDGER_MISMATCH,
        level.warehouse,
        level.sku,
        ledger_on_hand=balance.ledger_on_hand,
        ledger_reserved=balance.ledger_reserved,
    )
    return with_db(row, level)


def _same(cached: GateReading | None, level: Level | None) -> bool:
    if cached is None or level is None:
        return cached is None and level is None
    return (cached.on_hand, cached.reserved, cached.version) == (
        level.on_hand,
        level.reserved,
        level.version,
    )


def compare_gate(
    records: ReconcileStore,
    gate: ReconcileGate,
    warehouse: str,
    page: Sequence[Balance],
    repair: bool,
) -> list[Drift]:
    """Drift between the gate and one page of balances, confirmed and (optionally) repaired."""
    seen = gate.read(warehouse, [b.level.sku for b in page])
    suspects: list[str] = []
    for balance in page:
        level = balance.level
        cached = seen.get(level.sku)
        if (
            cached is None
            or cached.version != level.version
            or cached.on_hand != level.on_hand
            or cached.reserved != level.reserved
        ):
            suspects.append(level.sku)
    if not suspects:
        return []
    # gate first, database second: a database row older than the gate reading is impossible
    cached = gate.read(warehouse, suspects)
    levels = records.levels(warehouse, suspects)
    found: dict[str, Drift] = {}
    for sku in suspects:
        level = levels.get(sku)
        if level is None or _same(cached.get(sku), level):
            continue  # a settle landed between the reads
        kind = GATE_MISSING if cached.get(sku) is None else GATE_MISMATCH
        found[sku] = with_gate(with_db(Drift(kind, warehouse, sku), level), cached.get(sku))
    if repair and found:
        for sku in _repair(records, gate, warehouse, found, levels, cached):
            found[sku] = replace(found[sku], repaired=True)
    return list(found.values())


def _repair(
    records: ReconcileStore,
    gate: ReconcileGate,
    warehouse: str,
    found: Mapping[str, Drift],
    levels: Mapping[str, Level],
    cached: Mapping[str, GateReading],
) -> set[str]:
    """Compare-and-set the gate from the database; a row counts as repaired once a re-read
    shows gate == database, whoever (this repair or a newer settle) put it there."""
    repaired: set[str] = set()
    pending = {sku: (_version(cached.get(sku)), levels[sku]) for sku in found}
    for _ in range(CONFIRM_ATTEMPTS):
        gate.repair(warehouse, list(pending.values()))
        skus = list(pending)
        after = gate.read(warehouse, skus)
        fresh = records.levels(warehouse, skus)
        for sku in skus:
            if _same(after.get(sku), fresh.get(sku)):
                repaired.add(sku)
                del pending[sku]
            elif sku in fresh:
                pending[sku] = (_version(after.get(sku)), fresh[sku])
            else:
                del pending[sku]
        if not pending:
            break
    return repaired


def _version(cached: GateReading | None) -> int | None:
    return None if cached is None else cached.version


def find_orphans(
    records: ReconcileStore, gate: ReconcileGate, warehouse: str, skus: Sequence[str]
) -> Iterator[Drift]:
    """Those of ``skus`` (gate levels) with no database balance (reported, never removed)."""
    missing = sorted(set(skus) - records.existing_skus(warehouse, skus))
    if not missing:
        return
    cached = gate.read(warehouse, missing)
    for sku in missing:
        yield with_gate(Drift(GATE_ORPHAN, warehouse, sku), cached.get(sku))
