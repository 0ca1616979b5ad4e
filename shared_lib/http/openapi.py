"""OpenAPI 3.1 document of one function, built from its routes and request models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from shared_lib.http.routes import Route, body_model

ERROR = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": "string"},
        "shortfalls": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "requested": {"type": "integer"},
                    "available": {"type": "integer"},
                },
            },
        },
    },
}
LEVEL_SCHEMA = {
    "type": "object",
    "required": ["sku", "warehouse", "on_hand", "reserved", "available"],
    "properties": {
        "sku": {"type": "string"},
        "warehouse": {"type": "string"},
        "on_hand": {"type": "integer", "minimum": 0},
        "reserved": {"type": "integer", "minimum": 0},
        "available": {"type": "integer", "minimum": 0},
    },
}
QUERY = {
    "warehouse": ({"type": "string", "maxLength": 32}, "Only this warehouse"),
    "sku": ({"type": "string", "maxLength": 64}, "Only this sku"),
    "limit": ({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size"),
    "cursor": ({"type": "string"}, "Opaque cursor from the previous page's next_cursor"),
}
STANDARD = {
    400: "Malformed request (bad or ambiguous JSON, missing or repeated Idempotency-Key,"
    " unexpected topic)",
    401: "Missing or unknown API key",
    403: "The API key lacks the scope",
    404: "Unknown sku, warehouse, order or route",
    409: "Insufficient stock, idempotency key reused, or a state conflict",
    408: "The body stopped arriving (GUNICORN_READ_TIMEOUT)",
    413: "Body too large",
    415: "The body is not application/json in UTF-8, or is compressed",
    422: "Invalid body; `field` names the offending field",
    503: "A store is down and no degraded path exists (see Retry-After)",
}


def _models(route: Route) -> list[type[BaseModel]]:
    schema = route.body_schema or route.body
    given = schema if isinstance(schema, list) else [schema]
    return [
        body_model(model)
        for model in given
        if isinstance(model, str) or (isinstance(model, type) and issubclass(model, BaseModel))
    ]


def _add_model(components: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document(name: str, description: str, routes: Sequence[Route]) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA, "Level": LEVEL_SCHEMA}
    paths: dict[str, Any] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": re.sub(r"\W+", "_", f"{route.method} {route.path}").strip("_").lower(),
            "security": [{"bearer": [route.scope]}],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in re.findall(r"\{(\w+)\}", route.path)
            ],
            "responses": {},
        }
        for name in route.query:
            schema, text = QUERY[name]
            operation["parameters"].append(
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "schema": schema,
                    "description": text,
                }
            )
        if route.mutation:
            operation["parameters"].append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "description": "Scoped to the API key that sends it. A replay returns "
                    "the first answer; reuse with another body is refused (409). Kafka "
                    "deliveries are known by their own identity instead.",
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "pattern": "^[!-+\\--~]+$",
                    },
                }
            )
        models = _models(route)
        if models:
            refs = [_add_model(components, m) for m in models]
            schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        ok = 201 if route.created else 200
        successes = {ok, *(s for s in route.responses if s < 300)}
        for status in sorted(successes):
            operation["responses"][str(status)] = {
                "description": route.responses.get(status, "Success"),
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        for status, text in STANDARD.items():
            if status in (400, 408, 413, 415) and not route.mutation:
                continue
            operation["responses"][str(status)] = {
                "description": route.responses.get(status, text),
                "content": {"application/json": {"schema": ERROR}},
            }
        if route.topic:
            operation["x-kafka-topic"] = route.topic
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    for path in ("/health/live", "/health/ready"):
        paths[path] = {
            "get": {
                "summary": "Liveness" if path.endswith("live") else "Readiness",
                "security": [],
                "responses": {
                    "200": {"description": "OK"},
                    "503": {"description": "Not ready"},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"PSI Functions: {name}",
            "version": "0.1.0",
            "description": description,
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
