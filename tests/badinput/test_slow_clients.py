"""Slow clients cannot starve a function: with three times as many stalled connections as
a gthread worker has threads (no key, a key, stalled headers, stalled bodies), as the image
runs it, the health check and other callers are still answered; every stalled connection
is let go within the read deadline (GUNICORN_READ_TIMEOUT), a trickling body within the body
deadline (PSI_BODY_TIMEOUT_SECONDS), and an aborted upload is a 4xx without a traceback."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.badinput.conftest import (
    BODY_TIMEOUT,
    KEY,
    READ_TIMEOUT,
    THREADS_BEFORE,
    Served,
    serving,
    status,
)
from tests.support import http, wait_until

STALLED = 3 * THREADS_BEFORE


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One function for the module: each test's connections are its own."""
    with serving(tmp_path_factory.mktemp("slow")) as function:
        yield function


def stalled_requests() -> list[bytes]:
    """Requests that stop part way, as a slow or hostile client leaves them."""
    head = b"POST / HTTP/1.1\r\nHost: fn\r\nContent-Type: application/json\r\n"
    keyed = head + f"Authorization: Bearer {KEY}\r\nIdempotency-Key: slow-1\r\n".encode()
    return [
        head + b"Content-Length: 1000\r\n\r\n" + b'{"warehou',  # no key, body stalls
        keyed + b"Content-Length: 1000\r\n\r\n" + b'{"warehou',  # a key, body stalls
        head + b"X-Slow: ",  # the headers never end
        b"",  # connected, sends nothing
    ]


@contextlib.contextmanager
def stalled_connections(port: int, sent: list[bytes]) -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        for data in sent:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(data)
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return False
    except OSError:
        return True
    return data == b"" or closed_by_server(sock)


def test_stalled_connections_do_not_block_health_or_other_callers(served: Served) -> None:
    kinds = stalled_requests()
    sent = [kinds[n % len(kinds)] for n in range(STALLED)]
    with stalled_connections(served.port, sent) as held:
        started = time.monotonic()
        assert status(served.port, "GET", "/health/live", timeout=3) == 200
        reply = http().post(
            f"http://127.0.0.1:{served.port}/",
            json={"warehouse": "MAIN", "lines": [{"sku": "SKU-1", "qty": 1}]},
            headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": "other-caller"},
            timeout=3,
        )
        assert reply.status_code < 500, reply.text
        media = reply.headers.get("Content-Type", "").split(";")[0]
        assert media in ("application/json", "application/problem+json"), media
        assert time.monotonic() - started < 3
        # they were still open, stalled, while the others were served
        assert not any(closed_by_server(sock) for sock in held)


@pytest.mark.parametrize("request_bytes", stalled_requests(), ids=["no-key", "key", "head", "idle"])
def test_a_stalled_connection_is_let_go_within_the_read_deadline(
    served: Served, request_bytes: bytes
) -> None:
    with stalled_connections(served.port, [request_bytes]) as (sock,):
        wait_until(lambda: closed_by_server(sock), timeout=15, what="the server to let go")


@pytest.mark.parametrize("request_bytes", stalled_requests()[:2], ids=["no-key", "key"])
def test_an_aborted_upload_is_answered_4xx_without_a_traceback(
    served: Served, request_bytes: bytes
) -> None:
    with stalled_connections(served.port, [request_bytes]) as (sock,):
        sock.shutdown(socket.SHUT_WR)  # the caller gives up half way through its body
        sock.settimeout(10)
        answer = sock.recv(65536).split(b"\r\n", 1)[0]
    status_code = int(answer.split()[1])
    assert 400 <= status_code < 500, answer
    assert status(served.port, "GET", "/health/live") == 200
    assert "Traceback" not in served.errors()


@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "key"])
def test_a_trickling_body_is_408_within_the_body_deadline(served: Served, keyed: bool) -> None:
    """One byte a second beats the read timeout every time; the body deadline still ends it."""
    request = stalled_requests()[int(keyed)]
    assert READ_TIMEOUT > 1
    with stalled_connections(served.port, [request]) as (sock,):
        started = time.monotonic()
        answer = b""
        for _ in range(3 * BODY_TIMEOUT):  # bounded: one byte a second, far past the deadline
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(1)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        waited = time.monotonic() - started
    assert answer, "no answer while the body trickled in"
    assert waited < BODY_TIMEOUT + READ_TIMEOUT, waited
    if keyed:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert "Traceback" not in served.errors()
