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
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import flask

from shared_lib import logs
from shared_lib.config import ConfigError, Settings, get_settings
from shared_lib.domain import trace
from shared_lib.domain.errors import (
    InsufficientStock,
    PsiError,
    StoreUnavailable,
)
from shared_lib.http import metrics
from shared_lib.http.auth import Authenticator, AuthError
from shared_lib.http.bodies import (
    check_media,
    discard_unread_body,
    read_body,
    remove_framework_drain,
)
from shared_lib.http.conditions import check_query, etag, expected_versions, not_modified
from shared_lib.http.delivery import (
    OPENFAAS,
    DeliveryError,
    decode_json,
    final_status,
    shape_of,
    topic_of_source,
)
from shared_lib.http.delivery import parse as parse_delivery
from shared_lib.http.errors import PROBLEM_JSON, HttpError, field_name, problem, status_of
from shared_lib.http.keys import KEYS, as_sent, idempotency_key, request_meta
from shared_lib.http.refusals import Sender, write_dead_letter
from shared_lib.http.routes import HEALTH_PATHS, READY_PATHS, Call, Handler, Reply, Route
from shared_lib.services.guard import Outcome

if TYPE_CHECKING:
    from shared_lib.bootstrap import Platform

log = logs.get_logger(__name__)
ROUTE = "psi.route"
# set once a platform's sender is authenticated and the delivery is for this route's topic
SENDER = "psi.sender"
# the request's span in its trace (shared_lib.domain.trace.TraceContext)
TRACE = "psi.trace"


