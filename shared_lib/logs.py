"""Structured JSON logs (structlog) with request id, event id and idempotency key bound per
request, and secrets masked before anything is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_FIELDS = re.compile(r"(authorization|password|secret|token|api_keys?|credential)", re.I)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@", re.I)
BEARER = re.compile(r"(bearer\s+)[^\s\"']+", re.I)

_configured = False


def mask(text: str) -> str:
    text = URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return BEARER.sub(r"\1***", text)


def _clean(key: str, value: Any) -> Any:
    if SECRET_FIELDS.search(key):
        return "***"
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(key, v) for v in value]
    return value


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = _clean(key, value)
    return event


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for our logs and for every library that uses logging."""
    global _configured
    if _configured:
        return
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)


bind = structlog.contextvars.bind_contextvars
clear = structlog.contextvars.clear_contextvars
