"""hot_sku: many clients reserve qty 1 of ONE sku with plenty of stock, for a fixed time.

Variants (each on its own sku of the same fresh database, one after the other):
  mysql_for_update   SELECT ... FOR UPDATE, then UPDATE + ledger INSERT, one transaction
  mysql_conditional  UPDATE ... WHERE on_hand - reserved >= :qty, then ledger INSERT
  redis_evalsha      raw EVALSHA of a tiny check-and-decrement script (the ceiling)
  psi_order_path     shared_lib.services.place_order with group commit: Redis try_hold and
                     journal -> the flush leader writes the batch in one MySQL transaction
                     (balance, ledger, orders, lines, outbox, idempotency) -> answers
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from bench.clients import (
    PsiOrders,
    RawRedisDecrement,
    decrement_key,
    run_clients,
    summarize,
)
from bench.common import (
    BenchConfig,
    Scenario,
    ratio,
)
from bench.stores import (
    Stores,
    check_invariants,
    count_rows,
    level_of,
    load_gate,
    seed_levels,
)
from shared_lib.adapters.sql_engine import make_engine
from shared_lib.domain.model import utcnow

QUICK = {"clients": 8, "duration_s": 1.0}
FULL = {"clients": 64, "duration_s": 10.0}
WAREHOUSE = "W1"
STOCK = 1_000_000_000
SKUS = {
    "mysql_for_update": "HOT-FOR-UPDATE",
    "mysql_conditional": "HOT-CONDITIONAL",
    "redis_evalsha": "HOT-REDIS",
    "psi_order_path": "HOT-PSI",
}

_LOCK = sa.text(
    "SELECT on_hand, reserved FROM stock_levels WHERE warehouse = :w AND sku = :s FOR UPDATE"
)
_BUMP = sa.text(
    "UPDATE stock_levels SET reserved = reserved + :q, version = version + 1, updated_at = :now"
    " WHERE warehouse = :w AND sku = :s"
)
_BUMP_IF_AVAILABLE = sa.text(
    "UPDATE stock_levels SET reserved = reserved + :q, version = version + 1, updated_at = :now"
    " WHERE warehouse = :w AND sku = :s AND on_hand - reserved >= :q"
)
_LEDGER = sa.text(
    "INSERT INTO movements (kind, warehouse, sku, delta_on_hand, delta_reserved, on_hand_after,"
    " reserved_after, order_id, actor, idempotency_key, created_at)"
    " VALUES ('reserve', :w, :s, 0, :q, :oh, :rs, :o, 'bench', :o, :now)"
)
_LEDGER_FROM_ROW = sa.text(
    "INSERT INTO movements (kind, warehouse, sku, delta_on_hand, delta_reserved, on_hand_after,"
    " reserved_after, order_id, actor, idempotency_key, created_at)"
    " SELECT 'reserve', warehouse, sku, 0, :q, on_hand, reserved, :o, 'bench', :o, :now"
    " FROM stock_levels WHERE warehouse = :w AND sku = :s"
)


class _MySqlClient:
    def __init__(self, config: dict[str, Any], index: int) -> None:
        self.engine = make_engine(config["url"], pool_size=1)
        self.sku = config["sku"]
        self.tag = f"{config['tag']}-{index}"
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> dict[str, int]:
        self.engine.dispose()
        return {}


class ForUpdateClient(_MySqlClient):
    """Lock the row, check, then write: the textbook pessimistic reservation."""

    def op(self, i: int) -> str:
        p = {"w": WAREHOUSE, "s": self.sku, "q": 1, "o": f"{self.tag}-{i}", "now": utcnow()}
        with self.engine.begin() as conn:
            row = conn.execute(_LOCK, p).one()
            if int(row.on_hand) - int(row.reserved) < 1:
                return "short"
            conn.execute(_BUMP, p)
            conn.execute(_LEDGER, {**p, "oh": row.on_hand, "rs": int(row.reserved) + 1})
        return "ok"


class ConditionalClient(_MySqlClient):
    """One guarded UPDATE (the product's degraded mode), then the ledger row."""

    def op(self, i: int) -> str:
        p = {"w": WAREHOUSE, "s": self.sku, "q": 1, "o": f"{self.tag}-{i}", "now": utcnow()}
        with self.engine.begin() as conn:
            if conn.execute(_BUMP_IF_AVAILABLE, p).rowcount != 1:
                return "short"
            conn.execute(_LEDGER_FROM_ROW, p)
        return "ok"


def run(cfg: BenchConfig) -> Scenario:
    size = QUICK if cfg.quick else FULL
    scenario = Scenario("hot_sku", {**size, "stock": STOCK, "qty": 1, "warehouse": WAREHOUSE})
    with Stores(cfg, "hot") as stores:
        engine = stores.engine()
        seed_levels(engine, [WAREHOUSE], 0, STOCK, extra_skus=list(SKUS.values()))
        load_gate(stores)
        raw_key = decrement_key(stores.prefix, SKUS["redis_evalsha"])
        admin = stores.redis()
        admin.set(raw_key, STOCK)

        factories = {
            "mysql_for_update": ForUpdateClient,
            "mysql_conditional": ConditionalClient,
            "redis_evalsha": RawRedisDecrement,
            "psi_order_path": PsiOrders,
        }
        for variant, factory in factories.items():
            sku = SKUS[variant]
            config = stores.client_config(
                sku=sku, skus=[sku], key=raw_key, warehouse=WAREHOUSE, tag=variant
            )
            result = run_clients(
                factory, config, clients=size["clients"], duration=size["duration_s"]
            )
            summary = summarize(result)
            scenario.variants[variant] = summary
            ok = summary["succeeded"]
            scenario.check(f"{variant}.errors", summary["errors"], 0)
            if variant == "redis_evalsha":
                left = int(admin.get(raw_key) or 0)
                summary["decremented"] = STOCK - left
                scenario.check(f"{variant}.decrements_equal_successes", STOCK - left, ok)
                continue
            _, reserved = level_of(engine, WAREHOUSE, sku)
            ledger_rows = count_rows(engine, "movements", "sku = :s AND kind = 'reserve'", s=sku)
            summary["reserved_in_mysql"] = reserved
            summary["ledger_rows"] = ledger_rows
            scenario.check(f"{variant}.reserved_equals_successes", reserved, ok)
            scenario.check(f"{variant}.ledger_rows_equal_successes", ledger_rows, ok)
            if variant == "psi_order_path":
                orders = count_rows(engine, "order_lines", "sku = :s", s=sku)
                summary["orders"] = orders
                summary["degraded"] = summary["outcomes"].get("ok_degraded", 0)
                counters = summary.get("counters", {})
                if ok:
                    summary["statements_per_order"] = round(
                        counters.get("statements_won", 0) / ok, 2
                    )
                    summary["statements_holding_row_lock_per_order"] = round(
                        counters.get("statements_holding_row_lock", 0) / ok, 2
                    )
                scenario.check(f"{variant}.orders_equal_successes", orders, ok)
        admin.close()

        # the MySQL-only variants change their rows behind the gate's back, by design
        check_invariants(scenario, engine, stores, only_skus={SKUS["psi_order_path"]})
        engine.dispose()

    rate = {name: v["ops_per_s"] for name, v in scenario.variants.items()}
    scenario.target(
        "psi_vs_for_update",
        ratio(rate["psi_order_path"], rate["mysql_for_update"]),
        5.0,
        ">=",
        "psi_order_path ops/s / mysql_for_update ops/s",
    )
    scenario.target(
        "psi_vs_conditional",
        ratio(rate["psi_order_path"], rate["mysql_conditional"]),
        2.0,
        ">=",
        "psi_order_path ops/s / mysql_conditional ops/s",
    )
    scenario.extra["psi_vs_redis_ceiling"] = ratio(rate["psi_order_path"], rate["redis_evalsha"])
    return scenario
