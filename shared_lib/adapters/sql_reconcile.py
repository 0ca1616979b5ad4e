"""Reconcile's reads and run records on the system of record (services.reconcile.ReconcileStore)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.sql import SqlStore, SqlTransactions
from shared_lib.domain.model import Level, OrderStatus
from shared_lib.services.reconcile import (
    FAILED,
    FINISHED,
    RUNNING,
    Balance,
    ExpiredHold,
    RunRecord,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# the ledger of one balance is a range of this index; MySQL/MariaDB may otherwise join on
# (sku, id) and read the movements of every warehouse
LEDGER_INDEX = next(
    index.name
    for index in t.movements.indexes
    if [c.name for c in index.columns] == ["warehouse", "sku", "id"]
)


class SqlReconcileStore:
    """services.reconcile.ReconcileStore over SQLAlchemy Core; one transaction per call,
    retried whole on deadlocks and lost connections."""

    def __init__(self, engine: Engine, *, attempts: int = 5) -> None:
        self.engine = engine
        self.tx = SqlTransactions(engine, attempts=attempts)

    def _run(self, work: Callable[[Connection], T], *, snapshot: bool = False) -> T:
        return self.tx.run_on_connection(work, snapshot=snapshot)

    # -- runs
    def claim(
        self, run_key: str, run_id: str, repair: bool, now: datetime, stale_before: datetime
    ) -> RunRecord:
        r = t.reconciliation_runs
        fresh = {
            "run_id": run_id,
            "status": RUNNING,
            "repair": repair,
            "started_at": now,
            "finished_at": None,
            "checked": 0,
            "drift_found": 0,
            "drift_repaired": 0,
            "expired_holds": 0,
            "outbox_redriven": 0,
            "gates_rebuilt": 0,
            "report_uri": None,
            "error": None,
        }

        def insert(conn: Connection) -> None:
            conn.execute(r.insert().values(run_key=run_key, **fresh))

        def take_over(conn: Connection) -> RunRecord | None:
            row = conn.execute(sa.select(r).where(r.c.run_key == run_key).with_for_update()).first()
            if row is None:
                return None
            stale = row.status == RUNNING and row.started_at < stale_before
            if row.status != FAILED and not stale:
                return _run_record(row)
            conn.execute(
                sa.update(r).where(r.c.run_key == run_key, r.c.run_id == row.run_id).values(fresh)
            )
            log.warning("reconcile run %s (%s) taken over by %s", run_key, row.run_id, run_id)
            return RunRecord(run_id, run_key, RUNNING, repair, now, claimed=True)

        for _ in range(3):
            try:
                self._run(insert)
                return RunRecord(run_id, run_key, RUNNING, repair, now, claimed=True)
            except sa.exc.IntegrityError:
                pass
            existing = self._run(take_over)
            if existing is not None:
                return existing
        raise AssertionError(f"run {run_key} neither insertable nor readable")

    def run(self, run_key: str) -> RunRecord | None:
        r = t.reconciliation_runs

        def read(conn: Connection) -> RunRecord | None:
            row = conn.execute(sa.select(r).where(r.c.run_key == run_key)).first()
            return _run_record(row) if row is not None else None

        return self._run(read)

    def finish(
        self,
        run_id: str,
        counts: Mapping[str, int],
        report_uri: str | None,
        error: str | None,
        event: dict[str, Any],
        key: str,
        now: datetime,
    ) -> bool:
        r = t.reconciliation_runs

        def work(conn: Connection) -> bool:
            done = conn.execute(
                sa.update(r)
                .where(r.c.run_id == run_id, r.c.status == RUNNING)
                .values(
                    status=FINISHED,
                    finished_at=now,
                    report_uri=report_uri,
                    error=error,
                    **counts,
                )
            )
            if done.rowcount != 1:
                return False
            SqlStore(conn).add_event(event["type"], key, event)
            return True

        return self._run(work)

    def fail(self, run_id: str, error: str, now: datetime) -> None:
        r = t.reconciliation_runs
        self._run(
            lambda conn: conn.execute(
                sa.update(r)
                .where(r.c.run_id == run_id, r.c.status == RUNNING)
                .values(status=FAILED, finished_at=now, error=error)
            )
        )

    # -- balances and ledger
    def count_levels(self) -> int:
        s = t.stock_levels
        return self._run(
            lambda conn: int(conn.execute(sa.select(sa.func.count()).select_from(s)).scalar_one())
        )

    def warehouse_codes(self) -> list[str]:
        w = t.warehouses
        return self._run(
            lambda conn: list(conn.execute(sa.select(w.c.code).order_by(w.c.code)).scalars())
        )

    def balances_page(self, warehouse: str, after_sku: str | None, limit: int) -> list[Balance]:
        s, m = t.stock_levels, t.movements

        def work(conn: Connection) -> list[Balance]:
            query = sa.select(s.c.sku, s.c.on_hand, s.c.reserved, s.c.version).where(
                s.c.warehouse == warehouse
            )
            if after_sku is not None:
                query = query.where(s.c.sku > after_sku)
            rows = conn.execute(query.order_by(s.c.sku).limit(limit)).all()
            if not rows:
                return []
            # the ledger is compared by the database, in the same snapshot and over the same
            # sku range: only the balances that differ from their ledger sum come back
            ledger_on_hand = sa.func.coalesce(sa.func.sum(m.c.delta_on_hand), 0)
            ledger_reserved = sa.func.coalesce(sa.func.sum(m.c.delta_reserved), 0)
            differ = (
                sa.select(s.c.sku, ledger_on_hand, ledger_reserved)
                .select_from(
                    s.outerjoin(m, sa.and_(m.c.warehouse == s.c.warehouse, m.c.sku == s.c.sku))
                )
                .where(s.c.warehouse == warehouse, s.c.sku >= rows[0].sku, s.c.sku <= rows[-1].sku)
                .group_by(s.c.sku)
                .having(
                    sa.or_(
                        ledger_on_hand != sa.func.max(s.c.on_hand),
                        ledger_reserved != sa.func.max(s.c.reserved),
                    )
                )
                .with_hint(m, f"USE INDEX ({LEDGER_INDEX})", dialect_name="mysql")
                .with_hint(m, f"USE INDEX ({LEDGER_INDEX})", dialect_name="mariadb")
            )
            ledger = {sku: (int(oh), int(rs)) for sku, oh, rs in conn.execute(differ)}
            # BIGINT columns come back as int; the loop runs once per balance, so it is lean
            return [
                Balance(Level(sku, warehouse, oh, rs, v), *ledger.get(sku, (oh, rs)))
                for sku, oh, rs, v in rows
            ]

        return self._run(work, snapshot=True)

    def levels(self, warehouse: str, skus: Sequence[str]) -> dict[str, Level]:
        s = t.stock_levels
        if not skus:
            return {}

        def work(conn: Connection) -> dict[str, Level]:
            rows = conn.execute(
                sa.select(s.c.sku, s.c.on_hand, s.c.reserved, s.c.version).where(
                    s.c.warehouse == warehouse, s.c.sku.in_(sorted(set(skus)))
                )
            )
            return {
                r.sku: Level(r.sku, warehouse, int(r.on_hand), int(r.reserved), int(r.version))
                for r in rows
            }

        return self._run(work)

    def existing_skus(self, warehouse: str, skus: Sequence[str]) -> set[str]:
        s = t.stock_levels
        wanted = sorted(set(skus))
        if not wanted:
            return set()
        where = (s.c.warehouse == warehouse, s.c.sku.in_(wanted))

        def work(conn: Connection) -> set[str]:
            # nearly always every sku exists: counting them spares reading them all back
            count = conn.execute(sa.select(sa.func.count()).select_from(s).where(*where))
            if count.scalar_one() == len(wanted):
                return set(wanted)
            return set(conn.execute(sa.select(s.c.sku).where(*where)).scalars())

        return self._run(work)

    # -- holds
    def expired_holds(
        self, now: datetime, after: ExpiredHold | None, limit: int
    ) -> list[ExpiredHold]:
        o = t.orders
        query = sa.select(o.c.order_id, o.c.hold_until).where(
            o.c.status == OrderStatus.RESERVED.value, o.c.hold_until < now
        )
        if after is not None:
            # keyset on (hold_until, order_id): rows that failed to expire are not met again
            query = query.where(
                sa.or_(
                    o.c.hold_until > after.hold_until,
                    sa.and_(o.c.hold_until == after.hold_until, o.c.order_id > after.order_id),
                )
            )
        query = query.order_by(o.c.hold_until, o.c.order_id).limit(limit)
        return self._run(
            lambda conn: [ExpiredHold(r.order_id, r.hold_until) for r in conn.execute(query)]
        )


def _run_record(row: Any) -> RunRecord:
    return RunRecord(
        run_id=row.run_id,
        run_key=row.run_key,
        status=row.status,
        repair=bool(row.repair),
        started_at=row.started_at,
        finished_at=row.finished_at,
        checked=int(row.checked),
        drift_found=int(row.drift_found),
        drift_repaired=int(row.drift_repaired),
        expired_holds=int(row.expired_holds),
        outbox_redriven=int(row.outbox_redriven),
        gates_rebuilt=int(row.gates_rebuilt),
        report_uri=row.report_uri,
        error=row.error,
    )
