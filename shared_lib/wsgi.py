"""WSGI entry point: serves one function under gunicorn (see gunicorn.conf.py).

The function is chosen by the environment, as functions-framework does it:
``FUNCTION_TARGET`` (default ``handle``) names the decorated function and
``FUNCTION_SOURCE`` the file that defines it, e.g. ``functions/stock_in/main.py``.
``FUNCTION_DIR=stock_in`` is a shorthand for that source (the images bake it in).
A relative source is resolved against the working directory.

    gunicorn --config gunicorn.conf.py shared_lib.wsgi:app
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import functions_framework

DEFAULT_TARGET = "handle"


def function_source(environ: Mapping[str, str] = os.environ) -> str:
    """The file to serve, from FUNCTION_SOURCE or FUNCTION_DIR; one clear error otherwise."""
    source = environ.get("FUNCTION_SOURCE", "").strip()
    if source:
        return source
    directory = environ.get("FUNCTION_DIR", "").strip()
    if directory:
        return str(Path("functions") / directory / "main.py")
    raise RuntimeError(
        "no function chosen: set FUNCTION_SOURCE=functions/<dir>/main.py or FUNCTION_DIR=<dir>"
    )


def function_target(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("FUNCTION_TARGET", "").strip() or DEFAULT_TARGET


app = functions_framework.create_app(function_target(), function_source())
