"""API keys with scopes, sent as ``Authorization: Bearer <key>`` and compared in constant time.

``PSI_API_KEYS`` (or the file named by ``PSI_API_KEYS_FILE``, or the mounted secret
``psi-api-keys``) holds entries separated by ``;`` or new lines: ``<key>=<scope>,<scope>``.
Scopes: ``stock:read``, ``stock:write``, ``orders:write``, ``admin`` (implies every scope).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from shared_lib.config import ConfigError, Settings

SCOPES = ("stock:read", "stock:write", "orders:write", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def parse_keys(text: str) -> list[ApiKey]:
    keys: list[ApiKey] = []
    entries = [e.strip() for e in text.replace("\n", ";").split(";")]
    for n, entry in enumerate((e for e in entries if e and not e.startswith("#")), start=1):
        secret, sep, scopes_text = entry.partition("=")
        scopes = frozenset(s.strip() for s in scopes_text.split(",") if s.strip())
        if not sep or len(secret.strip()) < 16 or not scopes:
            raise ConfigError(
                f"PSI_API_KEYS: entry {n} must be '<key of 16+ characters>=<scope>[,<scope>]'"
            )
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ConfigError(
                f"PSI_API_KEYS: entry {n} has unknown scope {sorted(unknown)[0]!r};"
                f" known: {', '.join(SCOPES)}"
            )
        keys.append(ApiKey(f"key-{n}", secret.strip(), scopes))
    return keys


class Authenticator:
    def __init__(self, keys: list[ApiKey], *, disabled: bool = False) -> None:
        self.keys = keys
        self.disabled = disabled

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        text = settings.api_keys or ""
        if settings.api_keys_file is not None:
            try:
                text += "\n" + settings.api_keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"PSI_API_KEYS_FILE: cannot read: {exc.strerror}") from None
        keys = parse_keys(text)
        if not keys and not settings.auth_disabled:
            raise ConfigError(
                "no API keys configured: set PSI_API_KEYS (or PSI_API_KEYS_FILE), "
                "or PSI_AUTH_DISABLED=true for local development only"
            )
        return cls(keys, disabled=settings.auth_disabled)

    def check(self, authorization: str | None, scope: str) -> str | None:
        """The caller's key name, or AuthError (401 unknown caller, 403 missing scope)."""
        if self.disabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "unauthorized", "send Authorization: Bearer <api key>")
        presented = token.strip().encode()
        match = None
        for key in self.keys:  # no early exit: timing says nothing about which key matched
            if hmac.compare_digest(presented, key.secret.encode()):
                match = key
        if match is None:
            raise AuthError(401, "unauthorized", "unknown API key")
        if not match.allows(scope):
            raise AuthError(403, "forbidden", f"this API key lacks the scope {scope!r}")
        return match.name
