"""flash_sale: far more buyers than units on one sku, through the real order path.

Exactly `units` attempts must win; the losing attempts must cost MySQL nothing (0
statements, 0 connection checkouts: the Redis gate answers them). The wall time of all
attempts is compared with the raw Redis ceiling: the same attempts, clients and units on a
tiny EVALSHA check-and-decrement script.
"""

from __future__ import annotations

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

QUICK = {"units": 100, "attempts": 2_000, "clients": 8}
FULL = {"units": 1_000, "attempts": 100_000, "clients": 64}
WAREHOUSE = "W1"
SKU = "FLASH"


def run(cfg: BenchConfig) -> Scenario:
    size = QUICK if cfg.quick else FULL
    units, attempts, clients = size["units"], size["attempts"], size["clients"]
    scenario = Scenario("flash_sale", {**size, "qty": 1, "warehouse": WAREHOUSE})
    with Stores(cfg, "flash") as stores:
        engine = stores.engine()
        seed_levels(engine, [WAREHOUSE], 0, units, extra_skus=[SKU])
        load_gate(stores)
        raw_key = decrement_key(stores.prefix, SKU)
        admin = stores.redis()
        admin.set(raw_key, units)

        config = stores.client_config(skus=[SKU], warehouse=WAREHOUSE, tag="flash", key=raw_key)
        psi = summarize(run_clients(PsiOrders, config, clients=clients, ops=attempts))
        ceiling = summarize(run_clients(RawRedisDecrement, config, clients=clients, ops=attempts))
        left = int(admin.get(raw_key) or 0)
        admin.close()
        counters = psi.get("counters", {})
        psi["statements_from_losers"] = counters.get("statements_lost", 0)
        psi["checkouts_from_losers"] = counters.get("checkouts_lost", 0)
        psi["statements_from_winners"] = counters.get("statements_won", 0)
        psi["degraded"] = psi["outcomes"].get("ok_degraded", 0)
        scenario.variants["psi_order_path"] = psi
        scenario.variants["redis_evalsha"] = ceiling

        _, reserved = level_of(engine, WAREHOUSE, SKU)
        orders = count_rows(engine, "orders")
        psi["reserved_in_mysql"], psi["orders"] = reserved, orders
        scenario.check("psi.winners", psi["succeeded"], units)
        scenario.check("psi.losers", psi["outcomes"].get("short", 0), attempts - units)
        scenario.check("psi.errors", psi["errors"], 0)
        scenario.check("psi.degraded", psi["degraded"], 0)
        scenario.check("psi.reserved_in_mysql", reserved, units)
        scenario.check("psi.orders_in_mysql", orders, units)
        scenario.check("psi.statements_from_losers", psi["statements_from_losers"], 0)
        scenario.check("psi.checkouts_from_losers", psi["checkouts_from_losers"], 0)
        scenario.check("redis_evalsha.winners", ceiling["succeeded"], units)
        scenario.check("redis_evalsha.units_left", left, 0)

        check_invariants(scenario, engine, stores)
        engine.dispose()

    scenario.target(
        "statements_from_losers",
        psi["statements_from_losers"],
        0,
        "<=",
        "SQL statements issued by attempts that did not get a unit",
    )
    scenario.target(
        "wall_vs_redis",
        ratio(psi["wall_s"], ceiling["wall_s"]),
        1.5,
        "<=",
        "psi_order_path wall time / redis_evalsha wall time for the same attempts",
    )
    return scenario
