"""The classic design as a function, the http scenario's baseline: one pymysql transaction
per order, a conditional UPDATE of the balance (it succeeds only while enough is available)
and a ledger INSERT. No gate, no idempotency, no outbox: the least a correct reservation
does. Served by the same gunicorn config as the product's functions."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import flask
import functions_framework
import sqlalchemy as sa

from shared_lib.adapters.sql_engine import make_engine

ENGINE = make_engine(os.environ["PSI_DATABASE_URL"])
RESERVE = sa.text(
    "UPDATE stock_levels SET reserved = reserved + :q, version = version + 1, updated_at = :now"
    " WHERE warehouse = :w AND sku = :s AND on_hand - reserved >= :q"
)
LEDGER = sa.text(
    "INSERT INTO movements (kind, warehouse, sku, delta_on_hand, delta_reserved, on_hand_after,"
    " reserved_after, order_id, actor, idempotency_key, created_at)"
    " SELECT 'reserve', warehouse, sku, 0, :q, on_hand, reserved, :o, 'baseline', :o, :now"
    " FROM stock_levels WHERE warehouse = :w AND sku = :s"
)


@functions_framework.http
def handle(request: flask.Request) -> flask.Response:
    if request.method == "GET":
        return flask.Response('{"status":"ok"}', 200, mimetype="application/json")
    body = request.get_json()
    line = body["lines"][0]
    now = datetime.now(UTC).replace(tzinfo=None)
    params = {"w": body["warehouse"], "s": line["sku"], "q": line["qty"], "now": now}
    params["o"] = request.headers.get("Idempotency-Key", "")
    with ENGINE.begin() as conn:
        if conn.execute(RESERVE, params).rowcount != 1:
            answer, status = {"error": "insufficient_stock"}, 409
        else:
            conn.execute(LEDGER, params)
            answer, status = {"order_id": params["o"], "status": "reserved"}, 201
    return flask.Response(json.dumps(answer), status, mimetype="application/json")