def _answer_http_errors_in_json(flask_app: flask.Flask) -> None:
    """Requests Flask refuses before FunctionApp sees them (a path its URL rules cannot
    match, such as one with a new line) are answered in JSON too, never an HTML page."""
    from werkzeug.exceptions import HTTPException

    def answer(error: HTTPException) -> flask.Response:
        code = re.sub(r"\W+", "_", (error.name or "error").lower()).strip("_")
        status = error.code or 400
        request_id = flask.request.headers.get("X-Request-Id") or uuid.uuid4().hex
        body = problem(status, {"error": code, "message": error.description}, request_id)
        return flask.Response(json.dumps(body), status, mimetype=PROBLEM_JSON)

    flask_app.register_error_handler(HTTPException, answer)


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
        if flask.has_app_context():  # functions-framework loads the function inside its app
            _answer_http_errors_in_json(flask.current_app)
        self._platform: Platform | None = None
        self._drain_hook_removed = False
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
        caller = request.headers.get("traceparent"), request.headers.get("tracestate")
        _trace(request, trace.continue_trace(caller))
        try:
            reply, route_label = self._dispatch(request)
        except HttpError as exc:
            reply = exc.reply
        except AuthError as exc:
            reply = Reply(exc.status, {"error": exc.code, "message": exc.message})
            if exc.status == 401:
                reply.headers["WWW-Authenticate"] = "Bearer"
        except PsiError as exc:
            reply = Reply(status_of(exc), as_sent(exc.as_dict(), request))
            if isinstance(exc, StoreUnavailable):
                reply.headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, InsufficientStock):
                metrics.OVERSELL_REJECTIONS.labels(self.name).inc()
        except Exception:
            log.exception("unhandled error", method=request.method, path=request.path)
            reply = Reply(500, {"error": "internal", "message": "unexpected server error"})
        sender: Sender | None = request.environ.get(SENDER)
        if sender is not None and 400 <= reply.status < 500:
            reply = self._refuse_delivery(request, sender, reply)
        if reply.status >= 400 and isinstance(reply.body, dict) and "error" in reply.body:
            reply.body = problem(reply.status, reply.body, request_id)
            reply.media_type = PROBLEM_JSON
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
        if not self._drain_hook_removed:
            remove_framework_drain()  # FunctionApp drains bounded instead
            self._drain_hook_removed = True
        discard_unread_body(request, reply, self.settings)
        return self._respond(reply)

    def _respond(self, reply: Reply) -> flask.Response:
        if reply.body is None:
            return flask.Response(b"", reply.status, reply.headers)
        if isinstance(reply.body, bytes | str):
            return flask.Response(reply.body, reply.status, reply.headers)
        return flask.Response(
            json.dumps(reply.body, separators=(",", ":")),
            reply.status,
            reply.headers,
            mimetype=reply.media_type,
        )

    def _dispatch(self, request: flask.Request) -> tuple[Reply, str]:
        path = request.path.rstrip("/") or "/"
        # HEAD is GET without the body (RFC 9110 9.3.2): the server leaves the body out
        method = "GET" if request.method == "HEAD" else request.method
        if method == "GET" and path in HEALTH_PATHS:
            return self._health(path in READY_PATHS), path
        if method == "GET" and path == "/metrics":
            metrics.observe_outbox(self._platform.relay if self._platform else None)
            data, content_type = metrics.exposition()
            return Reply(200, data, {"Content-Type": content_type}), path
        if method == "GET" and path == "/openapi.json":
            from shared_lib.http.openapi import document

            doc = document(self.name, self.description, self.routes, self.settings.base_path)
            return Reply(200, doc), path
        matched = [(r, r.regex.match(path)) for r in self.routes]
        matched = [(r, m) for r, m in matched if m]
        if not matched:
            raise HttpError(404, {"error": "not_found", "message": f"no route {path}"})
        for route, match in matched:
            if route.method == method:
                # errors raised by the route still count under its path, not "unmatched"
                request.environ[ROUTE] = route.path
                return self._run(route, match.groupdict(), request), route.path
        methods = {r.method for r, _ in matched}
        allowed = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        raise HttpError(
            405, {"error": "method_not_allowed", "allowed": allowed}, {"Allow": allowed}
        )

    def _run(self, route: Route, params: dict[str, str], request: flask.Request) -> Reply:
        authorization = request.headers.get("Authorization")
        # only a route that consumes a topic takes deliveries; its sender must be its platform
        platform = shape_of(request.headers) if route.mutation and route.topic else None
        if platform is None:
            actor = self.auth.check(authorization, route.scope)
        else:
            actor = self.auth.check_sender(authorization, platform)
            self._accept_sender(route, platform, request)
        check_query(route.method, route.path, route.query, request.args)
        expected = expected_versions(request.headers.get("If-Match")) if route.conditional else None
        if route.mutation:
            check_media(request, delivery=platform is not None)
        raw = read_body(request, self.settings) if route.mutation else None
        delivery = None
        try:
            if platform is not None:
                delivery = parse_delivery(platform, request.headers, raw or b"")
                document = delivery.data
            else:
                document = decode_json(raw) if raw is not None else None
        except DeliveryError as exc:
            error = "invalid_json" if exc.field == "body" else "invalid_delivery"
            raise HttpError(
                400, {"error": error, "field": exc.field, "message": str(exc)}
            ) from None
        event_trace = trace.parse(delivery.traceparent, delivery.tracestate) if delivery else None
        if event_trace is not None:  # the trace that created the event, before the hop's header
            _trace(request, event_trace.child())
        meta = None
        if route.mutation:
            key = idempotency_key(request, delivery)
            meta = replace(request_meta(key, actor, delivery), trace=request.environ[TRACE])
            request.environ[KEYS] = (meta.idempotency_key, key)
            logs.bind(
                idempotency_key=key,
                actor=actor,
                event_id=delivery.event_id if delivery else None,
                event_source=delivery.source if delivery else None,
            )
        body = self._validate(route, document)
        call = Call(
            params, request.args, body, meta, delivery, self.name, lambda: self.platform, expected
        )
        result = route.handler(call)
        if isinstance(result, Reply):
            return self._describe(route, request, result)
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        if result.degraded:
            headers["X-PSI-Degraded"] = "true"
        if not result.replayed:
            self._observe_gate(result.degraded)
        self._after_commit()
        return self._describe(
            route, request, Reply(201 if route.created else 200, result.body, headers)
        )

    def _describe(self, route: Route, request: flask.Request, reply: Reply) -> Reply:
        """Where a created record lives (Location), which version a read shows (ETag), and
        304 when the caller has that version already."""
        if reply.status == 201:
            path = route.location(reply.body) if route.location else request.path
            reply.headers["Location"] = self.settings.base_path + quote(path, safe="/")
        if route.etag and reply.status in (200, 201) and isinstance(reply.body, dict):
            tag = etag(reply.body)
            reply.headers["ETag"] = tag
            if not route.mutation and not_modified(request.headers.get("If-None-Match"), tag):
                return Reply(304, None, {"ETag": tag})
        return reply

    def _accept_sender(self, route: Route, platform: str, request: flask.Request) -> None:
        """A delivery names its topic in the envelope (X-Topic, or a KafkaSource source's
        fragment); one for another function's topic is refused and never dead-lettered."""
        named = request.headers.get("X-Topic") if platform == OPENFAAS else None
        named = named or topic_of_source(request.headers.get("ce-source"))
        if not route.consumes(named):
            log.error("delivery for another topic", topic=named, consumes=route.topic)
            raise HttpError(
                400,
                {
                    "error": "unexpected_topic",
                    "message": f"this function consumes {route.topic}",
                    "topic": named,
                },
            )
        request.environ[SENDER] = Sender(platform, named or str(route.topic))

    def _observe_gate(self, degraded: bool) -> None:
        gate = self.platform.gate if self.needs_redis else None
        if gate is not None:  # with Redis disabled by configuration there is no fast path
            metrics.observe_gate(self.name, degraded=degraded or not gate.reachable)

    def _after_commit(self) -> None:
        kick = getattr(self.platform, "kick_relay", None)
        if kick is not None:
            kick()

    def _refuse_delivery(self, request: flask.Request, sender: Sender, reply: Reply) -> Reply:
        """A delivery refused for good ends once on every platform: Knative dead-letters
        what it is answered with a status it does not retry; on OpenFaaS nothing parks a
        refusal, so the function writes the dead letter itself, once per record."""
        if reply.status in (408, 429):
            return reply  # transient: the platform delivers it again
        if sender.platform == OPENFAAS:
            try:
                reply = self._dead_letter(request, sender, reply)
            except PsiError as exc:  # the letter could not be kept: deliver it again later
                return Reply(status_of(exc), exc.as_dict(), {"Retry-After": "5"})
            except Exception:
                log.exception("dead letter not written")
                return Reply(500, {"error": "internal", "message": "dead letter not written"})
        reply.status = final_status(sender.platform, reply.status)
        return reply

    def _dead_letter(self, request: flask.Request, sender: Sender, reply: Reply) -> Reply:
        answer, parked = write_dead_letter(
            request,
            sender,
            reply,
            function=self.name,
            settings=self.settings,
            tx=self.platform.deps.tx,
        )
        if parked:
            self._after_commit()
        return answer

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


def _trace(request: flask.Request, span: trace.TraceContext) -> None:
    """The request's span: in every log line, and in the events the request causes."""
    request.environ[TRACE] = span
    logs.bind(trace_id=span.trace_id, span_id=span.span_id)


def outcome_metric(kind: str) -> Callable[[Handler], Handler]:
    """Count a use case's outcomes by kind (ok, replayed, degraded, refused, failed)."""

    def wrap(handler: Handler) -> Handler:
        def counted(call: Call) -> Reply | Outcome:
            try:
                result = handler(call)
            except PsiError as exc:
                metrics.STOCK_OPERATIONS.labels(call.function, kind, exc.code).inc()
                raise
            if isinstance(result, Outcome):
                outcome = "replayed" if result.replayed else "degraded" if result.degraded else "ok"
                metrics.STOCK_OPERATIONS.labels(call.function, kind, outcome).inc()
            return result

        return counted

    return wrap
