"""The smallest functions-framework function: the cold-start yardstick for bench/cold_start."""

import flask
import functions_framework


@functions_framework.http
def handle(request: flask.Request) -> str:
    return "ok"
