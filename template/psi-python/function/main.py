"""A new PSI function (from `faas-cli new --lang psi-python`): replace this body."""

from __future__ import annotations

import flask
import functions_framework


@functions_framework.http
def handle(request: flask.Request) -> tuple[str, int]:
    return f"hello from {request.path}\n", 200
