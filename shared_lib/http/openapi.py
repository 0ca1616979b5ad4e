"""OpenAPI 3.1 document of one function, built from its routes, request and response models.

What a route declares decides what is documented: its body model (request), its response
model (``shared_lib.http.responses``), ``created`` (201 with ``Location``), ``etag`` (an
``ETag`` on its answer; on a read also ``If-None-Match`` and 304), ``conditional``
(``If-Match``, 412), ``mutation`` (``Idempotency-Key``, replays). Errors are RFC 9457
problems (``PROBLEM_JSON``, the Problem schema). A GET is documented with its HEAD.

Operation ids are ``<function>_<operation>`` (``createOrder_place``), unique across the
functions, so that one client can be generated for all of them (``psi openapi``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from shared_lib.domain.model import SKU_MAX, TEXT_MAX, WAREHOUSE_MAX, OrderStatus
from shared_lib.http.errors import PROBLEM_JSON
from shared_lib.http.routes import LIVE_PATHS, READY_PATHS, Route, body_model

REF = "#/components/schemas/{model}"
JSON = "application/json"
INSTANT = {"type": "string", "format": "date-time"}  # RFC 3339, with its offset
QUERY = {
    "warehouse": ({"type": "string", "maxLength": WAREHOUSE_MAX}, "Only this warehouse"),
    "sku": ({"type": "string", "maxLength": SKU_MAX}, "Only this sku"),
    "reference": (
        {"type": "string", "maxLength": TEXT_MAX["reference"]},
        "Only rows with exactly this reference",
    ),
    "customer": (
        {"type": "string", "maxLength": TEXT_MAX["customer"]},
        "Only orders of exactly this customer",
    ),
    "status": ({"type": "string", "enum": [s.value for s in OrderStatus]}, "Only this status"),
    "from": (INSTANT, "Only rows written at or after this time"),
    "to": (INSTANT, "Only rows written before this time (later than `from`)"),
    "created_from": (INSTANT, "Only orders placed at or after this time"),
    "created_to": (INSTANT, "Only orders placed before this time (later than `created_from`)"),
    "limit": ({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size"),
    "cursor": ({"type": "string"}, "Opaque cursor from the previous page's next_cursor"),
}
STANDARD = {
    400: "Malformed request: bad or ambiguous JSON, a missing or repeated Idempotency-Key, an"
    " unknown or repeated query parameter, a malformed If-Match or If-None-Match, a delivery"
    " for another topic",
    401: "Missing or unknown API key",
    403: "The API key lacks the scope",
    404: "Unknown sku, warehouse, order or route",
    408: "The body stopped arriving (GUNICORN_READ_TIMEOUT)",
    409: "Insufficient stock, idempotency key reused, request in progress, or a state conflict",
    413: "Body too large",
    415: "The body is not application/json in UTF-8, or is compressed",
    422: "Invalid body or parameter; `field` names the offending one",
    503: "A store is down and no degraded path exists (see Retry-After)",
}
# the statuses only a request with a body can get
BODY_ONLY = (408, 409, 413, 415)
TAGS = {
    "products": "Products of the catalog",
    "warehouses": "Warehouses of the catalog",
    "receipts": "Goods received into a warehouse",
    "adjustments": "Cycle counts: on_hand set to what was counted",
    "issues": "Goods leaving a warehouse: a reserved order shipped, or issued directly",
    "transfers": "Goods moved between warehouses",
    "orders": "Sales orders: reserved, shipped, cancelled or expired",
    "levels": "Balances: on hand, reserved, available",
    "movements": "The ledger: every change of a balance",
    "reconcile-runs": "Reconciliation of the gate, the balances and the ledger",
    "health": "Liveness and readiness",
}
SERVERS = [
    {
        "url": "/",
        "description": "The function's own root. On OpenFaaS the gateway serves it under "
        "/function/<name> (e.g. /function/create-order/{order_id}); on Knative the function "
        "is the whole of its own host (<name>.<namespace>.<domain>), under /.",
    }
]
HEADERS: dict[str, dict[str, Any]] = {
    "Idempotent-Replayed": {
        "description": "`true` on a replay: the first answer to this Idempotency-Key, again",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-PSI-Degraded": {
        "description": "`true` when the write ran without the Redis gate (degraded mode: the"
        " database's guard alone decided)",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Location": {
        "description": "Where the created record is read: its path, below the function's base"
        " path (PSI_BASE_PATH, e.g. /function/create-order on OpenFaaS)",
        "required": True,
        "schema": {"type": "string", "format": "uri-reference"},
    },
    "ETag": {
        "description": "The strong entity tag of the record as answered; send it back in"
        " If-None-Match (reads) or If-Match (writes)",
        "required": True,
        "schema": {"type": "string", "pattern": '^"[\\x21\\x23-\\x7e]*"$'},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying (a retry with the same Idempotency-Key"
        " is safe)",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Scoped to the API key that sends it. A replay returns the first answer;"
    " reuse with another body is refused (409). Kafka deliveries are known by their own"
    " identity instead.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-+\\--~]+$"},
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": 'Entity tags the caller has ("...", W/"...") or *: 304 when one is current',
    "schema": {"type": "string"},
}
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'Entity tags ("...") of the version this write replaces, or * for any'
    " existing one; 412 when the record changed since (or is gone). Without it the write"
    " is unconditional.",
    "schema": {"type": "string"},
}


def camel(text: str) -> str:
    first, *rest = [word for word in re.split(r"[^A-Za-z0-9]+", text) if word]
    return first.lower() + "".join(word[:1].upper() + word[1:] for word in rest)


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {JSON: media}


def _problem(
    description: str, example: dict[str, Any] | None = None, **headers: dict[str, Any]
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": REF.format(model="Problem")}}
    if example is not None:
        media["example"] = example
    answer: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: media}}
    if headers:
        answer["headers"] = headers
    return answer


def _without_null_defaults(schema: Any) -> Any:
    """A member documented as absent-when-unknown is not null: drop pydantic's ``default:
    null`` on it (a response schema describes what is sent, not how to parse it)."""
    if isinstance(schema, dict):
        return {
            k: _without_null_defaults(v)
            for k, v in schema.items()
            if not (k == "default" and v is None)
        }
    if isinstance(schema, list):
        return [_without_null_defaults(v) for v in schema]
    return schema


def add_schema(components: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    """One definition per name: the same name with another definition is a mistake."""
    if components.setdefault(name, schema) != schema:
        raise ValueError(f"two different schemas named {name!r}")


def _add_model(
    components: dict[str, Any], model: type[BaseModel], *, answer: bool = False
) -> dict[str, str]:
    schema = model.model_json_schema(ref_template=REF)
    if answer:
        schema = _without_null_defaults(schema)
    for name, sub in schema.pop("$defs", {}).items():
        add_schema(components, name, sub)
    add_schema(components, model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def _one_of(refs: list[dict[str, str]]) -> dict[str, Any]:
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


def _request_models(route: Route) -> list[type[BaseModel]]:
    schema = route.body_schema or route.body
    given = schema if isinstance(schema, list) else [schema]
    return [
        body_model(model)
        for model in given
        if isinstance(model, str) or (isinstance(model, type) and issubclass(model, BaseModel))
    ]


def response_models(route: Route) -> list[type[BaseModel]]:
    from shared_lib.http import responses

    names = route.response if isinstance(route.response, list) else [route.response]
    return [getattr(responses, name) for name in names if name is not None]


def _parameters(route: Route) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in re.findall(r"\{(\w+)\}", route.path)
    ]
    for name in route.query:
        schema, text = QUERY.get(name, ({"type": "string"}, name))
        found.append(
            {"name": name, "in": "query", "required": False, "schema": schema, "description": text}
        )
    if route.mutation:
        found.append(IDEMPOTENCY_KEY)
    if route.etag and not route.mutation:
        found.append(IF_NONE_MATCH)
    if route.conditional:
        found.append(IF_MATCH)
    return found


def _successes(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    models = response_models(route)
    if models:
        content = _json(
            _one_of([_add_model(components, m, answer=True) for m in models]),
            getattr(models[0], "EXAMPLE", None),
        )
    else:
        content = _json({"type": "object"})
    ok = 201 if route.created else 200
    answers: dict[str, Any] = {}
    for status in sorted({ok, *(s for s in route.responses if s < 300)}):
        headers: dict[str, Any] = {}
        if status == 201:
            headers["Location"] = HEADERS["Location"]
        if route.etag:
            headers["ETag"] = HEADERS["ETag"]
        if route.mutation:
            headers["Idempotent-Replayed"] = HEADERS["Idempotent-Replayed"]
            headers["X-PSI-Degraded"] = HEADERS["X-PSI-Degraded"]
        answer = {"description": route.responses.get(status, "Success"), "content": content}
        if headers:
            answer["headers"] = headers
        answers[str(status)] = answer
    if route.etag and not route.mutation:
        answers["304"] = {
            "description": "Not modified: If-None-Match names the current version (no body)",
            "headers": {"ETag": HEADERS["ETag"]},
        }
    return answers


def _errors(route: Route) -> dict[str, Any]:
    from shared_lib.http.responses import Problem

    answers: dict[str, Any] = {}
    for status, text in STANDARD.items():
        if status in BODY_ONLY and not route.mutation:
            continue
        text = route.responses.get(status, text)
        if status == 503:
            answers[str(status)] = _problem(text, **{"Retry-After": HEADERS["Retry-After"]})
        elif status == 409 and route.body is not None:
            answers[str(status)] = _problem(text, Problem.EXAMPLE)
        else:
            answers[str(status)] = _problem(text)
    if route.conditional:
        answers["412"] = _problem("If-Match names no current version: the record changed or went")
    return dict(sorted(answers.items()))


def operation(function: str, route: Route, components: dict[str, Any]) -> dict[str, Any]:
    local = route.operation_id or camel(f"{route.method} {route.path}") or route.method.lower()
    found: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{camel(function)}_{local}",
        "tags": list(route.tags or (function,)),
        "security": [{"bearer": [route.scope]}],
        "parameters": _parameters(route),
    }
    models = _request_models(route)
    if models:
        refs = [_add_model(components, m) for m in models]
        found["requestBody"] = {"required": True, "content": _json(_one_of(refs), route.example)}
    found["responses"] = {**_successes(route, components), **_errors(route)}
    if route.topic:
        found["x-kafka-topic"] = route.topic
    return found


def head_of(get: dict[str, Any]) -> dict[str, Any]:
    """HEAD: the GET's answers, headers included, without their bodies."""
    head = copy.deepcopy(get)
    head["operationId"] += "Head"
    head["summary"] += " (headers only)"
    for answer in head["responses"].values():
        answer.pop("content", None)
    return head


