"""The deploy tests' shared fixture: ``copy``, a fresh copy of the deployment files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.repo_copy import make_copy


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    return make_copy(tmp_path / "repo")
