"""Schemathesis fuzzing of every function from its own ``GET /openapi.json``, in-process
(WSGI apps built by functions-framework) on MariaDB and the real Redis.

For every operation of every function, schema-conforming (positive) and schema-violating
(negative) requests are generated. Properties:

* no request gets a 5xx (bad input never gets a 500; no store is down here, so no 503);
* every answer conforms to the document: a documented status, content type, headers and
  body schema (schemathesis's response-conformance checks);
* a request the document forbids is refused (schemathesis's negative_data_rejection), unless
  the test steered it back into the schema;
* a rejected request (4xx) changes nothing: the system of record (balances, ledger, orders
  and lines, idempotency records, outbox, catalog, reconcile runs) is compared row for row
  before and after each rejected call.

Accepted requests (2xx) may change state; the catalog and stock are seeded so that the
schema's examples (``MAIN``, ``SKU-1``) hit real rows. Examples are bounded per operation.

Before the fuzzing, every operation is called once with the document's own example and must
succeed and conform (so each response schema is checked against a real success, not only
against what random requests happen to reach), and a read answers 304 to its own ETag.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from shared_lib.adapters import sql_tables as t
from tests.badinput.conftest import AS_ADMIN, FUNCTIONS, InProcess

EXAMPLES_PER_OPERATION = 40
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
STATE_TABLES = (
    t.products,
    t.warehouses,
    t.stock_levels,
    t.movements,
    t.orders,
    t.order_lines,
    t.idempotency_records,
    t.outbox,
    t.reconciliation_runs,
    t.processed_events,
)
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    derandomize=True,  # the same requests on every run: a failure replays as is
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            ]
            for table in STATE_TABLES
        }


def diff(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, Any]:
    changed = {}
    for name in before:
        if before[name] != after[name]:
            gone = [r for r in before[name] if r not in after[name]]
            new = [r for r in after[name] if r not in before[name]]
            changed[name] = {"removed": gone[:3], "added": new[:3]}
    return changed


def seed(env: InProcess) -> None:
    """Rows the schema's examples name, so generated requests reach the use cases."""
    client = env.apps["catalog"].test_client()
    for path, body in (
        ("/warehouses/MAIN", {"name": "Main"}),
        ("/warehouses/SIDE", {"name": "Side"}),
        ("/products/SKU-1", {"name": "One", "reorder_point": 5}),
    ):
        reply = client.put(path, json=body, headers={**AS_ADMIN, "Idempotency-Key": f"seed{path}"})
        assert reply.status_code in (200, 201), reply.get_data(as_text=True)
    reply = (
        env.apps["stock_in"]
        .test_client()
        .post(
            "/",
            json={"warehouse": "MAIN", "lines": [{"sku": "SKU-1", "qty": 500}]},
            headers={**AS_ADMIN, "Idempotency-Key": "seed-stock"},
        )
    )
    assert reply.status_code == 200, reply.get_data(as_text=True)
    reply = (
        env.apps["create_order"]
        .test_client()
        .post(
            "/",
            json={"order_id": "SO-1", "warehouse": "MAIN", "lines": [{"sku": "SKU-1", "qty": 2}]},
            headers={**AS_ADMIN, "Idempotency-Key": "seed-order"},
        )
    )
    assert reply.status_code == 201, reply.get_data(as_text=True)


@pytest.fixture(scope="module")
def seeded(in_process: InProcess) -> InProcess:
    seed(in_process)
    return in_process


KNOWN = {
    "warehouse": ("MAIN", "SIDE"),
    "source": ("MAIN", "SIDE"),
    "destination": ("SIDE", "MAIN"),
    "code": ("MAIN", "SIDE"),
    "sku": ("SKU-1",),
    "order_id": ("SO-1", "SO-2"),
}


def steer(case: schemathesis.Case, data: st.DataObject) -> None:
    """Point the generated names at rows that exist, quantities at what the stock allows and
    the Idempotency-Key at a fresh one, so that requests get past "unknown warehouse" into
    the use cases (and their 409s). Fields of the wrong type are left as generated."""

    def known(name: str, value: Any) -> Any:
        if name in KNOWN and isinstance(value, str):
            return data.draw(st.sampled_from(KNOWN[name]), label=name)
        if name in ("qty", "counted", "expected") and isinstance(value, int | float):
            return data.draw(st.integers(0 if name != "qty" else 1, 12), label=name)
        return value

    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"fz-{data.draw(st.uuids(), label='key').hex}"
    for name, value in list((case.path_parameters or {}).items()):
        case.path_parameters[name] = known(name, value)
    if isinstance(case.body, dict):
        for name, value in list(case.body.items()):
            case.body[name] = known(name, value)
        lines = case.body.get("lines")
        for line in lines if isinstance(lines, list) else []:
            if isinstance(line, dict):
                for name, value in list(line.items()):
                    line[name] = known(name, value)


