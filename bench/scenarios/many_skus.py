"""many_skus: uniform random single-line orders over many skus, at growing client counts.

No row is hot here, so this shows how the order path scales with concurrency when
contention is spread out (and where the 2-core machine itself becomes the limit).
"""

from __future__ import annotations

from bench.clients import (
    PsiOrders,
    run_clients,
    summarize,
)
from bench.common import (
    BenchConfig,
    Scenario,
    sku_name,
)
from bench.stores import (
    Stores,
    check_invariants,
    count_rows,
    load_gate,
    seed_levels,
)

QUICK = {"skus": 500, "clients": [1, 4], "duration_s": 1.0}
FULL = {"skus": 10_000, "clients": [1, 4, 16, 64], "duration_s": 10.0}
WAREHOUSE = "W1"
STOCK = 1_000_000


def run(cfg: BenchConfig) -> Scenario:
    size = QUICK if cfg.quick else FULL
    scenario = Scenario("many_skus", {**size, "stock_per_sku": STOCK, "warehouse": WAREHOUSE})
    with Stores(cfg, "many") as stores:
        engine = stores.engine()
        seed_levels(engine, [WAREHOUSE], size["skus"], STOCK)
        load_gate(stores)
        skus = [sku_name(n) for n in range(1, size["skus"] + 1)]
        won = 0
        for clients in size["clients"]:
            config = stores.client_config(
                skus=skus, warehouse=WAREHOUSE, tag=f"c{clients}", seed=clients
            )
            summary = summarize(
                run_clients(PsiOrders, config, clients=clients, duration=size["duration_s"])
            )
            summary["degraded"] = summary["outcomes"].get("ok_degraded", 0)
            scenario.variants[f"clients_{clients}"] = summary
            scenario.check(f"clients_{clients}.errors", summary["errors"], 0)
            scenario.check(f"clients_{clients}.short", summary["outcomes"].get("short", 0), 0)
            won += summary["succeeded"]

        with engine.connect() as conn:
            reserved = int(
                conn.exec_driver_sql(
                    "SELECT COALESCE(SUM(reserved), 0) FROM stock_levels"
                ).scalar_one()
            )
        orders = count_rows(engine, "orders")
        scenario.extra["totals"] = {
            "succeeded": won,
            "reserved_in_mysql": reserved,
            "orders": orders,
        }
        scenario.check("reserved_equals_successes", reserved, won)
        scenario.check("orders_equal_successes", orders, won)
        check_invariants(scenario, engine, stores)
        engine.dispose()
    best = max(v["ops_per_s"] or 0 for v in scenario.variants.values())
    scenario.extra["best_ops_per_s"] = best
    return scenario
