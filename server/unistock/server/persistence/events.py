"""The events' storage: one Redis Stream per partition (`us:{p}:events`), ids derived from the
change feed's.

An event derived from the k-th change-derived event of feed entry `<ms>-<n>` has the stream id
`<ms>-<n * 2**20 + k>` (event_id): a pure function of the feed entry and the event's index in
it, so

- events are in the feed's global order across partitions (merging the streams by id gives
  it), and
- deriving the same feed entry again (a crash between writing events and saving the deriver's
  cursor) adds the same ids, which Redis refuses (an XADD id must be above the stream's last):
  each event is stored once.

An entry's fields: `e` the InventoryEvent without event_id (serialised), and what filters read
without parsing it: `t` its type, `s` sku, `l` location_id, `n` network. EventLog.trim (every
second or so) drops what is older than `retention_s`, then the oldest beyond
`max_per_partition`, and records the highest id it dropped in `us:{p}:evfloor` in the same
script call (TRIM_SCRIPT; Redis keeps no such mark for trims), so a reader asking for events
after an id some of whose successors are gone is told so instead of skipping them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from redis.exceptions import RedisError

from unistock.server.domain import Unavailable
from unistock.server.persistence.codec import varint
from unistock.server.persistence.store import RedisStore

APPEND_SCRIPT = """
-- KEYS: events stream.  ARGV: (id, e, t, s, l, n) per event, in id order.
-- Each event is added unless its id is not above the stream's last (stored before a crash);
-- returns how many were added. One call per partition and round: a command per event cost
-- the server more Python than deriving it.
local added = 0
for i = 1, #ARGV, 6 do
  local r = redis.pcall('XADD', KEYS[1], ARGV[i], 'e', ARGV[i + 1], 't', ARGV[i + 2],
                        's', ARGV[i + 3], 'l', ARGV[i + 4], 'n', ARGV[i + 5])
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then return redis.error_reply(r.err) end
  else
    added = added + 1
  end
end
return added
"""

TRIM_SCRIPT = """
-- KEYS: events stream, its floor.  ARGV: oldest id to keep by age ("<ms>-0"), entries to keep
-- Trim by age, then by count, from the head; the floor becomes the last id removed.
local last = nil
local old = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if old[1] then
  last = old[1][1]
  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[2])
