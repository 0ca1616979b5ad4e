"""The one HTTP / CloudEvent adapter every function entry point uses.

It owns: routing, body limits and JSON parsing, validation errors that name the field,
the Idempotency-Key contract, Kafka deliveries (CloudEvents, kafka-connector), API-key auth,
the mapping of domain errors to status codes, health, metrics and the OpenAPI document.
A function's main.py only declares routes and turns a valid body into a use-case call.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import flask

from shared_lib import logs
from shared_lib.config import ConfigError, Settings, get_settings
from shared_lib.domain.errors import (
    Conflict,
    InsufficientStock,
    InvalidRequest,
    NotFound,
    PsiError,
    StoreUnavailable,
)
from shared_lib.domain.model import RequestMeta
from shared_lib.http import metrics
from shared_lib.http.auth import Authenticator, AuthError
from shared_lib.http.delivery import Delivery, classify
from shared_lib.services.guard import Outcome

if TYPE_CHECKING:
    from pydantic import BaseModel

    from shared_lib.bootstrap import Platform

log = logs.get_logger(__name__)
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,200}$")
HEALTH_PATHS = ("/health/live", "/health/ready", "/_/health", "/_/ready")
RAW_BODY = "psi.raw_body"
ROUTE = "psi.route"


def is_connector_delivery(request: flask.Request) -> bool:
    """OpenFaaS kafka-connector posts the raw record with X-Topic and no CloudEvent headers;
    nobody else parks what the function refuses, so the function does (KafkaSource has its
    own dead-letter sink)."""
    return bool(request.headers.get("X-Topic")) and not request.headers.get("ce-id")


def _int_header(request: flask.Request, name: str) -> int | None:
    value = request.headers.get(name, "")
    return int(value) if value.isdigit() else None


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """What a handler gets: validated body, path and query parameters, who and which key."""

    params: dict[str, str]
    query: Mapping[str, str]
    body: Any
    meta: RequestMeta | None
    delivery: Delivery | None
    app: FunctionApp

    @property
    def platform(self) -> Platform:
        return self.app.platform


Handler = Callable[[Call], Reply | Outcome]
# a body model, or the name of one in shared_lib.http.schemas: pydantic (not cheap to import)
# then loads with the first body or OpenAPI document, not with the function
Model = type["BaseModel"] | str


def body_model(model: Model) -> type[BaseModel]:
    if isinstance(model, str):
        from shared_lib.http import schemas

        found: type[BaseModel] = getattr(schemas, model)
        return found
    return model


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    scope: str
    summary: str
    body: Model | Callable[[Any], BaseModel] | None = None
    body_schema: Model | list[Model] | None = None
    created: bool = False
    topic: str | None = None
    also_topics: tuple[str, ...] = ()
    key_required: bool = True
    query: tuple[str, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path.rstrip("/") or "/")
        self.regex = re.compile(f"^{pattern}/?$")

    @property
    def mutation(self) -> bool:
        return self.method in ("POST", "PUT", "DELETE", "PATCH")

    def parse_body(self, document: dict[str, Any]) -> BaseModel:
        if self.body is None:
            raise TypeError(f"{self.method} {self.path} takes no body")
        if isinstance(self.body, str | type):
            return body_model(self.body)(**document)
        return self.body(document)

    def consumes(self, topic: str | None) -> bool:
        """A delivery is accepted when its topic is unknown or one this route consumes."""
        if self.topic is None:
            return False
        return topic is None or topic == self.topic or topic in self.also_topics


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(body.get("message", body.get("error")))
        self.reply = Reply(status, body, headers or {})


def status_of(error: PsiError) -> int:
    if isinstance(error, InvalidRequest):
        return 422
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, StoreUnavailable):
        return 503
    return 400


def field_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


class FunctionApp:
    def __init__(
        self,
        name: str,
        routes: list[Route],
        *,
        description: str = "",
        needs_redis: bool = True,
        settings: Settings | None = None,
    ) -> None:
        self.name = name
        self.routes = routes
        self.description = description
        self.needs_redis = needs_redis
        try:
            self.settings = settings or get_settings()
            self.auth = Authenticator.from_settings(self.settings)
        except ConfigError as exc:
            # one clear line, then stop: the platform shows it as the reason the start failed
            print(f"psi {name}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        logs.configure(self.settings.log_level)
        self._platform: Platform | None = None
        metrics.register_function(name, uses_gate=needs_redis)

    @property
    def platform(self) -> Platform:
        if self._platform is None:
            # the stores' clients load on first use: a cold start answers health checks sooner
            from shared_lib.bootstrap import get_platform

            self._platform = get_platform(source=f"/psi/{self.name}")
        return self._platform

    # -- entry point
    def __call__(self, request: flask.Request) -> flask.Response:
        started = time.perf_counter()
        route_label = "unmatched"
        logs.clear()
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        logs.bind(function=self.name, request_id=request_id)
        try:
            reply, route_label = self._dispatch(request)
        except HttpError as exc:
            reply = exc.reply
        except AuthError as exc:
            reply = Reply(exc.status, {"error": exc.code, "message": exc.message})
            if exc.status == 401:
                reply.headers["WWW-Authenticate"] = "Bearer"
        except PsiError as exc:
            reply = Reply(status_of(exc), exc.as_dict())
            if isinstance(exc, StoreUnavailable):
                reply.headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, InsufficientStock):
                metrics.OVERSELL_REJECTIONS.labels(self.name).inc()
        except Exception:
            log.exception("unhandled error", method=request.method, path=request.path)
            reply = Reply(500, {"error": "internal", "message": "unexpected server error"})
        # 401/403: not a delivery we trust, so nothing of it is written anywhere
        refused = 400 <= reply.status < 500 and reply.status not in (401, 403)
        if refused and is_connector_delivery(request):
            self._dead_letter(request, reply)
        elapsed = time.perf_counter() - started
        route_label = request.environ.get(ROUTE, route_label)
        metrics.REQUESTS.labels(self.name, route_label, str(reply.status)).inc()
        metrics.LATENCY.labels(self.name, route_label).observe(elapsed)
        if route_label not in HEALTH_PATHS and route_label != "/metrics":
            error = reply.body.get("error") if isinstance(reply.body, dict) else None
            log.info(
                "request",
                method=request.method,
                path=request.path,
                status=reply.status,
                ms=round(elapsed * 1000, 2),
                error=error,
            )
        reply.headers.setdefault("X-Request-Id", request_id)
        return self._respond(reply)

    def _respond(self, reply: Reply) -> flask.Response:
        if isinstance(reply.body, bytes | str):
            return flask.Response(reply.body, reply.status, reply.headers)
        return flask.Response(
            json.dumps(reply.body, separators=(",", ":")),
            reply.status,
            reply.headers,
            mimetype="application/json",
        )

    def _dispatch(self, request: flask.Request) -> tuple[Reply, str]:
        path = request.path.rstrip("/") or "/"
        if request.method == "GET" and path in HEALTH_PATHS:
            return self._health(path.endswith("ready")), path
        if request.method == "GET" and path == "/metrics":
            metrics.observe_outbox(self._platform.relay if self._platform else None)
            data, content_type = metrics.exposition()
            return Reply(200, data, {"Content-Type": content_type}), path
        if request.method == "GET" and path == "/openapi.json":
            from shared_lib.http.openapi import document

            return Reply(200, document(self)), path
        matched = [(r, r.regex.match(path)) for r in self.routes]
        matched = [(r, m) for r, m in matched if m]
        if not matched:
            raise HttpError(404, {"error": "not_found", "message": f"no route {path}"})
        for route, match in matched:
            if route.method == request.method:
                # errors raised by the route still count under its path, not "unmatched"
                request.environ[ROUTE] = route.path
                return self._run(route, match.groupdict(), request), route.path
        allowed = ", ".join(sorted({r.method for r, _ in matched}))
        raise HttpError(
            405, {"error": "method_not_allowed", "allowed": allowed}, {"Allow": allowed}
        )

    def _run(self, route: Route, params: dict[str, str], request: flask.Request) -> Reply:
        actor = self.auth.check(request.headers.get("Authorization"), route.scope)
        document = self._read_json(request) if route.mutation else None
        delivery = classify(request.headers, document) if route.mutation else None
        if delivery is not None:
            if not route.consumes(delivery.topic):
                raise HttpError(
                    400,
                    {
                        "error": "unexpected_topic",
                        "message": f"this function consumes {route.topic or 'no topic'}",
                        "topic": delivery.topic,
                    },
                )
            document = delivery.data
        meta = None
        if route.mutation:
            key = request.headers.get("Idempotency-Key") or (delivery and delivery.event_id)
            if not key and not route.key_required:
                key = uuid.uuid4().hex
            if not key:
                raise HttpError(
                    400,
                    {
                        "error": "invalid_request",
                        "field": "Idempotency-Key",
                        "message": "Idempotency-Key: header is required for this request",
                    },
                )
            if not KEY_PATTERN.match(key):
                raise HttpError(
                    400,
                    {
                        "error": "invalid_request",
                        "field": "Idempotency-Key",
                        "message": "Idempotency-Key: 1..200 printable ASCII characters",
                    },
                )
            meta = RequestMeta(idempotency_key=key, actor=actor)
            logs.bind(idempotency_key=key, event_id=delivery.event_id if delivery else None)
        body = self._validate(route, document)
        call = Call(params, request.args, body, meta, delivery, self)
        result = route.handler(call)
        if isinstance(result, Reply):
            return result
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        if result.degraded:
            headers["X-PSI-Degraded"] = "true"
        if not result.replayed:
            self._observe_gate(result.degraded)
        self._after_commit()
        return Reply(201 if route.created else 200, result.body, headers)

    def _observe_gate(self, degraded: bool) -> None:
        gate = self.platform.gate if self.needs_redis else None
        if gate is not None:  # with Redis disabled by configuration there is no fast path
            metrics.observe_gate(self.name, degraded=degraded or not gate.reachable)

    def _after_commit(self) -> None:
        kick = getattr(self.platform, "kick_relay", None)
        if kick is not None:
            kick()

    def _dead_letter(self, request: flask.Request, reply: Reply) -> None:
        from shared_lib.domain.events import dead_letter
        from shared_lib.topics import DEAD_LETTER

        reason = json.dumps(reply.body) if isinstance(reply.body, dict) else str(reply.body)
        document = dead_letter(
            topic=request.headers["X-Topic"],
            partition=_int_header(request, "X-Kafka-Partition"),
            offset=_int_header(request, "X-Kafka-Offset"),
            key=request.headers.get("X-Kafka-Key"),
            payload=request.environ.get(RAW_BODY, b""),
            status=reply.status,
            reason=reason,
            function=self.name,
        )
        publisher = self.platform.publisher
        metrics.dead_letter(self.name, document["topic"])
        if publisher is None:
            log.warning("dead letter (no Kafka configured)", dead_letter=document)
            return
        try:
            publisher.publish(
                DEAD_LETTER, document["key"] or "", json.dumps(document).encode(), None
            )
        except Exception as exc:
            log.error("dead letter not published", error=str(exc), dead_letter=document)

    def _read_json(self, request: flask.Request) -> Any:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, {"error": "body_too_large", "limit_bytes": limit})
        raw = request.stream.read(limit + 1)
        request.environ[RAW_BODY] = raw
        if len(raw) > limit:
            raise HttpError(413, {"error": "body_too_large", "limit_bytes": limit})
        if not raw.strip():
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            message = "body: is not valid UTF-8"
        except json.JSONDecodeError as exc:
            message = f"body: is not valid JSON ({exc.msg} at character {exc.pos})"
        raise HttpError(400, {"error": "invalid_json", "field": "body", "message": message})

    def _validate(self, route: Route, document: Any) -> Any:
        if route.body is None:
            return None
        if not isinstance(document, dict):
            raise HttpError(
                422,
                {"error": "invalid_request", "field": "body", "message": "body: must be an object"},
            )
        from pydantic import ValidationError

        try:
            return route.parse_body(document)
        except ValidationError as exc:
            problems = [{"field": field_name(e["loc"]), "message": e["msg"]} for e in exc.errors()]
            first = problems[0]
            raise HttpError(
                422,
                {
                    "error": "invalid_request",
                    "field": first["field"],
                    "message": f"{first['field']}: {first['message']}",
                    "problems": problems,
                },
            ) from None

    # -- health
    def _health(self, readiness: bool) -> Reply:
        if not readiness:
            return Reply(200, {"status": "ok", "function": self.name})
        checks: dict[str, str] = {}
        try:
            platform = self.platform
            with platform.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            log.warning("readiness: database check failed", error=str(exc))
            return Reply(
                503, {"status": "unavailable", "database": "unreachable"}, {"Retry-After": "5"}
            )
        gate = platform.gate
        if self.needs_redis and gate is not None:
            up = gate.ping()
            checks["redis"] = "ok" if up else "unreachable"
            if not up:  # only a request on the fast path clears it
                metrics.observe_gate(self.name, degraded=True)
        mode = "degraded" if checks.get("redis") == "unreachable" else "normal"
        return Reply(200, {"status": "ready", "mode": mode, **checks})


def outcome_metric(kind: str) -> Callable[[Handler], Handler]:
    """Count a use case's outcomes by kind (ok, replayed, degraded, refused, failed)."""

    def wrap(handler: Handler) -> Handler:
        def counted(call: Call) -> Reply | Outcome:
            try:
                result = handler(call)
            except PsiError as exc:
                metrics.STOCK_OPERATIONS.labels(call.app.name, kind, exc.code).inc()
                raise
            if isinstance(result, Outcome):
                outcome = "replayed" if result.replayed else "degraded" if result.degraded else "ok"
                metrics.STOCK_OPERATIONS.labels(call.app.name, kind, outcome).inc()
            return result

        return counted

    return wrap
