"""Knative Eventing OIDC sender tokens, verified by the function itself.

With ``authentication-oidc`` enabled, a KafkaSource whose ``sink.audience`` is set sends
``Authorization: Bearer <JWT>``: a Kubernetes service-account token of the source's OIDC
service account (``<source>-oidc-sources.knative.dev-kafkasource``), issued by the cluster's
service-account issuer for that audience. Knative Serving verifies nothing, so the function
does what Eventing's own receivers do (knative/eventing pkg/auth/verifier.go): discover the
issuer at ``<base>/.well-known/openid-configuration``, check the signature against its JWKS,
the issuer, the audience and the expiry; then this product also checks the subject against
the sources it trusts. docs/platform-contracts.md cites the sources.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_lib import logs
from shared_lib.domain.errors import StoreUnavailable
from shared_lib.http.errors import AuthError

if TYPE_CHECKING:
    import jwt

# what the Kubernetes service-account issuer signs with (pkg/serviceaccount/openidmetadata.go)
ALGORITHMS = ("RS256", "ES256", "ES384", "ES512")
LEEWAY_SECONDS = 30
DISCOVERY_PATH = "/.well-known/openid-configuration"
FETCH_TIMEOUT_SECONDS = 5.0
log = logs.get_logger(__name__)


def issuer_unavailable(detail: str) -> StoreUnavailable:
    """The issuer could not be read: answered 503, so the platform delivers again."""
    log.warning("OIDC issuer unavailable", error=detail)
    return StoreUnavailable("the OIDC issuer")


class OidcVerifier:
    def __init__(
        self,
        discovery_url: str,
        audience: str,
        subjects: frozenset[str],
        *,
        ca_file: Path | None = None,
        token_file: Path | None = None,
    ) -> None:
        self.discovery_url = discovery_url.rstrip("/")
        self.audience = audience
        self.subjects = subjects
        self.ca_file = ca_file
        self.token_file = token_file
        self._lock = threading.Lock()
        self._issuer: str | None = None
        self._keys: jwt.PyJWKClient | None = None

    def _request_headers(self) -> dict[str, str]:
        # the API server serves discovery to authenticated service accounts
        # (ClusterRole system:service-account-issuer-discovery): the pod's own token
        if self.token_file is not None and self.token_file.is_file():
            token = self.token_file.read_text(encoding="utf-8").strip()
            return {"Authorization": f"Bearer {token}"}
        return {}

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def _provider(self) -> tuple[str, jwt.PyJWKClient]:
        with self._lock:
            if self._issuer is not None and self._keys is not None:
                return self._issuer, self._keys
            import jwt

            request = urllib.request.Request(
                self.discovery_url + DISCOVERY_PATH, headers=self._request_headers()
            )
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                urllib.request.HTTPSHandler(context=self._ssl_context()),
            )
            try:
                with opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
                    document: dict[str, Any] = json.loads(response.read(1 << 20))
                issuer, jwks_uri = document["issuer"], document["jwks_uri"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise issuer_unavailable(f"discovery at {self.discovery_url}: {exc}") from None
            self._issuer = str(issuer)
            self._keys = jwt.PyJWKClient(
                str(jwks_uri),
                headers=self._request_headers(),
                timeout=FETCH_TIMEOUT_SECONDS,
                ssl_context=self._ssl_context(),
                lifespan=300,
            )
            return self._issuer, self._keys

    def verify(self, token: str) -> str:
        """The sender's subject; AuthError 401 for a token that is not valid for this
        function, 403 for a valid token of a sender it does not trust."""
        import jwt

        issuer, keys = self._provider()
        keys.headers = self._request_headers()  # service-account tokens rotate: the current one
        try:
            key = keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise issuer_unavailable(f"keys: {exc}") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, "unauthorized", f"sender token: {exc}") from None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(401, "unauthorized", f"sender token: {exc}") from None
        subject = str(claims["sub"])
        if subject not in self.subjects:
            raise AuthError(403, "forbidden", f"sender {subject!r} may not deliver here")
        return subject
