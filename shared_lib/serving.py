"""The gunicorn worker every function container runs (``worker_class`` in gunicorn.conf.py).

gevent's worker: one greenlet per connection, so a connection that is slow to send its
head or body costs a few kilobytes, not one of a handful of threads, and health checks and
other callers are answered while any number of them (up to ``worker_connections``) are
open. Each connection's socket reads and writes time out after ``GUNICORN_READ_TIMEOUT``
seconds (10), where gevent's worker would wait forever: a stalled body is let go, and the
request it belonged to is answered 408. Heads are bounded by gunicorn itself (the keep-alive
timeout, which must be the shorter of the two). gevent patches the standard library when the
worker starts, so the application's threads, locks, sockets and sleeps become cooperative
without a change to its code.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import gevent
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

DEFAULT_READ_TIMEOUT = 10.0


def read_timeout() -> float:
    text = os.environ.get("GUNICORN_READ_TIMEOUT", "").strip()
    value = float(text) if text else DEFAULT_READ_TIMEOUT
    if not 0 < value <= 300:
        raise ValueError(f"GUNICORN_READ_TIMEOUT must be in (0, 300] seconds, not {text}")
    return value


class Worker(GeventWorker):
    """gevent's gunicorn worker with a read and write timeout on every connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout()
        if self.cfg.keepalive and self.read_timeout <= self.cfg.keepalive:
            # a stalled head must meet the keep-alive timeout (closed quietly) first; the
            # read timeout firing while gunicorn parses a head is logged with a traceback
            raise ValueError(
                f"GUNICORN_READ_TIMEOUT ({self.read_timeout:g} s) must be longer than the"
                f" keep-alive timeout ({self.cfg.keepalive} s)"
            )

    def patch(self) -> None:
        """gevent's patch_all, without its 25 scans of every installed distribution's entry
        points for gevent plugins (none is installed): most of its cost at a cold start."""
        from gevent import events

        scan = events.notify_and_call_entry_points
        events.notify_and_call_entry_points = events.notify
        try:
            super().patch()
        finally:
            events.notify_and_call_entry_points = scan

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        # GeventWorker.handle makes the socket blocking, with no timeout; this one has one
        client.settimeout(self.read_timeout)
        AsyncWorker.handle(self, listener, client, addr)

    def handle_request(self, *args: Any) -> Any:
        """One request, then a turn for every other connection: a keep-alive client whose
        next request is already in the socket would otherwise be served again and again
        without a switch (a read with data waiting does not yield), and the worker's other
        connections wait behind it for seconds."""
        try:
            return super().handle_request(*args)
        finally:
            gevent.sleep(0)
