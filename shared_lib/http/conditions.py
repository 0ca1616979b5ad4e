"""Conditional requests (RFC 9110 section 13): ETag on reads, If-None-Match answered 304,
If-Match on writes; and the query parameters a route takes.

An entity tag here is the strong tag of the representation (shared_lib.domain.versions), in
double quotes. If-None-Match compares weakly (a ``W/`` tag matches its strong twin), If-Match
strongly (a weak tag never matches), as the RFC says for each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from shared_lib.domain.versions import ANY, Expected, tag_of
from shared_lib.http.errors import HttpError

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


def etag(view: Mapping[str, Any]) -> str:
    return f'"{tag_of(view)}"'


def _tags(header: str, name: str) -> list[tuple[bool, str]] | None:
    """``[(weak, opaque tag), ...]``, or None for ``*``; a malformed list is refused."""
    if header.strip() == ANY:
        return None
    found, position = [], 0
    while position < len(header):
        match = ENTITY_TAG.match(header, position)
        if match is None:
            raise HttpError(
                400,
                {
                    "error": "invalid_request",
                    "field": name,
                    "message": f'{name}: a list of entity tags ("...", W/"...") or *',
                },
            )
        found.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return found


def expected_versions(header: str | None) -> Expected | None:
    """If-Match as the versions a write may change; weak tags can never match."""
    if header is None:
        return None
    tags = _tags(header, "If-Match")
    if tags is None:
        return Expected(frozenset({ANY}))
    return Expected(frozenset(tag for weak, tag in tags if not weak))


def not_modified(header: str | None, current: str) -> bool:
    """Whether If-None-Match names the representation the caller already has."""
    if header is None:
        return False
    tags = _tags(header, "If-None-Match")
    return tags is None or any(f'"{tag}"' == current for _, tag in tags)


def check_query(method: str, path: str, known: Sequence[str], query: Any) -> None:
    """Every query parameter is one the route takes, each sent once: 400 names the first
    that is not, as 422 names an unknown body field."""
    for name in query:
        if name not in known:
            takes = ", ".join(known) if known else "none"
            raise HttpError(
                400,
                {
                    "error": "unknown_parameter",
                    "field": name,
                    "message": f"{name}: not a query parameter of {method} {path} "
                    f"(it takes {takes})",
                },
            )
        if len(query.getlist(name)) > 1:
            raise HttpError(
                400,
                {
                    "error": "invalid_request",
                    "field": name,
                    "message": f"{name}: send the query parameter once",
                },
            )
