"""Trace context through the in-process functions, the real stores and the real broker: the
trace a request names (W3C ``traceparent``, or a CloudEvent's distributed-tracing extension)
is in its log lines and in every event it causes, with the function's own span as the
events' parent; a request that names none, or a bad one, starts a trace (never a 4xx)."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from werkzeug.test import TestResponse

from psi_local.broker import EmbeddedBroker
from psi_local.events_schema import validate_event
from shared_lib import topics
from shared_lib.adapters.kafka import Record, read_topic
from tests.integration import functions_api as http
from tests.integration.functions_api import KAFKA_SOURCE, Api, catalog, ok
from tests.integration.test_logs import json_logs, lines_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{CALLER}-01"
HEX = set("0123456789abcdef")


def traced(api_boot: http.Boot, broker: EmbeddedBroker) -> Api:
    api = api_boot(PSI_KAFKA_BOOTSTRAP=broker.bootstrap)
    catalog(api, {"A": 0})
    return api


def headers_of(record: Record) -> dict[str, str]:
    return {name: raw.decode() for name, raw in record.headers}


def events_of(broker: EmbeddedBroker, topic: str, keys: set[str]) -> dict[str, Record]:
    """The records of ``topic`` caused by the requests with these idempotency keys, by key
    (the broker is shared by the module's tests)."""

    def mine(records: list[Record]) -> dict[str, Record]:
        found = {}
        for record in records:
            event = json.loads(record.value)
            key = event["data"].get("idempotency_key") or event["data"].get("order_id")
            if key in keys:
                found[key] = record
        return found

    records = read_topic(
        broker.bootstrap, topic, until=lambda rs: len(mine(rs)) >= len(keys), timeout=15
    )
    found = mine(records)
    assert set(found) == keys, f"events of {keys - set(found)} never reached {topic}"
    return found


def trace_of(record: Record) -> tuple[str, str, str]:
    """(trace id, parent span id, flags) of an event, checked to be the same in the
    structured envelope and in the ce_traceparent header, and valid by the schema."""
    event = json.loads(record.value)
    validate_event(event["type"], event)
    assert headers_of(record)["ce_traceparent"] == event["traceparent"]
    version, trace_id, parent, flags = event["traceparent"].split("-")
    assert version == "00"
    return trace_id, parent, flags


def request_line(lines: list[dict[str, Any]], key: str) -> dict[str, Any]:
    (line,) = [d for d in lines if d.get("event") == "request" and d.get("idempotency_key") == key]
    return line


def accepted(answer: TestResponse) -> None:
    assert 200 <= answer.status_code < 300, (answer.status_code, answer.get_data(as_text=True))


def receive(api: Api, key: str, headers: dict[str, str]) -> None:
    body = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]}
    accepted(api.post("stock_in", "/", body, key=key, headers=headers))


def test_a_callers_traceparent_is_continued_in_the_logs_and_the_events(
    boot: http.Boot, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    api = traced(boot, broker)
    key = f"trace-{uuid.uuid4().hex}"
    with json_logs(caplog) as buffer:
        receive(api, key, {"traceparent": TRACEPARENT, "tracestate": "rojo=00f067aa0ba902b7"})
    line = request_line(lines_of(buffer), key)
    assert line["trace_id"] == TRACE
    assert line["span_id"] != CALLER and set(line["span_id"]) <= HEX

    record = events_of(broker, topics.STOCK_CHANGED, {key})[key]
    # the event's parent is this function's work (a child span), not the caller
    assert trace_of(record) == (TRACE, line["span_id"], "01")
    assert headers_of(record)["ce_tracestate"] == "rojo=00f067aa0ba902b7"
    assert json.loads(record.value)["tracestate"] == "rojo=00f067aa0ba902b7"


def test_a_cloudevent_delivery_continues_the_trace_that_created_the_event(
    boot: http.Boot, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    api = traced(boot, broker)
    event_id = f"evt-{uuid.uuid4().hex}"
    source = KAFKA_SOURCE + topics.STOCK_IN_REQUESTED
    binary = {
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": topics.STOCK_IN_REQUESTED,
        "ce-specversion": "1.0",
        "ce-traceparent": TRACEPARENT,
        # the hop's own trace: the event's extension names where the event began
        "traceparent": f"00-{'1' * 32}-{'2' * 16}-01",
    }
    with json_logs(caplog) as buffer:
        body = {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 2}]}
        accepted(api.post("stock_in", "/", body, key=None, headers=binary))
    (line,) = [d for d in lines_of(buffer) if d.get("event_id") == event_id]
    assert (line["event"], line["trace_id"]) == ("request", TRACE)

    key = line["idempotency_key"]
    record = events_of(broker, topics.STOCK_CHANGED, {key})[key]
    assert trace_of(record) == (TRACE, line["span_id"], "01")
    assert line["span_id"] != CALLER
    assert "ce_tracestate" not in headers_of(record)


@pytest.mark.parametrize(
    "sent",
    [
        {},
        {"traceparent": TRACEPARENT.upper()},  # upper-case hex is invalid: a new trace
        {"traceparent": f"ff-{TRACE}-{CALLER}-01", "tracestate": "rojo=1"},
    ],
    ids=["none", "upper-case", "version-ff"],
)
def test_without_a_valid_traceparent_a_trace_is_started_and_shown_consistently(
    boot: http.Boot,
    broker: EmbeddedBroker,
    caplog: pytest.LogCaptureFixture,
    sent: dict[str, str],
) -> None:
    api = traced(boot, broker)
    key = f"trace-{uuid.uuid4().hex}"
    with json_logs(caplog) as buffer:
        receive(api, key, sent)  # a bad traceparent is never the caller's error
    line = request_line(lines_of(buffer), key)
    assert line["trace_id"] != TRACE.upper() and line["trace_id"] != TRACE
    assert len(line["trace_id"]) == 32 and set(line["trace_id"]) <= HEX

    record = events_of(broker, topics.STOCK_CHANGED, {key})[key]
    assert trace_of(record) == (line["trace_id"], line["span_id"], "02")
    assert "tracestate" not in json.loads(record.value)  # a restarted trace drops it


def test_each_order_of_a_group_commit_batch_carries_its_own_requests_trace(
    boot: http.Boot, broker: EmbeddedBroker
) -> None:
    api = traced(boot, broker)
    accepted(api.post("stock_in", "/", {"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 50}]}))
    http.gate_rebuilt()
    run = uuid.uuid4().hex[:8]
    orders = {f"SO-{run}-{i}": f"00-{uuid.uuid4().hex}-{CALLER}-01" for i in range(8)}

    def place(order_id: str) -> Any:
        body = {"order_id": order_id, "warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}
        return api.post("create_order", "/", body, headers={"traceparent": orders[order_id]})

    with ThreadPoolExecutor(len(orders)) as pool:
        answers = list(pool.map(place, orders))
    for answer in answers:
        ok(answer, 201)
        assert "X-PSI-Degraded" not in answer.headers  # the journal's path, not one by one

    created = events_of(broker, topics.ORDER_CREATED, set(orders))
    for order_id, record in created.items():
        trace_id, parent, _ = trace_of(record)
        assert trace_id == orders[order_id].split("-")[1]
        assert parent != CALLER
