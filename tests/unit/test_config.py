"""Configuration: one place, embedded defaults, secret files, one clear line when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_lib.config import ConfigError, Settings, load_settings, secret_file_name
from shared_lib.http.auth import Authenticator, AuthError, parse_keys, principal_of


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PSI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PSI_SECRETS_DIR", str(tmp_path / "secrets"))


def test_nothing_set_means_the_embedded_defaults(tmp_path: Path):
    settings = load_settings(data_dir=tmp_path)
    assert settings.embedded_database and settings.redis_url == "embedded"
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'psi.sqlite3'}"
    assert settings.kafka_bootstrap is None and settings.redis_enabled


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PSI_REDIS_URL", "memcached://x", "PSI_REDIS_URL"),
        ("PSI_DATABASE_URL", "postgresql://x/y", "PSI_DATABASE_URL"),
        ("PSI_KAFKA_BOOTSTRAP", "no-port", "PSI_KAFKA_BOOTSTRAP"),
        ("PSI_S3_ENDPOINT", "ftp://x", "PSI_S3_ENDPOINT"),
        ("PSI_ORDER_HOLD_SECONDS", "0", "PSI_ORDER_HOLD_SECONDS"),
    ],
)
def test_invalid_configuration_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "\n" not in message and named in message and "Value error" not in message


def test_secret_files_are_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / secret_file_name("database_url")).write_text("sqlite:////tmp/x.db\n")
    (secrets / secret_file_name("redis_url")).write_text("redis://secret-host:6379/0")
    assert secret_file_name("database_url") == "psi-database-url"
    monkeypatch.setenv("PSI_REDIS_URL", "redis://env-host:6379/0")
    settings = load_settings()
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.redis_url == "redis://env-host:6379/0"


def test_api_keys_need_scopes_and_length():
    keys = parse_keys("abcdefghijklmnop=stock:read,orders:write;\nqrstuvwxyz012345=admin")
    assert [sorted(k.scopes) for k in keys] == [["orders:write", "stock:read"], ["admin"]]
    with pytest.raises(ConfigError, match="unknown scope"):
        parse_keys("abcdefghijklmnop=stock:delete")
    with pytest.raises(ConfigError, match="16"):
        parse_keys("short=admin")


def test_no_keys_refuses_to_start_unless_auth_is_disabled(tmp_path: Path):
    with pytest.raises(ConfigError, match="PSI_AUTH_DISABLED"):
        Authenticator.from_settings(load_settings())
    assert Authenticator.from_settings(load_settings(auth_disabled=True)).disabled


def test_scopes_are_enforced_with_401_and_403():
    auth = Authenticator(parse_keys("reader-key-000001=stock:read;admin-key-0000001=admin"))
    reader = auth.check("Bearer reader-key-000001", "stock:read")
    assert reader == principal_of("reader-key-000001")
    assert reader.startswith("key-") and "reader" not in reader  # says nothing of the secret
    assert auth.check("Bearer admin-key-0000001", "orders:write") == principal_of(
        "admin-key-0000001"
    )
    for header, scope, status in [
        (None, "stock:read", 401),
        ("Bearer nope-nope-nope-nope", "stock:read", 401),
        ("Basic reader-key-000001", "stock:read", 401),
        ("Bearer reader-key-000001", "stock:write", 403),
    ]:
        with pytest.raises(AuthError) as err:
            auth.check(header, scope)
        assert err.value.status == status


def test_an_order_cannot_wait_for_its_batch_longer_than_its_hold() -> None:
    with pytest.raises(ConfigError) as error:
        Settings(gate_hold_ms="10000", group_commit_wait_ms="4001")
    assert error.value.problems == {
        "group_commit_wait_ms": "must be at most 4000: (PSI_GATE_HOLD_MS - 2000) / 2"
    }
    assert "PSI_GROUP_COMMIT_WAIT_MS" in str(error.value)
    assert Settings(gate_hold_ms="10000", group_commit_wait_ms="4000").group_commit_wait_ms == 4000
