"""psi db upgrade / seed / stock show / cache rebuild on SQLite and MariaDB with real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from shared_lib import cli
from shared_lib.adapters import schema
from shared_lib.adapters import sql_tables as t
from shared_lib.adapters.redis_gate import RedisGate
from shared_lib.domain.model import utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"psicli{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    empty_database: str,
    redis_server: str,
    prefix: str,
) -> Iterator[str]:
    for name in list(os.environ):
        if name.startswith("PSI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_DATABASE_URL", empty_database)
    monkeypatch.setenv("PSI_REDIS_URL", redis_server)
    monkeypatch.setenv("PSI_REDIS_PREFIX", prefix)
    monkeypatch.setenv("PSI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PSI_SECRETS_DIR", str(tmp_path / "secrets"))
    yield empty_database
    client = redis.Redis.from_url(redis_server)
    for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
        client.delete(key)
    client.close()


def psi(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_db_upgrade_prints_the_revision(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema.current_revision(cli_env) is None
    code, out, err = psi(capsys, "db", "upgrade")
    assert (code, err) == (0, "")
    head = schema.current_revision(cli_env)
    assert head is not None
    assert f"at revision {head}" in out
    assert psi(capsys, "db", "upgrade")[0] == 0  # again: nothing to do, still fine


def test_commands_before_upgrade_say_so(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = psi(capsys, "seed", "--demo")
    assert code == 1
    assert err.strip() == "psi: database schema missing: run `psi db upgrade` first"


def test_seed_is_idempotent(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert psi(capsys, "db", "upgrade")[0] == 0
    code, out, _ = psi(capsys, "seed", "--demo")
    assert code == 0
    assert "(2 new)" in out and f"({len(cli.db.DEMO_PRODUCTS)} new)" in out
    code, out, _ = psi(capsys, "seed", "--demo")
    assert code == 0
    assert out.count("(0 new)") == 2
    engine = sa.create_engine(cli_env)
    with engine.connect() as conn:
        codes = set(conn.execute(sa.select(t.warehouses.c.code)).scalars())
        points = dict(conn.execute(sa.select(t.products.c.sku, t.products.c.reorder_point)).all())
    engine.dispose()
    assert codes == {"MAIN", "EAST"}
    assert points == {sku: rp for sku, _, _, rp in cli.db.DEMO_PRODUCTS}
    assert all(rp > 0 for rp in points.values())


def put_level(url: str, warehouse: str, sku: str, on_hand: int, reserved: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            t.stock_levels.insert().values(
                warehouse=warehouse,
                sku=sku,
                on_hand=on_hand,
                reserved=reserved,
                version=3,
                updated_at=utcnow(),
            )
        )
    engine.dispose()


def row_of(out: str, warehouse: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(warehouse))


def test_stock_show_and_cache_rebuild(
    cli_env: str, redis_server: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert psi(capsys, "db", "upgrade")[0] == 0
    assert psi(capsys, "seed", "--demo")[0] == 0
    put_level(cli_env, "MAIN", "MUG-CERAMIC", 40, 2)
    put_level(cli_env, "EAST", "MUG-CERAMIC", 7, 0)

    code, out, _ = psi(capsys, "stock", "show", "MUG-CERAMIC")
    assert code == 0
    assert row_of(out, "MAIN").split()[:5] == ["MAIN", "40", "2", "38", "3"]
    assert "not ready" in row_of(out, "MAIN")  # the gate was never built for this prefix

    code, out, _ = psi(capsys, "cache", "rebuild")
    assert code == 0
    assert "cache rebuilt: 2 levels in 2 warehouses" in out

    code, out, _ = psi(capsys, "stock", "show", "MUG-CERAMIC")
    assert code == 0
    main = row_of(out, "MAIN")
    assert main.endswith("ok")
    assert main.split("|")[1].split()[:5] == ["40", "2", "0", "38", "3"]
    assert row_of(out, "EAST").endswith("ok")

    client = redis.Redis.from_url(redis_server)
    gate = RedisGate(client, prefix=prefix)
    client.delete(gate.level_key("EAST", "MUG-CERAMIC"))
    code, out, _ = psi(capsys, "stock", "show", "MUG-CERAMIC", "--warehouse", "EAST")
    assert code == 0
    assert "MAIN" not in out
    assert "DRIFT" in row_of(out, "EAST")

    assert psi(capsys, "cache", "rebuild")[0] == 0
    assert gate.read("EAST", ["MUG-CERAMIC"])["MUG-CERAMIC"].on_hand == 7
    client.close()
    assert "ok" in row_of(psi(capsys, "stock", "show", "MUG-CERAMIC")[1], "EAST")


def test_stock_show_unknown_and_empty(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert psi(capsys, "db", "upgrade")[0] == 0
    assert psi(capsys, "seed", "--demo")[0] == 0
    code, _, err = psi(capsys, "stock", "show", "NO-SUCH-SKU")
    assert code == 1
    assert err.strip() == "psi: unknown sku 'NO-SUCH-SKU'"
    code, out, _ = psi(capsys, "stock", "show", "KETTLE-1L")
    assert code == 0
    assert "no stock level yet" in out


def test_unreachable_redis_is_a_runtime_error(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from psi_local.broker import free_port

    assert psi(capsys, "db", "upgrade")[0] == 0
    monkeypatch.setenv("PSI_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = psi(capsys, "cache", "rebuild")
    assert code == 1
    assert err.startswith("psi: redis unreachable:")


def test_psi_dev_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`psi dev` as a user runs it: embedded stores, every function, SIGTERM stops all."""
    import re
    import signal

    from tests.conftest import require_broker_binary
    from tests.support import PsiDev

    require_broker_binary()
    with PsiDev(tmp_path, "--base-port", "0", "--data-dir", "d") as dev:
        dev.wait_ready()
        lines = dev.out
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "".join(lines))]
        assert len(pids) >= 3
        assert (tmp_path / "d" / "stack.json").is_file()
        dev.process.send_signal(signal.SIGTERM)
        assert dev.process.wait(timeout=60) == 0
    stderr = "".join(dev.err)
    assert "AUTH IS DISABLED" in stderr
    assert "psi dev: stopping" in "".join(lines)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "d" / "stack.json").exists()
    assert (tmp_path / "d" / "logs" / "stock-in.log").is_file()


