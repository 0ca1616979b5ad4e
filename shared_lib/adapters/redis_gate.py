"""The Redis admission gate: Lua scripts that check and change all lines of a request at once.

Key layout (one Redis Cluster slot per warehouse, thanks to the hash tag ``{prefix:wh}``)::

    {psi:W1}:ready         present once the warehouse was rebuilt from the database
    {psi:W1}:gen           bumped on every invalidation; a rebuild only marks ready if unchanged
                           (created random when missing, so a flush also counts as a change)
    {psi:W1}:lvl:<sku>     hash oh, rs, v (database on_hand, reserved, row version), hd (held)
    {psi:W1}:holds         zset request -> hold deadline (ms, Redis clock)
    {psi:W1}:hold:<req>    hash sku -> qty held by one in-flight request
    {psi:W1}:req:<req>     the request's fingerprint (idempotency marker)
    {psi:W1}:rebuild       lock of the process rebuilding the warehouse
    {psi:W1}:journal:<s>   held orders waiting for their group commit ('<request id> <entry>');
                           a request's shard s comes from its id, each shard has its own leader
    {psi:W1}:inflight:<s>  the batch the shard's flush leader is writing to the database
    {psi:W1}:lead:<s>      request id of the shard's flush leader (ttl: a dead one is replaced)
    {psi:W1}:reply:<req>   the answer for one waiting request, or 'lead'

available in the gate = oh - rs - hd.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from shared_lib.adapters.redis_client import LUA, UNKNOWN_MARK, UNREACHABLE, lua, text_of
from shared_lib.domain.errors import Shortfall
from shared_lib.domain.model import Level, Line, utcnow
from shared_lib.services.ports import (
    GateAnswer,
    HoldResult,
)

log = logging.getLogger(__name__)
LOAD_BATCH = 500

# a missing generation never matches: it was flushed (or the server restarted) after the
# rebuild read it, so levels the rebuild loaded before that are gone
_MARK_READY = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
# the generation, created when missing with a random start: a rebuild that began before a
# flush can never mistake the generation a later rebuild re-creates for its own
_GENERATION = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""
_INVALIDATE = """
local g = redis.call('INCR', KEYS[1])
redis.call('DEL', KEYS[2])
return g
"""


@dataclass(frozen=True, slots=True)
class GateLevel:
    sku: str
    on_hand: int
    reserved: int
    version: int
    held: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved - self.held


class RedisGate:
    """services.ports.StockGate on Redis. Never raises for an unreachable Redis: it answers
    UNAVAILABLE (the caller goes to degraded mode) and remembers what it could not settle.
    Group commit's order journal lives on the same keys (adapters.redis_journal)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "psi",
        marker_ttl_seconds: int = 86_400,
        retry_after_seconds: float = 2.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.marker_ttl = marker_ttl_seconds
        self.retry_after = retry_after_seconds
        self._down_until = 0.0
        self._stale: set[str] = set()
        self._lock = threading.Lock()
        self._try_hold = client.register_script(lua("try_hold.lua"))
        self._settle = client.register_script(lua("settle.lua"))
        self._cancel = client.register_script(lua("cancel_hold.lua"))
        self._forget = client.register_script(_FORGET)
        self._epoch = client.register_script(_EPOCH)
        self._repair_held = client.register_script((LUA / "repair_held.lua").read_text())
        self._repair = client.register_script((LUA / "repair.lua").read_text())
        self._mark_ready = client.register_script(_MARK_READY)
        self._generation = client.register_script(_GENERATION)
        self._invalidate = client.register_script(_INVALIDATE)

    # -- keys
    def tag(self, warehouse: str) -> str:
        return f"{{{self.prefix}:{warehouse}}}"

    def level_key(self, warehouse: str, sku: str) -> str:
        return f"{self.tag(warehouse)}:lvl:{sku}"

    def _request_keys(self, warehouse: str, request_id: str) -> list[str]:
        tag = self.tag(warehouse)
        return [f"{tag}:holds", f"{tag}:hold:{request_id}", f"{tag}:req:{request_id}"]

    # -- availability of Redis itself
    @property
    def reachable(self) -> bool:
        return time.monotonic() >= self._down_until

    def went_down(self, exc: BaseException, warehouse: str | None = None) -> None:
        """Redis did not answer: degraded mode for a while; `warehouse` is rebuilt after."""
        log.warning("redis unreachable, degraded mode for %.1fs: %s", self.retry_after, exc)
        with self._lock:
            self._down_until = time.monotonic() + self.retry_after
            if warehouse is not None:
                self._stale.add(warehouse)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except UNREACHABLE:
            return False

    # -- the order path
    def try_hold(
        self,
        warehouse: str,
        request_id: str,
        fingerprint: str,
        lines: Sequence[Line],
        hold_ms: int,
        journal: Sequence[Any] = (),
    ) -> HoldResult:
        """try_hold.lua; `journal`: the order journal's entry, lead ttl and shard, if any."""
        if not self.reachable:
            return HoldResult(GateAnswer.UNAVAILABLE)
        tag = self.tag(warehouse)
        holds, hold, marker = self._request_keys(warehouse, request_id)
        keys = [f"{tag}:ready", holds, hold, marker] + [
            self.level_key(warehouse, ln.sku) for ln in lines
        ]
        args: list[Any] = [tag, request_id, fingerprint, hold_ms]
        args += [ln.sku for ln in lines] + [ln.qty for ln in lines] + list(journal)
        try:
            if self._invalidate_if_stale(warehouse):
                return HoldResult(GateAnswer.NOT_READY)
            reply = self._try_hold(keys=keys, args=args)
        except UNREACHABLE as exc:
            self.went_down(exc)
            return HoldResult(GateAnswer.UNAVAILABLE)
        answer = text_of(reply[0])
        if answer == "held":
            return HoldResult(GateAnswer.HELD, lead=bool(int(reply[1])))
        if answer != "short":
            return HoldResult(GateAnswer(_ANSWERS[answer]))
        shortfalls, unknown = [], []
        for i in range(1, len(reply), 3):
            line = lines[int(reply[i]) - 1]
            shortfalls.append(Shortfall(line.sku, line.qty, int(reply[i + 1])))
            if int(reply[i + 2]) == 0:
                unknown.append(line.sku)
        return HoldResult(GateAnswer.SHORT, shortfalls, unknown)

    def cancel_hold(self, warehouse: str, request_id: str, *, unknown: str | None = None) -> None:
        """Give the hold back; the marker goes too, or, when the write's outcome is unknown
        (``unknown`` = the request's fingerprint), stays flagged for the retry."""
        try:
            self._cancel(
                keys=self._request_keys(warehouse, request_id),
                args=[self.tag(warehouse), request_id, unknown or "", self.marker_ttl],
            )
        except UNREACHABLE as exc:
            # the hold expires at its deadline; nothing else to do
            self.went_down(exc)

    def forget_unknown(self, warehouse: str, request_id: str, fingerprint: str) -> None:
        """The database has no record of the request: its flagged marker goes."""
        key = f"{self.tag(warehouse)}:req:{request_id}"
        self._forget(keys=[key], args=[UNKNOWN_MARK + fingerprint])

    def settle(
        self,
        warehouse: str,
        request_id: str | None,
        levels: Sequence[Level],
        *,
        fingerprint: str | None = None,
    ) -> None:
        if not self.reachable:
            with self._lock:
                self._stale.add(warehouse)
            return
        try:
            self._apply(warehouse, request_id, levels, fingerprint)
        except UNREACHABLE as exc:
            self.went_down(exc, warehouse)

    def _apply(
        self,
        warehouse: str,
        request_id: str | None,
        levels: Sequence[Level],
        fingerprint: str | None = None,
    ) -> int:
        keys = self._request_keys(warehouse, request_id or "-")
        keys += [self.level_key(warehouse, lv.sku) for lv in levels]
        args: list[Any] = [
            self.tag(warehouse),
            request_id or "",
            self.marker_ttl,
            (fingerprint or "") if request_id else "",
        ]
        for lv in levels:
            args += [lv.on_hand, lv.reserved, lv.version]
        return int(self._settle(keys=keys, args=args))

    # -- rebuild and repair
    def is_ready(self, warehouse: str) -> bool:
        return bool(self.client.exists(f"{self.tag(warehouse)}:ready"))

    def server_replaced(self) -> bool:
        """True once after Redis became another server - a replica promoted by a failover,
        which may lack the last writes: its levels and markers cannot be trusted. Its
        replication id (``master_replid``) is new; the id the gate was built under is kept
        in Redis itself, so one process notices, whenever it started."""
        replid = self.client.info("replication").get("master_replid", "")
        return bool(int(self._epoch(keys=[f"{self.prefix}:epoch"], args=[str(replid)])))

    def _invalidate_if_stale(self, warehouse: str) -> bool:
        """A warehouse whose settles this process could not deliver goes off the fast path
        once Redis answers again (True when it was stale)."""
        if warehouse not in self._stale:
            return False
        self.invalidate(warehouse)
        with self._lock:
            self._stale.discard(warehouse)
        return True

    def not_ready(self, warehouses: Sequence[str]) -> list[str]:
        """Those of ``warehouses`` off the fast path, in one round trip; a warehouse whose
        settles this process could not deliver is invalidated first."""
        with self._lock:
            stale = list(self._stale)
        for warehouse in stale:
            self._invalidate_if_stale(warehouse)
        with self.client.pipeline(transaction=False) as pipe:
            for warehouse in warehouses:
                pipe.exists(f"{self.tag(warehouse)}:ready")
            found = pipe.execute()
        return [w for w, ready in zip(warehouses, found, strict=True) if not ready]

    def generation(self, warehouse: str) -> str:
        """The invalidation generation a rebuild must still see to mark the warehouse ready."""
        start = random.randrange(1, 2**62)
        return text_of(self._generation(keys=[f"{self.tag(warehouse)}:gen"], args=[start]))

    def invalidate(self, warehouse: str) -> None:
        """Take the warehouse off the fast path until it is rebuilt."""
        tag = self.tag(warehouse)
        self._invalidate(keys=[f"{tag}:gen", f"{tag}:ready"])

    def load(self, warehouse: str, levels: Sequence[Level]) -> None:
        for start in range(0, len(levels), LOAD_BATCH):
            self._apply(warehouse, None, levels[start : start + LOAD_BATCH])

    def restore_markers(self, warehouse: str, markers: Sequence[tuple[str, str, datetime]]) -> None:
        """Markers of requests the database recorded (request id, fingerprint, when), each
        for what is left of its time; a marker already there is kept."""
        now = utcnow()
        with self.client.pipeline(transaction=False) as pipe:
            for request_id, fingerprint, recorded_at in markers:
                left = self.marker_ttl - (now - recorded_at).total_seconds()
                if left >= 1:
                    key = f"{self.tag(warehouse)}:req:{request_id}"
                    pipe.set(key, fingerprint, ex=int(left), nx=True)
            pipe.execute()

    def mark_ready(self, warehouse: str, generation: str) -> bool:
        tag = self.tag(warehouse)
        return bool(self._mark_ready(keys=[f"{tag}:gen", f"{tag}:ready"], args=[generation]))

    def acquire_rebuild(self, warehouse: str, owner: str, ttl_ms: int = 60_000) -> bool:
        key = f"{self.tag(warehouse)}:rebuild"
        return bool(self.client.set(key, owner, nx=True, px=ttl_ms))

    def release_rebuild(self, warehouse: str, owner: str) -> None:
        key = f"{self.tag(warehouse)}:rebuild"
        if text_of(self.client.get(key) or b"") == owner:
            self.client.delete(key)

    def read(self, warehouse: str, skus: Iterable[str]) -> dict[str, GateLevel]:
        skus = list(skus)
        pipe = self.client.pipeline(transaction=False)
        for sku in skus:
            pipe.hmget(self.level_key(warehouse, sku), "oh", "rs", "v", "hd")
        found: dict[str, GateLevel] = {}
        for sku, values in zip(skus, pipe.execute(), strict=True):
            if values[0] is not None:
                oh, rs, v, hd = (int(x or 0) for x in values)
                found[sku] = GateLevel(sku, oh, rs, v, hd)
        return found

    def skus(self, warehouse: str) -> Iterator[str]:
        prefix = f"{self.tag(warehouse)}:lvl:"
        for key in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
            yield text_of(key)[len(prefix) :]

    def held_drift(
        self, warehouse: str, skus: Sequence[str], *, repair: bool
    ) -> list[tuple[str, int, int]]:
        """(sku, held, expected) for each of ``skus`` whose held count differs from the
        holds that exist; set right when ``repair``."""
        if not skus:
            return []
        tag = self.tag(warehouse)
        keys = [f"{tag}:holds", *(self.level_key(warehouse, sku) for sku in skus)]
        reply = self._repair_held(keys=keys, args=[tag, "1" if repair else "0", *skus])
        return [
            (text_of(reply[i]), int(reply[i + 1]), int(reply[i + 2]))
            for i in range(0, len(reply), 3)
        ]

    def repair(self, warehouse: str, fixes: Sequence[tuple[int | None, Level]]) -> int:
        """Overwrite levels whose gate version is still the one seen; returns how many."""
        keys = [self.level_key(warehouse, lv.sku) for _, lv in fixes]
        args: list[Any] = []
        for seen, lv in fixes:
            args += ["" if seen is None else seen, lv.on_hand, lv.reserved, lv.version]
        return int(self._repair(keys=keys, args=args)) if keys else 0

    def close(self) -> None:
        self.client.close()


_ANSWERS = {
    "held": "held",
    "dup": "duplicate",
    "conflict": "conflict",
    "unknown": "unknown",
    "not_ready": "not_ready",
}
_EPOCH = """
local seen = redis.call('GET', KEYS[1])
if seen == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if seen then return 1 end
return 0
"""
_FORGET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
