"""Who is calling: API keys with scopes, and the platforms' delivery senders.

API keys are sent as ``Authorization: Bearer <key>`` (or as the password of HTTP Basic
credentials, which is all an OpenFaaS connector can send: Go's net/http turns the user
info of its ``gateway_url`` into ``Authorization: Basic``) and compared in constant time.
``PSI_API_KEYS`` (or the file named by ``PSI_API_KEYS_FILE``, or the mounted secret
``psi-api-keys``) holds entries separated by ``;`` or new lines: ``<key>=<scope>,<scope>``.
Scopes: ``stock:read``, ``stock:write``, ``orders:write``, ``events:deliver`` (an OpenFaaS
connector's key: it may deliver Kafka records, nothing else), ``admin`` (every scope).

Knative deliveries carry an OIDC sender token instead (``shared_lib.http.senders``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared_lib.config import ConfigError, Settings
from shared_lib.http.errors import AuthError as AuthError  # raised here; callers import it here

if TYPE_CHECKING:
    from shared_lib.http.senders import OidcVerifier

DELIVER = "events:deliver"
SCOPES = ("stock:read", "stock:write", "orders:write", DELIVER, "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


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
        keys.append(ApiKey(principal_of(secret.strip()), secret.strip(), scopes))
    return keys


def principal_of(secret: str) -> str:
    """Who holds a key, as logs, the ledger's actor and idempotency scopes name it: stable
    across reordering and adding keys, and saying nothing of the secret."""
    return f"key-{hashlib.sha256(secret.encode()).hexdigest()[:12]}"


def _presented_secret(authorization: str | None) -> str | None:
    """The key in ``Bearer <key>``, or the password of ``Basic base64(user:password)``."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    if scheme.lower() == "basic" and token:
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class Authenticator:
    def __init__(
        self,
        keys: list[ApiKey],
        *,
        disabled: bool = False,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self.keys = keys
        self.disabled = disabled
        self.oidc = oidc

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
        return cls(keys, disabled=settings.auth_disabled, oidc=oidc_from_settings(settings))

    def check(self, authorization: str | None, scope: str) -> str | None:
        """The caller's key name, or AuthError (401 unknown caller, 403 missing scope)."""
        if self.disabled:
            return None
        secret = _presented_secret(authorization)
        if secret is None:
            raise AuthError(401, "unauthorized", "send Authorization: Bearer <api key>")
        presented = secret.encode()
        match = None
        for key in self.keys:  # no early exit: timing says nothing about which key matched
            if hmac.compare_digest(presented, key.secret.encode()):
                match = key
        if match is None:
            raise AuthError(401, "unauthorized", "unknown API key")
        if not match.allows(scope):
            raise AuthError(403, "forbidden", f"this API key lacks the scope {scope!r}")
        return match.name

    def check_sender(self, authorization: str | None, platform: str) -> str | None:
        """Who sent a delivery of ``platform``'s shape: a Knative source's OIDC subject, or
        the name of an OpenFaaS connector's key. Anything else is refused: a delivery's
        headers are only believed from its platform."""
        from shared_lib.http.delivery import KNATIVE

        if self.disabled:
            return None
        if platform != KNATIVE:
            return self.check(authorization, DELIVER)
        scheme, _, token = (authorization or "").partition(" ")
        if self.oidc is None:
            raise AuthError(
                401,
                "unauthorized",
                "CloudEvent deliveries need a Knative OIDC sender token, and this function"
                " has no issuer configured (PSI_OIDC_DISCOVERY_URL)",
            )
        if scheme.lower() != "bearer" or token.strip().count(".") != 2:
            raise AuthError(
                401, "unauthorized", "a CloudEvent delivery needs a Knative OIDC sender token"
            )
        return self.oidc.verify(token.strip())


def oidc_from_settings(settings: Settings) -> OidcVerifier | None:
    if settings.oidc_discovery_url is None:
        return None
    if not settings.oidc_audience or not settings.oidc_subjects:
        raise ConfigError(
            "PSI_OIDC_DISCOVERY_URL needs PSI_OIDC_AUDIENCE (the sink.audience of this"
            " function's sources) and PSI_OIDC_SUBJECTS (the sources it trusts)"
        )
    from shared_lib.http.senders import OidcVerifier

    subjects = frozenset(s.strip() for s in settings.oidc_subjects.split(",") if s.strip())
    return OidcVerifier(
        settings.oidc_discovery_url,
        settings.oidc_audience,
        subjects,
        ca_file=settings.oidc_ca_file,
        token_file=settings.oidc_token_file,
    )
