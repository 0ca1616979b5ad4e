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
    psi openapi [-o FILE]                    one OpenAPI document of every function

Settings come from the PSI_* environment (``shared_lib.config``), as for the functions.
Exit codes: 0 done, 1 runtime failure (unreachable store, unknown SKU), 2 bad usage or
configuration. Errors are one line on stderr.

Adding a command: write ``run(args) -> int`` and register it with
``@command("outbox", "redrive", help=..., arguments=lambda p: p.add_argument(...))``;
groups such as ``outbox`` are created on first use, and ``main`` maps errors for it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

# every command module registers its commands with the registry when imported
from shared_lib.cli import db, dev, dlq, openapi, outbox, reconcile, stock
from shared_lib.cli.base import COMMANDS, CommandError, _first_line, _schema_missing, command
from shared_lib.config import ConfigError

__all__ = ["COMMANDS", "CommandError", "build_parser", "command", "main", "run"]
# the command groups, one module each
GROUPS = (db, dev, dlq, openapi, outbox, reconcile, stock)


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
    from shared_lib.domain.errors import StoreUnavailable

    try:
        from psi_local.stack import StackError
    except ImportError:  # no local tools (the function image): no local stack to fail

        class StackError(Exception):  # type: ignore[no-redef]
            pass

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
