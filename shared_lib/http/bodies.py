"""Request bodies: their media type judged from the head alone, read whole within a size and
a time limit, and what nobody read drained (bounded) so the connection can be reused."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import flask

from shared_lib.config import Settings
from shared_lib.http.errors import HttpError
from shared_lib.http.routes import Reply

JSON_TYPES = ("application/json",)
RAW_BODY = "psi.raw_body"
# set when the body could not be read to its end: the connection cannot be reused
BODY_BROKEN = "psi.body_broken"
DRAIN_CHUNK = 64 * 1024


def body_deadline(seconds: float) -> contextlib.AbstractContextManager[Any]:
    """A deadline for reading a whole body, under gunicorn's gevent worker (a trickling
    body would otherwise hold its connection as long as each read beats the read timeout);
    elsewhere (functions-framework's own server, tests) there is none."""
    if "gevent" in sys.modules:
        from gevent import Timeout, monkey

        if monkey.is_module_patched("socket"):
            return Timeout(seconds, TimeoutError("the body did not arrive in time"))
    return contextlib.nullcontext()


def remove_framework_drain() -> None:
    """functions-framework registers ``read_request`` (request.get_data() after every
    response, to avoid resets on early answers); FunctionApp drains bounded instead."""
    funcs = flask.current_app.after_request_funcs.get(None, [])
    funcs[:] = [f for f in funcs if getattr(f, "__name__", "") != "read_request"]


def check_media(request: flask.Request, *, delivery: bool) -> None:
    """From the head alone, before any of the body is read: a body must be JSON in
    UTF-8 and sent as it is (a platform's delivery names its own content type)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HttpError(
            415,
            {
                "error": "unsupported_media_type",
                "field": "Content-Encoding",
                "message": "Content-Encoding: bodies are accepted uncompressed only",
            },
            {"Accept-Encoding": "identity"},
        )
    has_body = bool(request.content_length) or "Transfer-Encoding" in request.headers
    if delivery or not has_body:
        return
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if request.mimetype not in JSON_TYPES or charset not in ("utf-8", "utf8"):
        raise HttpError(
            415,
            {
                "error": "unsupported_media_type",
                "field": "Content-Type",
                "message": "Content-Type: send the body as application/json (UTF-8)",
            },
            {"Accept": "application/json"},
        )


def read_body(request: flask.Request, settings: Settings) -> bytes:
    """The whole body, up to PSI_MAX_BODY_BYTES and within PSI_BODY_TIMEOUT_SECONDS."""
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise HttpError(413, {"error": "body_too_large", "limit_bytes": limit})
    try:
        with body_deadline(settings.body_timeout_seconds):
            raw = request.stream.read(limit + 1)
    except Exception as exc:  # the server's reader, whatever it raises: the caller's doing
        request.environ[BODY_BROKEN] = True
        if isinstance(exc, TimeoutError):
            raise HttpError(
                408,
                {"error": "request_timeout", "message": "the body stopped arriving"},
                {"Connection": "close"},
            ) from None
        raise HttpError(
            400,
            {"error": "incomplete_body", "message": "the body ended before its length"},
            {"Connection": "close"},
        ) from None
    request.environ[RAW_BODY] = raw
    if len(raw) > limit:
        raise HttpError(413, {"error": "body_too_large", "limit_bytes": limit})
    return raw


def discard_unread_body(request: flask.Request, reply: Reply, settings: Settings) -> None:
    """What a caller sent and nobody read (a refused request's body) is read and
    dropped in chunks, up to PSI_MAX_BODY_BYTES; past that the connection is closed
    instead. functions-framework's own after-request hook would read all of it into
    memory, whoever sent it (see remove_framework_drain)."""
    if request.environ.get(BODY_BROKEN):
        reply.headers["Connection"] = "close"
        return
    length, raw = request.content_length, request.environ.get(RAW_BODY)
    if raw is not None and length == len(raw):
        return  # read to its end
    if not length and "Transfer-Encoding" not in request.headers:
        return  # nothing was sent
    left = settings.max_body_bytes
    try:
        with body_deadline(settings.body_timeout_seconds):
            while left > 0:
                chunk = request.stream.read(min(DRAIN_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
            if request.stream.read(1):
                reply.headers["Connection"] = "close"
    except Exception:  # the caller stalled or went away mid-body: nothing to answer
        reply.headers["Connection"] = "close"
