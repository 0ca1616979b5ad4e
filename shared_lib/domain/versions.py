"""Which version of a record a caller saw: a tag of its representation.

The tag is a digest of the record as the API shows it (canonical JSON), so two reads agree
exactly when they show the same thing, and a change of any shown field changes it. HTTP
sends it as a strong ``ETag``; a write that names the tags it expects (``If-Match``) goes
ahead only while the record still has one of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ANY = "*"


def tag_of(view: Mapping[str, Any]) -> str:
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Expected:
    """The versions a write may change: ``*`` (any existing version) or listed tags."""

    tags: frozenset[str]

    def allows(self, current: Mapping[str, Any] | None) -> bool:
        if current is None:
            return False
        return ANY in self.tags or tag_of(current) in self.tags
