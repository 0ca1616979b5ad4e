"""The Idempotency-Key contract: which key a request is known by, scoped to its caller."""

from __future__ import annotations

import re
import uuid
from typing import Any

import flask

from shared_lib.domain.model import RequestMeta
from shared_lib.http.delivery import Delivery, legacy_key
from shared_lib.http.errors import HttpError

# printable ASCII without ',': a server joins repeated headers with commas, so a key with a
# comma is two Idempotency-Key headers (RFC 9110 5.3), and which one was meant is unknown
KEY_PATTERN = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,200}$")
# (the key as recorded, scoped to its caller; the key as the caller sent it)
KEYS = "psi.keys"


def as_sent(body: dict[str, Any], request: flask.Request) -> dict[str, Any]:
    """An error names the Idempotency-Key as its caller sent it, not as it is recorded."""
    recorded, sent = request.environ.get(KEYS, (None, None))
    if recorded is not None and body.get("key") == recorded:
        body["key"] = sent
    return body


def request_meta(key: str, actor: str | None, delivery: Delivery | None) -> RequestMeta:
    """A client's key is scoped to its API key (the principal), as Stripe scopes keys to
    an account: one caller can neither take nor replay another's. A delivery is known by
    its own identity, whoever delivers it. Records an earlier release wrote under the
    bare key are still found (same request only) until they expire."""
    if delivery is not None or actor is None:
        return RequestMeta(idempotency_key=key, actor=actor, legacy_key=legacy_key(delivery))
    return RequestMeta(idempotency_key=f"{actor}/{key}", actor=actor, legacy_key=key)


def idempotency_key(request: flask.Request, delivery: Delivery | None) -> str:
    # a delivery is known by its identity; a client's header means nothing on it
    key = delivery.idempotency_key if delivery else request.headers.get("Idempotency-Key")
    if not key and delivery is not None:
        return uuid.uuid4().hex  # cron-connector's call: no record, no identity
    if not key:
        raise HttpError(
            400,
            {
                "error": "invalid_request",
                "field": "Idempotency-Key",
                "message": "Idempotency-Key: header is required for this request",
            },
        )
    if "," in key:
        raise HttpError(
            400,
            {
                "error": "invalid_request",
                "field": "Idempotency-Key",
                "message": "Idempotency-Key: send the header once (a key has no ',')",
            },
        )
    if not KEY_PATTERN.match(key):
        raise HttpError(
            400,
            {
                "error": "invalid_request",
                "field": "Idempotency-Key",
                "message": "Idempotency-Key: 1..200 printable ASCII characters, no comma",
            },
        )
    return key