def fuzz_operation(
    env: InProcess, function: str, label: str, operation: Any, calls: dict[str, int]
) -> None:
    """Positive and negative cases of one operation, each checked (see the module doc)."""
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @FUZZ_SETTINGS
    @given(case=strategy, data=st.data())
    def fuzz(case: schemathesis.Case, data: st.DataObject) -> None:
        steered = data.draw(st.booleans(), label="steer")
        if steered:
            steer(case, data)
        before = snapshot(env.engine)
        response = case.call(headers=AS_ADMIN)
        calls[label] = calls.get(label, 0) + 1
        status = response.status_code
        where = f"{function} {label}: {case.as_curl_command()}"
        assert status < 500, f"{where} -> {status} {response.text[:300]}"
        checks = CONFORMANCE if steered else [*CONFORMANCE, negative_data_rejection]
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:  # one failure per check that failed
            found = "; ".join(f"{f.title}: {f.message}" for f in group.exceptions)
            raise AssertionError(f"{where} -> {status}: {found[:500]}") from None
        if 400 <= status < 500:
            changed = diff(before, snapshot(env.engine))
            assert not changed, f"{where} -> {status} yet changed {changed}"

    fuzz()


# each operation called once with the document's own request example, in an order where
# each succeeds: (function, method, path, path parameters, expected status)
EXAMPLE_CALLS = (
    ("catalog", "GET", "/products", {}, 200),
    ("catalog", "PUT", "/products/{sku}", {"sku": "SKU-EX"}, 201),
    ("catalog", "PUT", "/products/{sku}", {"sku": "SKU-EX"}, 200),
    ("catalog", "GET", "/products/{sku}", {"sku": "SKU-EX"}, 200),
    ("catalog", "HEAD", "/products/{sku}", {"sku": "SKU-EX"}, 200),
    ("catalog", "DELETE", "/products/{sku}", {"sku": "SKU-EX"}, 200),
    ("catalog", "GET", "/products/{sku}", {"sku": "SKU-EX"}, 404),
    ("catalog", "GET", "/warehouses", {}, 200),
    ("catalog", "PUT", "/warehouses/{code}", {"code": "MAIN"}, 200),
    ("catalog", "GET", "/warehouses/{code}", {"code": "MAIN"}, 200),
    ("stock_in", "POST", "/", {}, 200),
    ("stock_in", "POST", "/adjustments", {}, 200),
    ("create_order", "POST", "/", {}, 201),
    ("create_order", "GET", "/", {}, 200),
    ("create_order", "GET", "/{order_id}", {"order_id": "SO-1001"}, 200),
    ("create_order", "POST", "/{order_id}/cancel", {"order_id": "SO-1001"}, 200),
    ("create_order", "POST", "/{order_id}/cancel", {"order_id": "SO-1001"}, 409),
    ("stock_out", "POST", "/", {}, 200),
    ("stock_out", "POST", "/transfers", {}, 200),
    ("stock_query", "GET", "/levels", {}, 200),
    ("stock_query", "GET", "/levels/{sku}", {"sku": "SKU-1"}, 200),
    ("stock_query", "GET", "/low-stock", {}, 200),
    ("stock_query", "GET", "/movements", {}, 200),
    ("reconcile", "POST", "/", {}, 200),
    ("reconcile", "GET", "/health/ready", {}, 200),
)


def test_the_examples_are_answered_as_documented(seeded: InProcess) -> None:
    """Every operation's own example, sent as is, succeeds (or fails as the sequence says)
    and its answer conforms to the document: status, content type, headers, body."""
    schemas = {
        fn: schemathesis.openapi.from_wsgi("/openapi.json", seeded.apps[fn]) for fn in FUNCTIONS
    }
    for number, (function, method, path, params, expected) in enumerate(EXAMPLE_CALLS):
        operation = schemas[function][path][method]
        body = operation.definition.raw.get("requestBody", {}).get("content", {})
        example = body.get("application/json", {}).get("example")
        headers = {**AS_ADMIN, "Idempotency-Key": f"example-{number}"}
        case = operation.Case(
            path_parameters=params,
            headers=headers if method not in ("GET", "HEAD") else dict(AS_ADMIN),
            **({"body": example} if example is not None else {}),
        )
        response = case.call()
        where = f"{function} {method} {path} -> {response.status_code} {response.text[:300]}"
        assert response.status_code == expected, where
        case.validate_response(response, checks=CONFORMANCE)


def test_a_read_answers_304_to_its_own_etag(seeded: InProcess) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", seeded.apps["catalog"])
    operation = schema["/warehouses/{code}"]["GET"]
    first = operation.Case(path_parameters={"code": "MAIN"}, headers=dict(AS_ADMIN)).call()
    (tag,) = first.headers["etag"]  # schemathesis keeps every header's values, by lower name
    case = operation.Case(
        path_parameters={"code": "MAIN"}, headers={**AS_ADMIN, "If-None-Match": tag}
    )
    again = case.call()
    assert again.status_code == 304, again.text
    case.validate_response(again, checks=CONFORMANCE)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_generated_requests_never_500_and_rejections_change_nothing(
    seeded: InProcess, function: str
) -> None:
    app = seeded.apps[function]
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, f"{function} documents no operation"
    failures: list[str] = []
    calls: dict[str, int] = {}

    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        try:
            fuzz_operation(seeded, function, label, operation, calls)
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0][:600])

    assert not failures, "\n".join(failures)
    assert sum(calls.values()) >= len(operations), calls
