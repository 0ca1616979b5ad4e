"""HTTP errors: how a refusal is answered, and the status of each domain error.

Every error is an RFC 9457 problem document (``application/problem+json``): the standard
members ``type``, ``title``, ``status``, ``detail`` and ``instance``, plus ours: ``error``
(the stable code, the same one a dead letter's reason names), ``field``, ``shortfalls``,
``warehouse`` and the like. ``message`` repeats ``detail`` for clients of the JSON errors
this replaced; it goes in a later release.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from shared_lib.domain.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    PsiError,
    StoreUnavailable,
)
from shared_lib.http.routes import Reply

PROBLEM_JSON = "application/problem+json"
# RFC 9457's own members: an error's details never take their names
STANDARD_MEMBERS = ("type", "title", "status", "detail", "instance")
# the documentation of every code, one anchor each: a problem's `type` dereferences to it
PROBLEM_TYPES = "https://github.com/psi-functions/psi/blob/main/docs/problems.md"
TITLES = {
    "body_too_large": "Body too large",
    "conflict": "Conflicting change",
    "count_mismatch": "Counted quantity changed",
    "forbidden": "Not allowed for this API key",
    "idempotency_key_reused": "Idempotency key reused with another request",
    "incomplete_body": "Body ended before its length",
    "insufficient_stock": "Insufficient stock",
    "internal": "Unexpected server error",
    "invalid_delivery": "Invalid event delivery",
    "invalid_json": "Body is not valid JSON",
    "invalid_order_state": "Order is not in a state that allows this",
    "invalid_request": "Invalid request",
    "method_not_allowed": "Method not allowed",
    "not_found": "Not found",
    "order_exists": "Order already exists",
    "precondition_failed": "Resource changed since it was read",
    "request_in_progress": "The same request is still in progress",
    "request_timeout": "Body stopped arriving",
    "run_key_reused": "Reconcile run key reused",
    "stock_exists": "Stock exists",
    "store_unavailable": "A store is unavailable",
    "unauthorized": "Missing or unknown API key",
    "unexpected_topic": "Delivery for another topic",
    "unknown_order": "Unknown order",
    "unknown_parameter": "Unknown query parameter",
    "unknown_sku": "Unknown sku",
    "unknown_warehouse": "Unknown warehouse",
    "unsupported_media_type": "Unsupported media type",
}


def problem(status: int, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """An error body as an RFC 9457 problem: standard members first, then ours."""
    code = str(body.get("error") or _phrase_code(status))
    title = TITLES.get(code) or _phrase(status)
    detail = str(body.get("detail") or body.get("message") or title)
    ours = {name: value for name, value in body.items() if name not in STANDARD_MEMBERS}
    return {
        "type": f"{PROBLEM_TYPES}#{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": quote(request_id, safe=""),
        **ours,
        "error": code,
        "message": detail,
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _phrase_code(status: int) -> str:
    return _phrase(status).lower().replace(" ", "_").replace("-", "_")


class AuthError(Exception):
    """The caller is not let in: 401 (who are you?) or 403 (not for you)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("message", body.get("error")))
        self.reply = Reply(status, body, headers or {})


def status_of(error: PsiError) -> int:
    if isinstance(error, InvalidRequest):
        return 422
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, PreconditionFailed):
        return 412
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, StoreUnavailable):
        return 503
    return 400


def field_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"
