"""The workload of the fault tests.

Clients (threads, bounded in time and count) place, ship and cancel orders, receive and issue
stock over HTTP. A request that fails because of the fault (connection refused or reset,
503, 409 ``request_in_progress``) is retried with the SAME Idempotency-Key a bounded number
of times, so most keys end with a definitive answer that the checks can hold against MySQL.
A sampler reads MySQL meanwhile for balances that went negative.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import sqlalchemy as sa

from tests.faults.fault_env import HTTP_TIMEOUT, WAREHOUSES, Catalog, FaultEnv
from tests.support import http

MAX_ATTEMPTS = 8
RETRY_WINDOW = 30.0  # seconds one operation may spend on retries
AMBIGUOUS_ERRORS = {"request_in_progress"}


@dataclass
class Attempt:
    status: int | None  # None: no HTTP answer (refused, reset, timeout)
    body: Any
    error: str | None = None
    degraded: bool = False
    at: float = 0.0  # time.monotonic() when the answer came

    @property
    def code(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None

    @property
    def ambiguous(self) -> bool:
        """The request may or may not have taken effect."""
        return (
            self.status is None
            or self.status >= 500
            or (self.status == 409 and self.code in AMBIGUOUS_ERRORS)
        )


@dataclass
class Op:
    kind: str  # place | ship | cancel | receive | issue
    key: str
    function: str
    path: str
    body: dict[str, Any]
    order_id: str | None = None
    plenty: bool = False  # every line is a never-short SKU
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def succeeded(self) -> bool:
        status = self.final.status
        return status is not None and 200 <= status < 300

    @property
    def ambiguous(self) -> bool:
        """No definitive answer, or an earlier attempt may have committed."""
        return any(a.ambiguous for a in self.attempts)

    @property
    def rejected(self) -> bool:
        """A definitive 4xx for a key no earlier attempt can have committed."""
        status = self.final.status
        return status is not None and 400 <= status < 500 and not self.ambiguous


class Sampler:
    """Samples MySQL every ``interval`` s while the workload runs: no balance may ever have
    on_hand < 0, reserved < 0 or reserved > on_hand (available < 0)."""

    def __init__(self, env: FaultEnv, interval: float = 0.1) -> None:
        self.env = env
        self.interval = interval
        self.samples = 0
        self.errors = 0
        self.bad: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        query = sa.text(
            f"SELECT warehouse, sku, on_hand, reserved FROM `{self.env.database}`.stock_levels "
            "WHERE on_hand < 0 OR reserved < 0 OR reserved > on_hand"
        )
        while not self._stop.is_set():
            try:
                with self.env.admin.connect() as conn:
                    self.bad.extend(tuple(row) for row in conn.execute(query))
                self.samples += 1
            except sa.exc.DBAPIError:
                self.errors += 1
            self._stop.wait(self.interval)


class Client:
    def __init__(
        self, env: FaultEnv, catalog: Catalog, n: int, tag: str, seed: int, deadline: float
    ) -> None:
        self.env = env
        self.catalog = catalog
        self.n = n
        self.tag = tag
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.ops: list[Op] = []
        self.open_orders: list[str] = []
        self.placed = 0

    def run(self, max_ops: int) -> list[Op]:
        with http() as session:
            while time.monotonic() < self.deadline and len(self.ops) < max_ops:
                op = self._next_op()
                self._send(session, op)
                self.ops.append(op)
                if op.kind == "place" and op.succeeded:
                    assert op.order_id is not None
                    self.open_orders.append(op.order_id)
        return self.ops

    def _lines(self, warehouse_skus: list[str]) -> list[dict[str, Any]]:
        skus = self.rng.sample(warehouse_skus, self.rng.choice((1, 1, 2)))
        return [{"sku": sku, "qty": self.rng.randint(1, 3)} for sku in sorted(skus)]

    def _next_op(self) -> Op:
        roll = self.rng.random()
        warehouse = self.rng.choice(WAREHOUSES)
        key = f"{self.tag}-c{self.n}-{len(self.ops)}-{uuid.uuid4().hex[:8]}"
        if self.open_orders and roll < 0.35:
            order_id = self.open_orders.pop(self.rng.randrange(len(self.open_orders)))
            if self.rng.random() < 0.5:
                body = {"order_id": order_id, "reference": f"DN-{key}"}
                return Op("ship", key, "stock_out", "", body, order_id)
            return Op("cancel", key, "create_order", f"{order_id}/cancel", {}, order_id)
        if roll < 0.45:
            sku = self.rng.choice(self.catalog.scarce)
            lines = [{"sku": sku, "qty": self.rng.randint(1, 3)}]
            body = {"warehouse": warehouse, "lines": lines, "reason": "replenish"}
            return Op("receive", key, "stock_in", "", body)
        if roll < 0.5:
            sku = self.rng.choice(self.catalog.plenty)
            body = {"warehouse": warehouse, "lines": [{"sku": sku, "qty": 1}], "reason": "scrap"}
            return Op("issue", key, "stock_out", "", body, plenty=True)
        plenty = self.rng.random() < 0.7
        lines = self._lines(self.catalog.plenty if plenty else self.catalog.all)
        order_id = f"{self.tag}-o{self.n}-{self.placed}"
        self.placed += 1
        body = {"order_id": order_id, "warehouse": warehouse, "lines": lines, "customer": "fault"}
        every_plenty = all(line["sku"] in self.catalog.plenty for line in lines)
        return Op("place", key, "create_order", "", body, order_id, plenty=every_plenty)

    def _send(self, session: requests.Session, op: Op) -> None:
        url = self.env.url(op.function, op.path)
        give_up = time.monotonic() + RETRY_WINDOW
        pause = threading.Event()
        for attempt in range(MAX_ATTEMPTS):
            try:
                reply = session.post(
                    url, json=op.body, headers={"Idempotency-Key": op.key}, timeout=HTTP_TIMEOUT
                )
                try:
                    body = reply.json()
                except ValueError:
                    body = reply.text
                degraded = reply.headers.get("X-PSI-Degraded") == "true"
                op.attempts.append(
                    Attempt(reply.status_code, body, degraded=degraded, at=time.monotonic())
                )
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                op.attempts.append(Attempt(None, None, error, at=time.monotonic()))
            if not op.final.ambiguous or time.monotonic() >= give_up:
                return
            pause.wait(min(0.1 * 2**attempt, 1.5) * (0.5 + self.rng.random()))


@dataclass
class RunResult:
    ops: list[Op]
    samples: int
    sample_errors: int
    negative_rows: list[tuple[Any, ...]]
    fault_notes: list[str]

    def statuses(self) -> Counter[str]:
        return Counter(
            f"{op.kind}:{a.status}:{a.code or ''}" if a.status else f"{op.kind}:no-answer"
            for op in self.ops
            for a in op.attempts
        )


def run_workload(
    env: FaultEnv,
    catalog: Catalog,
    tag: str,
    fault: Callable[[], Iterable[str]],
    *,
    clients: int = 8,
    seconds: float = 10.0,
    fault_after: float = 3.0,
    max_ops_per_client: int = 400,
) -> RunResult:
    """Run ``clients`` threads for ``seconds``; call ``fault`` (it may block while it heals
    the fault, yielding notes) after ``fault_after`` seconds, from this thread."""
    deadline = time.monotonic() + seconds
    workers = [
        Client(env, catalog, n, tag, seed=zlib.crc32(f"{tag}-{n}".encode()), deadline=deadline)
        for n in range(clients)
    ]
    results: dict[int, list[Op]] = {}
    errors: list[BaseException] = []

    def work(client: Client) -> None:
        try:
            results[client.n] = client.run(max_ops_per_client)
        except BaseException as exc:  # surfaced below, never swallowed
            errors.append(exc)

    notes: list[str] = []
    with Sampler(env) as sampler:
        threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in workers]
        for thread in threads:
            thread.start()
        threading.Event().wait(fault_after)
        notes.extend(fault())
        for thread in threads:
            thread.join(seconds + RETRY_WINDOW + 60)
        assert not any(th.is_alive() for th in threads), "a client thread did not finish"
    if errors:
        raise errors[0]
    ops = [op for n in sorted(results) for op in results[n]]
    return RunResult(ops, sampler.samples, sampler.errors, sampler.bad, notes)
