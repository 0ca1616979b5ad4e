"""A body nobody reads costs no memory: a function as the image runs it (gunicorn with the
project's gunicorn.conf.py, shared_lib.wsgi, API keys on) is sent 400 MB with no key, and its
worker's memory must not grow by more than PSI_MAX_BODY_BYTES (plus the interpreter's noise).
functions-framework's own after-request hook used to read every such body into memory."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator

import psutil
import pytest

from tests.badinput.conftest import KEY, MAX_BODY, Served, status

BODY_BYTES = 400 * 1024 * 1024  # the probe's no-key body
SMALLER_BODY_BYTES = 64 * 1024 * 1024  # still far past the limit and the slack
SLACK = 40 * 1024 * 1024  # allocator and interpreter noise


def send_chunked(port: int, path: str, headers: dict[str, str], size: int) -> int | None:
    """POST ``size`` bytes as a chunked body; the status, if one came back."""

    def chunks() -> Iterator[bytes]:
        block = b"x" * (1024 * 1024)
        for _ in range(size // len(block)):
            yield block

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=chunks(), headers=headers, encode_chunked=True)
        return conn.getresponse().status
    except OSError:  # the function closed the connection once it had had enough
        return None
    finally:
        conn.close()


def peak_growth(worker: psutil.Process, work: threading.Thread) -> int:
    start = peak = worker.memory_info().rss
    work.start()
    while work.is_alive():
        peak = max(peak, worker.memory_info().rss)
        work.join(0.02)
    return peak - start


@pytest.mark.parametrize(
    ("path", "headers", "size"),
    [
        ("/", {"Content-Type": "application/json"}, BODY_BYTES),  # no key: 401
        ("/nowhere", {"Content-Type": "application/json"}, SMALLER_BODY_BYTES),  # 404
        (  # 413
            "/",
            {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            SMALLER_BODY_BYTES,
        ),
    ],
    ids=["no-key", "no-route", "too-large"],
)
def test_a_large_body_nobody_reads_costs_no_memory(
    served: Served, path: str, headers: dict[str, str], size: int
) -> None:
    port, worker = served.port, served.worker
    answers: list[int | None] = []
    work = threading.Thread(target=lambda: answers.append(send_chunked(port, path, headers, size)))
    growth = peak_growth(worker, work)
    assert growth < MAX_BODY + SLACK, f"the worker grew by {growth / 2**20:.0f} MiB"
    assert answers[0] in (None, 401, 404, 413)
    assert status(port, "GET", "/health/live") == 200
