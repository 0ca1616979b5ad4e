"""A local stand-in for the cluster's service-account issuer (Knative OIDC sender tokens).

It serves what the Kubernetes API server serves for its issuer - ``/.well-known/
openid-configuration`` and the JWKS at ``/openid/v1/jwks`` - on a loopback port, and signs
RS256 tokens like a TokenRequest for a source's OIDC service account: ``iss`` the issuer,
``sub`` ``system:serviceaccount:<ns>:<name>``, ``aud`` the sink's audience, one hour.
Functions verify them exactly as they verify the cluster's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
TOKEN_SECONDS = 3600  # what the KafkaSource dispatcher asks for (TokenProvider.java)


def kafka_source_subject(namespace: str, source: str) -> str:
    """The subject of a KafkaSource's tokens: its OIDC service account is
    ``<name>-oidc-sources.knative.dev-kafkasource`` (pkg/auth/serviceaccount.go)."""
    return f"system:serviceaccount:{namespace}:{source}-oidc-sources.knative.dev-kafkasource"


def service_audience(namespace: str, service: str) -> str:
    """An audience for a Knative Service sink, in Knative's own audience format
    ``<group>/<kind>/<namespace>/<name>`` (pkg/auth/audience.go); set as ``sink.audience``."""
    return f"serving.knative.dev/service/{namespace}/{service}".lower()


class LocalIssuer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == DISCOVERY_PATH:
                    body = issuer.discovery()
                elif self.path == JWKS_PATH:
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> LocalIssuer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="psi-oidc-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": self.url + JWKS_PATH,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        from jwt.algorithms import RSAAlgorithm

        jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(
        self,
        audience: str,
        subject: str,
        *,
        lifetime: int = TOKEN_SECONDS,
        issuer: str | None = None,
    ) -> str:
        import jwt

        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "sub": subject,
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
