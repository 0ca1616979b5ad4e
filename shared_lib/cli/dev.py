"""psi dev: every function on 127.0.0.1 with an embedded Redis and broker, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from shared_lib.cli.base import (
    CommandError,
    command,
)


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
    try:
        from psi_local.stack import LocalStack
    except ImportError:
        raise CommandError(
            "psi dev needs the local tools: pip install 'psi-functions[local]'"
            " (in a checkout: make install)"
        ) from None

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
