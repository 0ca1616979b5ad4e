"""W3C Trace Context: the trace a request belongs to and this function's span in it.

A request continues the trace its caller names (``traceparent``, and ``tracestate`` beside
it) with a span of its own; a request that names none, or names one that is invalid,
starts a new trace. Nothing here ever refuses a request: the spec's answer to a bad value
is to restart the trace (w3c/trace-context spec/20-http_request_header_format.md,
"Versioning of traceparent"). docs/platform-contracts.md cites every rule used here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace

VERSION = "00"
# version 00: exactly this; a higher version may append "-<more>" after the flags
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_V00_LENGTH = 55
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
SAMPLED = 0x01
RANDOM_TRACE_ID = 0x02
# a trace started here: not sampled (nothing is recorded out of band), and its trace id is
# random, which the random-trace-id flag says
STARTED_FLAGS = f"{RANDOM_TRACE_ID:02x}"

_KEY = r"[a-z0-9][a-z0-9_\-*/@]{0,255}"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"{_KEY}={_VALUE}")
MAX_MEMBERS = 32
# propagated at least this far (the spec's SHOULD); longer lists lose whole members
TRACESTATE_MAX = 512
LONG_MEMBER = 128
_OWS = " \t"


@dataclass(frozen=True)
class TraceContext:
    """A position in a trace: ``span_id`` is this function's span, ``parent_id`` the
    caller's (None when the trace started here)."""

    trace_id: str
    span_id: str
    flags: str = STARTED_FLAGS
    tracestate: str | None = None
    parent_id: str | None = None

    @property
    def traceparent(self) -> str:
        """What this span sends on: the parent of whatever it causes."""
        return f"{VERSION}-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span of the same trace under this one (the spec's "update parent-id")."""
        return replace(self, span_id=new_span_id(), parent_id=self.span_id)

    def attributes(self) -> dict[str, str]:
        """The CloudEvents distributed-tracing extension attributes of an event it causes."""
        found = {"traceparent": self.traceparent}
        if self.tracestate:
            found["tracestate"] = self.tracestate
        return found


def new_span_id() -> str:
    while (span := secrets.token_hex(8)) == _INVALID_SPAN_ID:
        continue
    return span


def start() -> TraceContext:
    """A new trace, random trace id, its first span here (any tracestate is dropped)."""
    while (trace_id := secrets.token_hex(16)) == _INVALID_TRACE_ID:
        continue
    return TraceContext(trace_id, new_span_id())


def parse(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """The span a ``traceparent`` names (with its ``tracestate``), or None when it is
    missing or invalid. Lower-case hex only; versions 00 and higher, never ff; a higher
    version is read as far as version 00 goes and sent on as 00."""
    if traceparent is None:
        return None
    value = traceparent.strip(_OWS)
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == _INVALID_TRACE_ID or parent_id == _INVALID_SPAN_ID:
        return None
    if version == VERSION and len(value) != _V00_LENGTH:
        return None
    if len(value) > _V00_LENGTH and value[_V00_LENGTH] != "-":
        return None
    # only the flags the version knows go on; the others are reserved and sent as zero
    known = SAMPLED | RANDOM_TRACE_ID if version == VERSION else SAMPLED
    flags = f"{int(flags, 16) & known:02x}"
    return TraceContext(trace_id, parent_id, flags, parse_tracestate(tracestate))


def parse_tracestate(value: str | None) -> str | None:
    """The list as it goes on: members trimmed, empty ones dropped, and at most
    TRACESTATE_MAX characters (members over LONG_MEMBER go first, then from the right).
    None when absent, empty or invalid: a bad tracestate never affects the traceparent."""
    if value is None:
        return None
    members = [m.strip(_OWS) for m in value.split(",")]
    members = [m for m in members if m]
    if not members or len(members) > MAX_MEMBERS:
        return None
    if not all(_MEMBER.fullmatch(m) for m in members):
        return None
    if len(",".join(members)) > TRACESTATE_MAX:
        members = [m for m in members if len(m) <= LONG_MEMBER]
        while len(",".join(members)) > TRACESTATE_MAX:
            members.pop()
    return ",".join(members) or None


def continue_trace(*candidates: tuple[str | None, str | None]) -> TraceContext:
    """This function's span under the first valid (traceparent, tracestate) of
    ``candidates``; a new trace when none is valid."""
    for traceparent, tracestate in candidates:
        caller = parse(traceparent, tracestate)
        if caller is not None:
            return caller.child()
    return start()