def test_every_command_uses_the_running_local_stacks_stores(
    cli_env: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the embedded defaults, the stores are those the running `psi dev` wrote into
    its stack.json: its Redis for the gate, its broker for the outbox."""
    import json

    assert psi(capsys, "db", "upgrade")[0] == 0
    monkeypatch.delenv("PSI_REDIS_URL")
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "redis_url": redis_server, "kafka_bootstrap": "127.0.0.1:1"}
    (data / "stack.json").write_text(json.dumps(state), encoding="utf-8")

    code, out, err = psi(capsys, "cache", "rebuild")
    assert (code, err) == (0, ""), err
    code, out, _ = psi(capsys, "outbox", "status")
    assert code == 0 and "kafka        127.0.0.1:1" in out


def test_without_a_running_local_stack_no_private_store_is_made(
    cli_env: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The embedded default and no `psi dev` running: the command says so, and starts no
    Redis of its own that no function would use."""
    assert psi(capsys, "db", "upgrade")[0] == 0
    monkeypatch.delenv("PSI_REDIS_URL")
    for argv in (("cache", "rebuild"), ("reconcile",), ("outbox", "redrive")):
        code, _, err = psi(capsys, *argv)
        assert code == 2, (argv, err)
        assert "no local stack runs on" in err and "psi dev" in err, (argv, err)
    assert not list((tmp_path / "data").rglob("redis.db"))