def _health(function: str, components: dict[str, Any]) -> dict[str, Any]:
    from shared_lib.http.responses import Liveness, Readiness, Unready

    live = {
        "summary": "Liveness",
        "operationId": f"{camel(function)}_liveness",
        "tags": ["health"],
        "security": [],
        "responses": {
            "200": {
                "description": "The process answers",
                "content": _json(_add_model(components, Liveness, answer=True), Liveness.EXAMPLE),
            }
        },
    }
    ready = {
        "summary": "Readiness: the database answers (and the gate, where there is one)",
        "operationId": f"{camel(function)}_readiness",
        "tags": ["health"],
        "security": [],
        "responses": {
            "200": {
                "description": "Ready (mode degraded: Redis unreachable, the database decides)",
                "content": _json(_add_model(components, Readiness, answer=True), Readiness.EXAMPLE),
            },
            "503": {
                "description": "Not ready: the database does not answer",
                "headers": {"Retry-After": HEADERS["Retry-After"]},
                "content": _json(_add_model(components, Unready, answer=True), Unready.EXAMPLE),
            },
        },
    }
    return {
        path: {"get": item, "head": head_of(item)}
        for path, item in ((LIVE_PATHS[0], live), (READY_PATHS[0], ready))
    }


def document(
    name: str, description: str, routes: Sequence[Route], base_path: str = ""
) -> dict[str, Any]:
    """The function's document; ``base_path`` (PSI_BASE_PATH) is where callers reach it."""
    from shared_lib.http.responses import Problem

    components: dict[str, Any] = {}
    _add_model(components, Problem, answer=True)
    paths: dict[str, Any] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        item[route.method.lower()] = operation(name, route, components)
        if route.method == "GET":
            item["head"] = head_of(item["get"])
    paths.update(_health(name, components))
    used = sorted({tag for item in paths.values() for op in item.values() for tag in op["tags"]})
    return {
        "openapi": "3.1.0",
        "info": {"title": f"PSI Functions: {name}", "version": "0.1.0", "description": description},
        "servers": [{**SERVERS[0], "url": base_path}] if base_path else SERVERS,
        "tags": [{"name": tag, "description": TAGS.get(tag, tag)} for tag in used],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
