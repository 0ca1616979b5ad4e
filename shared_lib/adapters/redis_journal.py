"""The order journal of group commit on Redis (services.ports.OrderJournal): held orders
queue per warehouse shard, one flush leader per shard takes a batch (fenced), completes it
with every answer, and hands the lead on (services.group_commit)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared_lib.adapters.redis_client import UNKNOWN_MARK, UNREACHABLE, text_of
from shared_lib.domain.model import Level, Line
from shared_lib.services.ports import HoldResult, JournalAnswer, JournalUnavailable, Taken

if TYPE_CHECKING:
    import redis


# how long an answer waits for a waiter that went away
REPLY_TTL_SECONDS = 60


class OrderJournalMixin:
    """The journal half of RedisGate (the scripts are registered by RedisGate itself)."""

    client: redis.Redis
    journal_shards: int
    marker_ttl: int
    _take: Any
    _complete: Any
    _withdraw: Any

    # RedisGate's own, which the journal's calls go through
    def tag(self, warehouse: str) -> str:
        raise NotImplementedError

    def _down(self, exc: BaseException, warehouse: str | None = None) -> None:
        raise NotImplementedError

    def _hold(
        self,
        warehouse: str,
        request_id: str,
        fingerprint: str,
        lines: Sequence[Line],
        hold_ms: int,
        journal: Sequence[Any] = (),
    ) -> HoldResult:
        raise NotImplementedError

    def cancel_hold(self, warehouse: str, request_id: str, *, unknown: str | None = None) -> None:
        raise NotImplementedError

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
        return self._hold(warehouse, request_id, fingerprint, lines, hold_ms, journal)

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
            self.marker_ttl,
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
            self._down(exc, warehouse)
            raise JournalUnavailable(str(exc)) from exc
        return None if found is None else text_of(found[1])

    def claim(self, warehouse: str, request_id: str, lead_ms: int) -> bool:
        key = self._journal_keys(warehouse, request_id)[0]
        try:
            return bool(self.client.set(key, request_id, nx=True, px=lead_ms))
        except UNREACHABLE as exc:
            self._down(exc, warehouse)
            raise JournalUnavailable(str(exc)) from exc

    def withdraw(self, warehouse: str, request_id: str, entry: str) -> bool:
        """Take a waiting entry back (True), unless a leader already took it (False)."""
        lead, journal = self._journal_keys(warehouse, request_id)[:2]
        args = [request_id, f"{request_id} {entry}"]
        if not int(self._journal_call(warehouse, self._withdraw, [journal, lead], args)):
            return False
        self.cancel_hold(warehouse, request_id)
        return True

    def _journal_call(self, warehouse: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except UNREACHABLE as exc:
            self._down(exc, warehouse)
            raise JournalUnavailable(str(exc)) from exc
