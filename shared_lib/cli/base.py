"""The command registry and what every command shares: settings, the database engine, the
Redis gate (the running local stack's when there is one), one-line errors."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from shared_lib.config import DISABLED, EMBEDDED, ConfigError, Settings, load_settings

log = logging.getLogger("psi")

Arguments = Callable[[argparse.ArgumentParser], None]
Runner = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    arguments: Arguments
    run: Runner


COMMANDS: list[Command] = []


def command(
    *path: str, help: str, arguments: Arguments | None = None
) -> Callable[[Runner], Runner]:
    """Register ``run`` as ``psi <path...>``; ``arguments`` adds its options to the parser."""

    def register(run: Runner) -> Runner:
        COMMANDS.append(Command(tuple(path), help, arguments or (lambda _p: None), run))
        return run

    return register


class CommandError(Exception):
    """A runtime failure worth one line on stderr (exit code 1)."""


def settings() -> Settings:
    return load_settings()


def shown(url: str) -> str:
    """A URL fit for printing: no password."""
    if url in (EMBEDDED, DISABLED):
        return url
    if url.startswith(("redis", "rediss", "unix")):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@", 1)
        return url
    return make_url(url).render_as_string(hide_password=True)


def database_engine(config: Settings) -> Engine:
    """The engine of the system of record; the embedded SQLite file is migrated on first use."""
    from shared_lib.adapters.sql_engine import make_engine

    if config.embedded_database:
        from shared_lib.adapters import schema

        config.data_dir.mkdir(parents=True, exist_ok=True)
        schema.upgrade(config.sqlalchemy_url)
    return make_engine(config.sqlalchemy_url, pool_size=2, timeout=config.db_timeout_seconds)


def local_stack(config: Settings) -> dict[str, Any] | None:
    """What a running ``psi dev`` on PSI_DATA_DIR says about its stores, or None."""
    try:
        from psi_local.stack import running_stack
    except ImportError:  # no local tools (the function image): no local stack
        return None
    return running_stack(config.data_dir.resolve())


def _no_local(setting: str, config: Settings) -> ConfigError:
    return ConfigError(
        f"{setting} is not set and no local stack runs on {config.data_dir} (start one with"
        f" `psi dev`, or set {setting} to the one the functions use)"
    )


def redis_url(config: Settings) -> str:
    """The Redis the functions use: with the embedded default, the one a running ``psi dev``
    started; never a private one no function would see."""
    if config.redis_url != EMBEDDED:
        return config.redis_url
    state = local_stack(config)
    if state and state.get("redis_url"):
        return str(state["redis_url"])
    raise _no_local("PSI_REDIS_URL", config)


def open_gate(config: Settings) -> Any:
    """A RedisGate on the configured Redis (ConfigError when Redis is disabled)."""
    from shared_lib.adapters.redis_client import connect
    from shared_lib.adapters.redis_gate import RedisGate

    if config.redis_url == DISABLED:
        raise ConfigError("PSI_REDIS_URL=disabled: there is no Redis gate to look at")
    client = connect(
        redis_url(config),
        timeout=max(config.redis_timeout_seconds, 2.0),
        data_dir=config.data_dir,
    )
    return RedisGate(
        client,
        prefix=config.redis_prefix,
        marker_ttl_seconds=config.idempotency_ttl_seconds,
        retry_after_seconds=config.redis_retry_after_seconds,
    )


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _schema_missing(error: sa.exc.DBAPIError) -> bool:
    orig = getattr(error, "orig", None)
    code = orig.args[0] if orig is not None and orig.args else None
    return code == 1146 or "no such table" in str(orig)


def kafka_bootstrap(config: Settings) -> str | None:
    """The Kafka the functions publish to: PSI_KAFKA_BOOTSTRAP, else the running local
    stack's broker, else None."""
    if config.kafka_bootstrap:
        return config.kafka_bootstrap
    state = local_stack(config)
    if state and state.get("kafka_bootstrap"):
        return str(state["kafka_bootstrap"])
    return None


def require_kafka(config: Settings) -> str:
    bootstrap = kafka_bootstrap(config)
    if bootstrap is None:
        raise _no_local("PSI_KAFKA_BOOTSTRAP", config)
    return bootstrap