if excess > 0 then
  local gone = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
  last = gone[#gone][1]
  redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
end
if last then redis.call('SET', KEYS[2], last) end
return last
"""

#: An event id: (ms, sequence), ordered like Redis stream ids.
EventId = tuple[int, int]
#: Events one feed entry may yield (the index k takes the low bits of the sequence).
PER_ENTRY = 1 << 20
_ID = re.compile(r"^(\d{1,15})-(\d{1,19})$")


def event_id(feed_id: tuple[int, int], k: int) -> EventId:
    """The id of the k-th event derived from a feed entry (0 <= k < PER_ENTRY)."""
    return feed_id[0], feed_id[1] * PER_ENTRY + k


def last_event_id(feed_id: tuple[int, int]) -> EventId:
    """The highest id an event derived from a feed entry can have."""
    return feed_id[0], feed_id[1] * PER_ENTRY + PER_ENTRY - 1


def format_event_id(at: EventId) -> str:
    """The wire form of an event id: "<ms>-<sequence>" (a Redis stream id)."""
    return f"{at[0]}-{at[1]}"


def parse_event_id(text: str) -> EventId:
    """An event id from its wire form; raises ValueError when it is not one."""
    m = _ID.match(text)
    if m is None or int(m.group(2)) >= 1 << 64:
        raise ValueError(f"not an event id: {text!r}")
    return int(m.group(1)), int(m.group(2))


class StoredEvent(NamedTuple):
    """An event as stored and sent: its id, what filters read, and the serialised
    InventoryEvent without its event_id."""

    id: EventId
    type: int
    sku: str
    location_id: str
    network: str
    body: bytes

    def message(self) -> bytes:
        """The serialised InventoryEvent with its event_id (field 1, appended: protobuf fields
        may come in any order), without parsing the body."""
        eid = format_event_id(self.id).encode()
        return self.body + b"\x0a" + varint(len(eid)) + eid


def events_response(events: Sequence[StoredEvent]) -> bytes:
    """A serialised WatchEventsResponse of stored events (WatchEvents' messages, and the
    payload of a store's MQTT events), without parsing them."""
    out = []
    for ev in events:
        inner = ev.message()
        out.append(b"\x0a" + varint(len(inner)) + inner)
    return b"".join(out)


class EventLog:
    """Appends events to and reads them from the partitions' event streams."""

    def __init__(
        self,
        store: RedisStore,
        *,
        max_per_partition: int = 1_000_000,
        retention_s: float = 86400.0,
    ) -> None:
        self._store = store
        self._ks = store.keyspace
        self.max_per_partition = max_per_partition
        self.retention_s = retention_s

    @property
    def partitions(self) -> list[int]:
        """The partitions whose events this process serves (those it owns)."""
        return sorted(self._store.epochs)

    async def append(self, events: Sequence[tuple[int, StoredEvent]]) -> int:
        """Store (partition, event) pairs (in id order), one APPEND_SCRIPT call per partition
        in one pipeline; returns how many were new (an id already stored, or below a stream's
        last, is skipped: written before a crash). Raises Unavailable."""
        if not events:
            return 0
        by_partition: dict[int, list[bytes | str | int]] = {}
        for partition, ev in events:
            by_partition.setdefault(partition, []).extend(
                (format_event_id(ev.id), ev.body, ev.type, ev.sku, ev.location_id, ev.network)
            )
        pipe = self._store.client.pipeline(transaction=False)
        for partition, args in by_partition.items():
            pipe.eval(APPEND_SCRIPT, 1, self._ks.events(partition), *args)
        return sum(int(n) for n in await self._execute(pipe, raise_on_error=True))

    async def trim(self, now_ms: int) -> None:
        """Drop the events older than the retention, then the oldest beyond
        max_per_partition, recording the last id dropped (see TRIM_SCRIPT). Raises
        Unavailable."""
        minid = max(0, now_ms - int(self.retention_s * 1000))
        pipe = self._store.client.pipeline(transaction=False)
        for p in self.partitions:
            keys = (self._ks.events(p), self._ks.events_floor(p))
            pipe.eval(TRIM_SCRIPT, 2, *keys, f"{minid}-0", self.max_per_partition)
        await self._execute(pipe, raise_on_error=True)

    async def read(self, after: EventId, upto: EventId, limit: int) -> list[StoredEvent]:
        """Events with after < id <= upto of every partition, merged in id order: at most
        about `limit` (a page; read again after the last one for more; an empty page means
        there is none up to `upto`). Raises Unavailable."""
        pipe = self._store.client.pipeline(transaction=False)
        lo, hi = f"({format_event_id(after)}", format_event_id(upto)
        for p in self.partitions:
            pipe.xrange(self._ks.events(p), min=lo, max=hi, count=limit)
        replies = cast(
            list[list[tuple[bytes, dict[bytes, bytes]]]],
            await self._execute(pipe, raise_on_error=True),
        )
        out: list[StoredEvent] = []
        cut: EventId | None = None  # a full page: ids above its last may be missing
        for entries in replies:
            for entry_id, f in entries:
                out.append(
                    StoredEvent(
                        parse_event_id(entry_id.decode()),
                        int(f[b"t"]),
                        f[b"s"].decode(),
                        f[b"l"].decode(),
                        f[b"n"].decode(),
                        f[b"e"],
                    )
                )
            if len(entries) >= limit:
                last = parse_event_id(entries[-1][0].decode())
                cut = last if cut is None else min(cut, last)
        out.sort(key=lambda e: e.id)
        if cut is not None:
            out = [e for e in out if e.id <= cut]
        return out

    async def discarded_after(self, after: EventId) -> bool:
        """Whether some event after `after` was trimmed from a partition's stream. Raises
        Unavailable."""
        pipe = self._store.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.get(self._ks.events_floor(p))
        floors = await self._execute(pipe, raise_on_error=True)
        return any(f is not None and parse_event_id(f.decode()) > after for f in floors)

    async def _execute(self, pipe: Any, *, raise_on_error: bool = False) -> list[Any]:
        try:
            async with asyncio.timeout(self._store.command_timeout):
                return list(await pipe.execute(raise_on_error=raise_on_error))
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis events call failed: {exc!r}") from exc
