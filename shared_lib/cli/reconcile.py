"""psi reconcile: the reconcile now, progress on stderr, the result as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from shared_lib.cli.base import (
    CommandError,
    command,
    kafka_bootstrap,
    redis_url,
    settings,
)
from shared_lib.config import Settings, load_settings


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
    """The functions' composition root, on the stores a running ``psi dev`` uses."""
    from shared_lib import bootstrap

    overrides: dict[str, Any] = {}
    if config.redis_enabled:
        overrides["redis_url"] = redis_url(config)
    bootstrap_servers = kafka_bootstrap(config)
    if bootstrap_servers:
        overrides["kafka_bootstrap"] = bootstrap_servers
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
