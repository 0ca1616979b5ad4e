"""The gunicorn worker's scheduling: one keep-alive connection cannot keep the others out."""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

from shared_lib.serving import Worker


class _Served(GeventWorker):
    """gevent's request handling, replaced by a record of which connection was served."""

    served: list[str]

    def handle_request(self, *args: Any) -> bool:
        self.served.append(str(args[0]))
        return True


class _Probe(Worker, _Served):
    pass


def test_a_keep_alive_connection_with_requests_waiting_lets_the_others_in_between():
    """Connection A's next requests are already in its socket (a read does not yield then);
    B has one request waiting. B is served after A's first request, not after all of A's."""
    worker = _Probe.__new__(_Probe)  # the scheduling only: no sockets, no config
    worker.served = []

    def connection(name: str, requests: int) -> None:
        for _ in range(requests):
            worker.handle_request(name)

    a = gevent.spawn(connection, "A", 5)
    b = gevent.spawn(connection, "B", 1)
    gevent.joinall([a, b], timeout=10, raise_error=True)
    assert worker.served[:2] == ["A", "B"], worker.served
    assert worker.served.count("A") == 5
