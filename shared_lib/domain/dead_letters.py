"""Dead letters, both ways: the JSON object a refused delivery becomes on psi.dead-letter
(written by the functions, see http/app.py), and how a letter found there - ours, or a
KafkaSource's deadLetterSink record - is read back for a replay (psi dlq replay)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_REASON_CHARS = 2000
# a letter always fits a Kafka record: the payload beyond this is kept by claim check
MAX_EXCERPT_BYTES = 8 * 1024


def dead_letter(
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: str | None,
    payload: bytes,
    status: int | None,
    reason: str,
    payload_ref: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON object put on psi.dead-letter: where the message came from, why it failed,
    and the original bytes (as text when they are UTF-8, else base64). A payload longer
    than MAX_EXCERPT_BYTES is cut to an excerpt; ``payload_ref`` then names where the whole
    of it is kept, and ``payload_sha256`` lets a reader check what it fetches."""
    excerpt = payload[:MAX_EXCERPT_BYTES]
    doc: dict[str, Any] = {
        "reason": reason[:MAX_REASON_CHARS] or "rejected",
        "status": status or None,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    if len(excerpt) < len(payload):
        doc["truncated"] = True
        if payload_ref is not None:
            doc["payload_ref"] = payload_ref
    try:
        doc["payload"] = excerpt.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(excerpt) < len(payload) and exc.start >= len(excerpt) - 3:
            doc["payload"] = excerpt[: exc.start].decode("utf-8")  # a character cut in two
        else:
            doc["payload_base64"] = base64.b64encode(excerpt).decode("ascii")
    doc["failed_at"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc.update(extra)
    return doc


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
