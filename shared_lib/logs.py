"""Structured JSON logs (structlog) with request id, trace and span ids, event id and
idempotency key bound per request, and secrets masked before anything is written.

structlog (with what it imports, rich and asyncio among them) loads with the first line
written, not at import: a cold start answers its health check without it. The fields bound
per request live in a context variable of this module, so binding costs nothing either.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

SECRET_FIELDS = re.compile(r"(authorization|password|secret|token|api_keys?|credential)", re.I)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]+@", re.I)
BEARER = re.compile(r"(bearer\s+)[^\s\"']+", re.I)

_context: ContextVar[dict[str, Any] | None] = ContextVar("psi_log_context", default=None)
_configured = False  # configure() ran: our handler is the root logger's
_structlog_configured = False
_lock = threading.Lock()


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


def bind(**fields: Any) -> None:
    """Fields every log line of the current request (context) carries."""
    _context.set({**(_context.get() or {}), **fields})


def clear() -> None:
    _context.set(None)


def _merge_context(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in (_context.get() or {}).items():
        event.setdefault(key, value)
    return event


def _shared(structlog: Any) -> list[Any]:
    return [
        _merge_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def _structlog() -> Any:
    """structlog, set up to hand its events to our handler once configure() has run."""
    global _structlog_configured
    import structlog

    with _lock:
        if _configured and not _structlog_configured:
            structlog.configure(
                processors=[
                    *_shared(structlog),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
                ],
                logger_factory=structlog.stdlib.LoggerFactory(),
                cache_logger_on_first_use=True,
            )
            _structlog_configured = True
    return structlog


def _json_formatter() -> logging.Formatter:
    structlog = _structlog()
    formatter: logging.Formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(structlog),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact,
            structlog.processors.JSONRenderer(),
        ],
    )
    return formatter


class _JsonHandler(logging.StreamHandler[TextIO]):
    """One JSON object a line; its (structlog) formatter is built for the first record."""

    _formatter: logging.Formatter | None = None

    @property  # type: ignore[override]
    def formatter(self) -> logging.Formatter | None:
        if self._formatter is None:
            self._formatter = _json_formatter()
        return self._formatter

    @formatter.setter
    def formatter(self, value: logging.Formatter | None) -> None:
        self._formatter = value


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for our logs and for every library that uses logging."""
    global _configured
    if _configured:
        return
    root = logging.getLogger()
    root.handlers[:] = [_JsonHandler(sys.stderr)]
    root.setLevel(level.upper())
    for noisy in ("kafka", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True
    if "structlog" in sys.modules:  # a logger already wrote: from now on it writes JSON too
        _structlog()


class _Logger:
    """structlog's logger for a name, created when it first writes."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._logger is None:
            self._logger = _structlog().stdlib.get_logger(self._name)
        return getattr(self._logger, method)


def get_logger(name: str) -> Any:
    return _Logger(name)
