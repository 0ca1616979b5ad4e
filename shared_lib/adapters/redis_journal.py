"""The order journal of group commit on Redis (services.ports.OrderJournal): held orders
queue per warehouse shard, one flush leader per shard takes a batch (fenced), completes it
with every answer, and hands the lead on (services.group_commit)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared_lib.adapters.redis_client import LUA, UNKNOWN_MARK, UNREACHABLE, lua, text_of
from shared_lib.domain.model import Level, Line
from shared_lib.services.ports import HoldResult, JournalAnswer, JournalUnavailable, Taken

if TYPE_CHECKING:
    from shared_lib.adapters.redis_gate import RedisGate


# how long an answer waits for a waiter that went away
REPLY_TTL_SECONDS = 60


# a waiter that gives up takes its entry back, unless a leader already took it; if the lead
# had just been passed to it, the lead is freed for the next waiter to claim
_WITHDRAW = """
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisJournal:
    """The journal on the gate's keys: an order is held and queued by one try_hold call."""

    def __init__(self, gate: RedisGate, shards: int = 2) -> None:
        self.gate = gate
        self.client = gate.client
        self.journal_shards = shards
        self._take = self.client.register_script((LUA / "take.lua").read_text())
        self._complete = self.client.register_script(lua("complete.lua"))
        self._withdraw = self.client.register_script(_WITHDRAW)

    def tag(self, warehouse: str) -> str:
        return self.gate.tag(warehouse)

    def enqueue(
        self,
        warehouse: str,
        request_id: str,
        fingerprint: str,
        lines: Sequence[Line],
        hold_ms: int,
        entry: str,
        lead_ms: int,
    ) -> HoldResult:
        """try_hold, and once held append `entry` to the journal and try to take the lead."""
        journal = (f"{request_id} {entry}", lead_ms, self._shard(request_id))
        return self.gate.try_hold(warehouse, request_id, fingerprint, lines, hold_ms, journal)

    def _shard(self, request_id: str) -> int:
        return zlib.crc32(request_id.encode()) % self.journal_shards

    def _journal_keys(self, warehouse: str, request_id: str) -> list[str]:
        """lead, journal and in-flight keys of the request's shard."""
        tag, shard = self.tag(warehouse), self._shard(request_id)
        return [f"{tag}:lead:{shard}", f"{tag}:journal:{shard}", f"{tag}:inflight:{shard}"]

    def _fence_key(self, warehouse: str, request_id: str) -> str:
        return f"{self.tag(warehouse)}:fence:{self._shard(request_id)}"

    def take(self, warehouse: str, owner: str, limit: int, lead_ms: int) -> Taken | None:
        """The next batch (`<request id> <entry>` strings) with its fencing token, or None
        if `owner` does not lead."""
        keys = [
            *self._journal_keys(warehouse, owner),
            self._fence_key(warehouse, owner),
            f"{self.tag(warehouse)}:holds",
        ]
        items = self._journal_call(warehouse, self._take, keys, [owner, limit, lead_ms])
        if items is None:
            return None
        entries = [text_of(item) for item in items[1::2]]
        left = {
            entry.partition(" ")[0]: int(ms) for entry, ms in zip(entries, items[2::2], strict=True)
        }
        return Taken(int(items[0]), entries, left)

    def complete(
        self,
        warehouse: str,
        owner: str,
        taken: Taken,
        answers: Sequence[JournalAnswer],
        levels: Sequence[Level],
        lead_ms: int,
    ) -> bool:
        keys = [
            *self._journal_keys(warehouse, owner),
            f"{self.tag(warehouse)}:holds",
            self._fence_key(warehouse, owner),
        ]
        args: list[Any] = [
            self.tag(warehouse),
            owner,
            self.gate.marker_ttl,
            REPLY_TTL_SECONDS,
            lead_ms,
            taken.token,
            len(answers),
        ]
        for answer in answers:
            marker = answer.fingerprint or ""
            if marker and answer.unknown:
                marker = UNKNOWN_MARK + marker
            args += [answer.request_id, marker, answer.reply]
        for lv in levels:
            args += [lv.sku, lv.on_hand, lv.reserved, lv.version]
        return self._journal_call(warehouse, self._complete, keys, args) is not None

    def next_reply(self, warehouse: str, request_id: str, timeout: float) -> str | None:
        """Wait up to `timeout` s for this request's answer ('lead': it now leads)."""
        key = f"{self.tag(warehouse)}:reply:{request_id}"
        try:
            found = self.client.blpop([key], timeout=timeout)
        except UNREACHABLE as exc:
            self.gate.went_down(exc, warehouse)
            raise JournalUnavailable(str(exc)) from exc
        return None if found is None else text_of(found[1])

    def claim(self, warehouse: str, request_id: str, lead_ms: int) -> bool:
        key = self._journal_keys(warehouse, request_id)[0]
        try:
            return bool(self.client.set(key, request_id, nx=True, px=lead_ms))
        except UNREACHABLE as exc:
            self.gate.went_down(exc, warehouse)
            raise JournalUnavailable(str(exc)) from exc

    def withdraw(self, warehouse: str, request_id: str, entry: str) -> bool:
        """Take a waiting entry back (True), unless a leader already took it (False)."""
        lead, journal = self._journal_keys(warehouse, request_id)[:2]
        args = [request_id, f"{request_id} {entry}"]
        if not int(self._journal_call(warehouse, self._withdraw, [journal, lead], args)):
            return False
        self.gate.cancel_hold(warehouse, request_id)
        return True

    def _journal_call(self, warehouse: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except UNREACHABLE as exc:
            self.gate.went_down(exc, warehouse)
            raise JournalUnavailable(str(exc)) from exc
