"""Read-ahead: items produced by a worker thread a bounded number ahead of the consumer."""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar, cast

T = TypeVar("T")
_DONE = object()


class ReadAhead(Iterator[T]):
    """``items`` produced by a worker thread at most ``depth`` ahead of the consumer, so
    the stores' round trips overlap the consumer's work while memory stays bounded.

    The producer's error is raised to the consumer, in order. ``close`` (always: use
    ``contextlib.closing``) stops the producer at its next item and waits for it.
    """

    def __init__(self, items: Iterator[T], depth: int = 2) -> None:
        self._ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._finished = False
        context = contextvars.copy_context()
        self._worker = threading.Thread(
            target=context.run, args=(self._produce, items), name="reconcile-ahead", daemon=True
        )
        self._worker.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                self._ready.put((item, None))
                if self._stop.is_set():
                    return
            self._ready.put((_DONE, None))
        except BaseException as exc:
            self._ready.put((_DONE, exc))

    def _take(self, item: Any, error: BaseException | None) -> T:
        if item is _DONE:
            self._finished = True
            if error is not None:
                raise error
            raise StopIteration
        return cast(T, item)

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        return self._take(*self._ready.get())

    def available(self) -> Iterator[T]:
        """The items produced so far, without waiting for more."""
        while not self._finished:
            try:
                ready = self._ready.get_nowait()
            except queue.Empty:
                return
            try:
                yield self._take(*ready)
            except StopIteration:
                return

    def close(self) -> None:
        # the producer checks `stop` after every put, so once the queue is emptied it makes
        # at most one more put, which cannot block
        self._finished = True
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._ready.get_nowait()
        self._worker.join()
