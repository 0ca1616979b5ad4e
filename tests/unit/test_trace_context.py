"""W3C Trace Context as the spec (w3c/trace-context spec/20-http_request_header_format.md)
and its test suite (test/test.py) read it: what continues a trace, what restarts it, and
how the trace reaches the events a request causes."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from shared_lib.domain import events
from shared_lib.domain.model import Line, Order, OrderStatus, RequestMeta
from shared_lib.domain.trace import (
    STARTED_FLAGS,
    TraceContext,
    continue_trace,
    parse,
    parse_tracestate,
    start,
)
from shared_lib.http.delivery import KNATIVE, OPENFAAS
from shared_lib.http.delivery import parse as parse_delivery
from shared_lib.services.group_commit import Pending

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{CALLER}-01"
TOPIC = "psi.stock-in.requested"
SOURCE = f"/apis/v1/namespaces/psi/kafkasources/stock-in#{TOPIC}"
BODY = json.dumps({"warehouse": "MAIN", "lines": [{"sku": "A", "qty": 1}]}).encode()


def test_a_valid_traceparent_is_continued_with_a_span_of_our_own() -> None:
    ours = continue_trace((VALID, None))
    assert (ours.trace_id, ours.parent_id, ours.flags) == (TRACE, CALLER, "01")
    assert ours.span_id != CALLER and len(ours.span_id) == 16
    assert ours.traceparent == f"00-{TRACE}-{ours.span_id}-01"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE.upper()}-{CALLER}-01",  # HEXDIGLC: lower case only
        f"00-{TRACE}-{CALLER.upper()}-01",
        f"ff-{TRACE}-{CALLER}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{CALLER}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{CALLER}-01.",  # version 00 has nothing after the flags
        f"00-{TRACE}-{CALLER}-01-what-the-future-will-be-like",
        f"0-{TRACE}-{CALLER}-01",
        f".0-{TRACE}-{CALLER}-01",
        f"00-{TRACE}1-{CALLER}-01",
        f"00-{TRACE[:-1]}-{CALLER}-01",
        f"00-{TRACE}-{CALLER}0-01",
        f"00-{TRACE}-{CALLER}-1",
        f"00-{TRACE}-{CALLER}-0g",
        f"cc-{TRACE}-{CALLER}-01.what-the-future-will-be-like",
        f"{VALID},{VALID}",  # two traceparent headers, joined by the server
        "",
        "garbage",
    ],
)
def test_an_invalid_traceparent_restarts_the_trace(value: str) -> None:
    assert parse(value) is None
    ours = continue_trace((value, "congo=t61rcWkgMzE"))
    assert ours.trace_id != TRACE and ours.parent_id is None
    assert ours.tracestate is None  # a restarted trace does not keep the old tracestate


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{TRACE}-{CALLER}-01",
        f"cc-{TRACE}-{CALLER}-01-what-the-future-will-be-like",
    ],
)
def test_a_future_version_is_read_as_far_as_00_goes_and_sent_on_as_00(value: str) -> None:
    ours = continue_trace((value, None))
    assert (ours.trace_id, ours.parent_id) == (TRACE, CALLER)
    assert ours.traceparent.startswith(f"00-{TRACE}-")


def test_surrounding_whitespace_is_not_part_of_the_value() -> None:
    assert parse(f" \t{VALID}\t ") == TraceContext(TRACE, CALLER, "01")


@pytest.mark.parametrize(("sent", "kept"), [("00", "00"), ("01", "01"), ("03", "03"), ("ff", "03")])
def test_sampled_and_random_flags_go_on_and_reserved_flags_are_zeroed(sent: str, kept: str) -> None:
    assert continue_trace((f"00-{TRACE}-{CALLER}-{sent}", None)).flags == kept


def test_a_started_trace_is_random_unsampled_and_says_so() -> None:
    first, second = start(), start()
    assert first.trace_id != second.trace_id and first.span_id != second.span_id
    assert first.flags == STARTED_FLAGS == "02"
    assert parse(first.traceparent) == TraceContext(first.trace_id, first.span_id, "02")


def test_the_first_valid_candidate_wins() -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-00"
    assert continue_trace(("bad", None), (VALID, None), (other, None)).trace_id == TRACE
    assert continue_trace((None, None), (other, None)).trace_id == "1" * 32


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),
        ("foo=1,,", "foo=1"),
        ("", None),
        ("foo =1", None),  # a key has no space
        ("Foo=1", None),  # nor upper case
        ("foo=1,bar", None),
        ("foo=a=b", None),
        (",".join(f"k{i}=v" for i in range(33)), None),  # at most 32 members
    ],
)
def test_tracestate_is_trimmed_or_dropped_whole(value: str, kept: str | None) -> None:
    assert parse_tracestate(value) == kept
    ours = continue_trace((VALID, value))
    assert (ours.trace_id, ours.tracestate) == (TRACE, kept)  # never affects the traceparent


def test_a_long_tracestate_loses_long_members_first_then_from_the_right() -> None:
    long = "big=" + "x" * 200
    members = [f"k{i}={'v' * 61}" for i in range(10)]  # 10 x 64 characters
    kept = parse_tracestate(",".join([members[0], long, *members[1:]]))
    assert kept is not None and len(kept) <= 512
    assert kept.split(",") == members[:7]


def test_an_event_carries_the_trace_as_the_distributed_tracing_extension() -> None:
    ours = continue_trace((VALID, "congo=t61rcWkgMzE"))
    event = events.cloud_event("psi.stock.low", "/psi/t", "A", {}, datetime(2026, 1, 1), ours)
    assert event["traceparent"] == ours.traceparent
    assert event["tracestate"] == "congo=t61rcWkgMzE"
    untraced = events.cloud_event("psi.stock.low", "/psi/t", "A", {}, datetime(2026, 1, 1))
    assert "traceparent" not in untraced and "tracestate" not in untraced


def test_a_journal_entry_keeps_its_own_requests_span() -> None:
    ours = continue_trace((VALID, "congo=t61rcWkgMzE"))
    order = Order("SO-1", "MAIN", OrderStatus.RESERVED, (Line("A", 1),), datetime(2026, 1, 1), "c")
    pending = Pending(order, RequestMeta("k", trace=ours), "f", datetime(2026, 1, 1))
    back = Pending.decode("MAIN", pending.encode())
    assert back.meta.trace is not None
    assert back.meta.trace.traceparent == ours.traceparent
    assert back.meta.trace.tracestate == ours.tracestate
    untraced = Pending(order, RequestMeta("k"), "f", datetime(2026, 1, 1))
    assert Pending.decode("MAIN", untraced.encode()).meta.trace is None


def test_a_binary_cloudevent_names_its_trace_in_ce_headers() -> None:
    headers = {
        "ce-id": "1",
        "ce-source": SOURCE,
        "ce-specversion": "1.0",
        "ce-traceparent": VALID,
        "ce-tracestate": "congo=t61rcWkgMzE",
    }
    delivery = parse_delivery(KNATIVE, headers, BODY)
    assert (delivery.traceparent, delivery.tracestate) == (VALID, "congo=t61rcWkgMzE")


def test_a_structured_cloudevent_names_its_trace_in_the_envelope() -> None:
    envelope = {"specversion": "1.0", "id": "1", "source": SOURCE, "traceparent": VALID}
    raw = json.dumps({**envelope, "data": json.loads(BODY)}).encode()
    headers = {"Content-Type": "application/cloudevents+json"}
    assert parse_delivery(KNATIVE, headers, raw).traceparent == VALID
    numeric = json.dumps({**envelope, "traceparent": 7}).encode()
    assert parse_delivery(KNATIVE, headers, numeric).traceparent is None


def test_a_connector_record_that_is_a_cloudevent_names_its_trace_in_record_headers() -> None:
    headers = {
        "X-Topic": TOPIC,
        "X-Kafka-Partition": "0",
        "X-Kafka-Offset": "3",
        "X-Kafka-Ce_specversion": "1.0",
        "X-Kafka-Ce_id": "1",
        "X-Kafka-Ce_source": "/psi/test",
        "X-Kafka-Ce_traceparent": VALID,
    }
    assert parse_delivery(OPENFAAS, headers, BODY).traceparent == VALID
    plain = {"X-Topic": TOPIC, "X-Kafka-Partition": "0", "X-Kafka-Offset": "3"}
    assert parse_delivery(OPENFAAS, plain, BODY).traceparent is None
