"""psi dlq replay: dead letters back to their original topic."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import Any

from shared_lib.cli.base import (
    CommandError,
    command,
    require_kafka,
    settings,
)
from shared_lib.domain.dead_letters import Letter, parse_letter


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

    bootstrap = require_kafka(settings())
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
