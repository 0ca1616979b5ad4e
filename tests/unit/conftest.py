"""Fixtures shared by unit test modules that ask for them (``pytest.mark.usefixtures``)."""

from __future__ import annotations

import pytest

from psi_local import events_schema


@pytest.fixture
def repo_events_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event schemas and samples of this repository, whatever PSI_EVENTS_DIR says."""
    monkeypatch.delenv(events_schema.ENV_VAR, raising=False)
