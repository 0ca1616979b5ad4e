"""The in-process functions for every integration test: ``boot`` starts them on this test's
database and Redis key space, ``api`` is ``boot()`` (see functions_api)."""

from __future__ import annotations

from tests.integration.functions_api import api, boot

__all__ = ["api", "boot"]
