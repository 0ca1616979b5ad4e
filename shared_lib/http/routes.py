"""What a function declares and its handlers get: routes, calls and replies."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from shared_lib.domain.model import RequestMeta
from shared_lib.domain.versions import Expected
from shared_lib.http.delivery import Delivery
from shared_lib.services.guard import Outcome

# the health paths every function answers: Knative's, then OpenFaaS's
LIVE_PATHS = ("/health/live", "/_/health")
READY_PATHS = ("/health/ready", "/_/ready")
HEALTH_PATHS = LIVE_PATHS + READY_PATHS

if TYPE_CHECKING:
    from pydantic import BaseModel

    from shared_lib.bootstrap import Platform


@dataclass
class Reply:
    status: int
    body: Any  # JSON, or bytes/str sent as they are, or None for no body (304)
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


@dataclass
class Call:
    """What a handler gets: validated body, path and query parameters, who and which key."""

    params: dict[str, str]
    query: Mapping[str, str]
    body: Any
    meta: RequestMeta | None
    delivery: Delivery | None
    # the function's name, and its stores (built on first use: a cold start answers its
    # health checks before the stores' clients are loaded)
    function: str
    platform_of: Callable[[], Platform]
    # If-Match: the versions of the record this write may change (None: any, or none yet)
    expected: Expected | None = None

    @property
    def platform(self) -> Platform:
        return self.platform_of()


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
    """One operation: method, path and handler; the rest by name."""

    method: str
    path: str
    handler: Handler
    _: KW_ONLY
    scope: str
    summary: str
    body: Model | Callable[[Any], BaseModel] | None = None
    body_schema: Model | list[Model] | None = None
    created: bool = False
    topic: str | None = None
    also_topics: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    # the OpenAPI document's: the success body's model (a name in shared_lib.http.responses,
    # loaded with the document; several are one of them), the operation's id within the
    # function (the document prefixes the function's name), its tags, a request body example
    response: str | list[str] | None = None
    operation_id: str | None = None
    tags: tuple[str, ...] = ()
    example: dict[str, Any] | None = None
    # where what a 201 created lives, from its body, below the function's base path; a
    # route without one created the request's own target (a PUT)
    location: Callable[[dict[str, Any]], str] | None = None
    # reads whose answer carries an ETag (and answers If-None-Match with 304)
    etag: bool = False
    # writes that take If-Match (a stale one is refused with 412)
    conditional: bool = False

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
