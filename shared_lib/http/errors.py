"""HTTP errors: how a refusal is answered, and the status of each domain error."""

from __future__ import annotations

from typing import Any

from shared_lib.domain.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PsiError,
    StoreUnavailable,
)
from shared_lib.http.routes import Reply


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
