"""psi outbox status and psi outbox redrive."""

from __future__ import annotations

import argparse
from typing import Any

from shared_lib.adapters.outbox import OutboxRelay
from shared_lib.cli.base import (
    CommandError,
    command,
    database_engine,
    kafka_bootstrap,
    require_kafka,
    settings,
)
from shared_lib.config import Settings


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
    kafka = kafka_bootstrap(config) or "not configured: events stay in the outbox"
    print(f"kafka        {kafka}")


@command("outbox", "status", help="unpublished outbox events: count, lag, failures")
def run_outbox_status(args: argparse.Namespace) -> int:
    config = settings()
    engine = database_engine(config)
    try:
        summary = OutboxRelay(engine, None).summary()
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
    from shared_lib.adapters.kafka import KafkaEventPublisher
    from shared_lib.adapters.outbox import OutboxRelay

    config = settings()
    bootstrap = require_kafka(config)
    engine = database_engine(config)
    publisher = KafkaEventPublisher(bootstrap, client_id="psi-cli")
    try:
        relay = OutboxRelay(engine, publisher)
        relay.clear_backoff()  # an operator asking for "now" overrides the backoff
        sent = relay.drain()
        summary = OutboxRelay(engine, None).summary()
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
