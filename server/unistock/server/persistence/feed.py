"""Reading the change feed partition by partition, from any process (the ledger writer's way).

A durable consumer keeps one cursor per partition (the hash `us:{p}:feedcur`, field = its
name, value = the last feed id it has of that partition) and reads each partition's stream
after its cursor. Redis appends to a stream only above its last id, so a partition's entries
appear in id order and a reader that moves its cursor over what it read never misses one,
whatever the writer is doing: no knowledge of the server's flushes in flight is needed, which
is what lets the ledger writer run in a process of its own. (The feed's *global* order across
partitions, which `RedisStore.read_feed_from` gives in the server, is not needed to write a
ledger whose rows are idempotent.)

Saving a cursor and trimming the partition's stream behind the slowest consumer with a cursor
there are one script call per partition (CURSOR_SCRIPT), so a partition's feed is never trimmed
past an entry a registered consumer has not read. A consumer that is registered and then
abandoned holds the feed back until the cap (XADD MAXLEN in the flush script) trims it. A cursor
also keeps the ordinal of its entry in the stream (the n-th ever added), and each read learns,
at the same instant as the entries, how many the stream ever had and holds (XINFO STREAM's
entries-added, Redis >= 7.0): a reader whose unread entries the cap trimmed sees the gap, and
`read` reports it (FeedRound.lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from unistock.server.domain import Unavailable
from unistock.server.persistence.keys import Keyspace

_T = TypeVar("_T")

#: A feed entry id: (ms, sequence), as Redis orders them.
FeedId = tuple[int, int]

CURSOR_SCRIPT = """
-- KEYS: cursors hash, feed stream.  ARGV: consumer, its last id ("<ms>-<n>", or
-- "<ms>-<n>/<ordinal>"), or "" to forget the consumer (it unregisters)
-- Save (or remove) the consumer's cursor, then trim the stream behind the slowest cursor of
-- the partition (every consumer with a cursor there counts: none is trimmed past). Returns
-- whether a removed cursor was there; else the entries trimmed.
local gone
if ARGV[2] == '' then
  gone = redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local low_ms, low_n
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local ms, n = string.match(v, '^(%d+)-(%d+)')
  ms, n = tonumber(ms), tonumber(n)
  if ms and (not low_ms or ms < low_ms or (ms == low_ms and n < low_n)) then
    low_ms, low_n = ms, n
  end
end
local trimmed = 0
if low_ms then
  trimmed = redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-%d', low_ms, low_n + 1))
end
return gone or trimmed
"""


READ_SCRIPT = """
-- KEYS: feed stream.  ARGV: after id (exclusive), count
-- {entries ever added, entries held, entries after the id}, read at one instant: the first
-- held entry is the (added - held + 1)-th ever added (the feed is only ever trimmed from its
-- head), so a reader knowing the ordinal of its cursor sees any gap the cap made.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added = 0
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1] end
end
return {added, redis.call('XLEN', KEYS[1]),
        redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"""


REGISTER_SCRIPT = """
-- KEYS: cursors hash, feed stream.  ARGV: consumer
-- Register a durable consumer that has no cursor here yet, at the stream's present end: the
-- entries held now and every later one are kept for it (and a later gap is seen), what was
-- trimmed before is not its loss. Returns 1 if it registered it, 0 if it had a cursor.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local before = 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local added = 0
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
  before = added - redis.call('XLEN', KEYS[2])
end
redis.call('HSET', KEYS[1], ARGV[1], '0-0/' .. before)
return 1
"""


def parse_feed_id(value: bytes | str) -> FeedId:
    """(ms, sequence) of a stream id such as b"1700000000000-3" (or a saved cursor
    "1700000000000-3/17", which carries the entry's ordinal)."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, n = text.partition("/")[0].partition("-")
    return (int(ms), int(n))


def after_known(added: int, length: int, known: int | None) -> tuple[tuple[int, int] | None, int]:
    """For a stream that was ever added `added` entries and holds `length` (READ_SCRIPT: read
    at one instant; it is only ever trimmed from its head), and a reader that has its entries
    up to the `known`-th (None: not known): (the ordinals (first, last) of the entries after
    it that are gone unread, a gap the cap made, or None; the ordinal of the first entry held
    after it, or the stream's first held entry when nothing is known)."""
    head = added - length + 1  # the ordinal of the stream's first held entry
    if known is None:
        return None, head
    return ((known + 1, head - 1) if head > known + 1 else None), max(head, known + 1)


def format_feed_id(at: FeedId) -> str:
    """The stream id text of (ms, sequence)."""
    return f"{at[0]}-{at[1]}"


async def rounds(
    one: Callable[[], Awaitable[_T]],
    failed: Callable[[Exception, float], None],
    retry: float,
) -> AsyncIterator[_T]:
    """A durable consumer's loop: run `one` round after another, yielding what each returns
    (the caller waits between them as it sees fit); a round that raises is reported with
    failed(exc, seconds before the next try) and tried again after `retry` s, doubling to 30 s
    while they keep failing (an outage: nothing is lost, it is only later)."""
    backoff = retry
    while True:
        try:
            got = await one()
        except Exception as exc:
            failed(exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        backoff = retry
        yield got


@dataclass(slots=True)
class FeedRound:
    """What one read returned: entries (partition, id, FeedBatch bytes), oldest first per
    partition; the partitions that had more than was read; and the partitions whose unread
    entries were trimmed by the cap (a gap: they are lost)."""

    entries: list[tuple[int, FeedId, bytes]] = field(default_factory=list)
    more: set[int] = field(default_factory=set)
    #: partition -> (first, last) ordinals of the entries it lost
    lost: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: (partition, id) -> the entry's ordinal in its stream (-1: not known)
    ordinals: dict[tuple[int, FeedId], int] = field(default_factory=dict)

    def last(self) -> dict[int, FeedId]:
        """Per partition read from, the id of the last entry read (entries are in order per
        partition)."""
        return {p: at for p, at, _ in self.entries}


class FeedReader:
    """A durable consumer's view of the feed of some partitions (all by default).

    It owns nothing and writes only its cursors (and trims behind the slowest): it can run in
    any process, beside the server or in several at once for disjoint partitions. Every method
    raises Unavailable when Redis fails (nothing is consumed then).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keyspace: Keyspace,
        consumer: str,
        partitions: Iterable[int] | None = None,
        *,
        command_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.consumer = consumer
        self.partitions = sorted(range(keyspace.partitions) if partitions is None else partitions)
        self.command_timeout = command_timeout
        #: partition -> the last id this consumer has (loaded by `load`)
        self.cursors: dict[int, FeedId] = {}
        #: partition -> the ordinal of that entry in its stream (1 = the first ever added; None:
        #: not known, the consumer starts there)
        self.ordinals: dict[int, int | None] = {}
        self._script = client.register_script(CURSOR_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self._register = client.register_script(REGISTER_SCRIPT)

    async def register(self) -> int:
        """Make this consumer a durable one in every partition where it is not yet (the feed is
        kept for it from the entries held now on: a server registers the consumers it expects
        at start, so that none loses what happens before it first runs). Returns in how many
        partitions it was new."""
        return await self._in_each_partition(self._register, self.consumer)

    async def unregister(self) -> int:
        """Stop being a durable consumer: the feed is no longer kept for it (each partition
        trimmed behind the consumers left). Returns in how many partitions it had a cursor."""
        return await self._in_each_partition(self._script, self.consumer, "")

    async def _in_each_partition(self, script: Any, *args: str) -> int:
        """Run a script (KEYS: cursors hash, feed) with args in every partition, in one
        pipeline; the sum of its replies."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            await script(
                keys=[self.keyspace.feed_cursors(p), self.keyspace.feed(p)],
                args=list(args),
                client=pipe,
            )
        return sum(int(n) for n in await self._execute(pipe))

    async def load(self) -> dict[int, FeedId]:
        """The consumer's saved cursors ((0, 0) where it has none: from the first entry)."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.hget(self.keyspace.feed_cursors(p), self.consumer)
        values = await self._execute(pipe)
        self.cursors, self.ordinals = {}, {}
        for p, v in zip(self.partitions, values, strict=True):
            self.cursors[p] = (0, 0) if v is None else parse_feed_id(v)
            ordinal = None if v is None else v.decode().partition("/")[2]
            self.ordinals[p] = int(ordinal) if ordinal else None
        return dict(self.cursors)

    async def read(self, count: int = 500) -> FeedRound:
        """At most `count` entries of each partition after its cursor (call `load` first)."""
        if not self.cursors:
            await self.load()
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            await self._read(
                keys=[self.keyspace.feed(p)],
                args=[format_feed_id(self.cursors[p]), count],
                client=pipe,
            )
        out = FeedRound()
        for p, (added, length, entries) in zip(
            self.partitions, await self._execute(pipe), strict=True
        ):
            gap, first = after_known(int(added), int(length), self.ordinals.get(p))
            if gap is not None:  # unread entries are gone
                out.lost[p] = gap
            if p not in self.ordinals and self.cursors[p] != (0, 0) and entries:
                first = -1  # a cursor saved without its ordinal: unknown until the next gap
            for i, (entry_id, fields) in enumerate(entries):
                value = fields[fields.index(b"e") + 1]
                out.entries.append((p, parse_feed_id(entry_id), value))
                out.ordinals[(p, parse_feed_id(entry_id))] = -1 if first < 0 else first + i
            if len(entries) >= count:
                out.more.add(p)
        return out

    async def commit(self, got: FeedRound) -> None:
        """Save the consumer's new cursors (per partition the last entry of a round it has
        consumed) and trim those partitions' streams behind the slowest consumer there (one
        script call each)."""
        last = got.last()
        saved: dict[int, tuple[FeedId, int]] = {
            p: (self.cursors[p], gap[1]) for p, gap in got.lost.items()
        }  # a gap and nothing after it yet: the cursor stays, past the gap
        for p, at in last.items():
            saved[p] = (at, got.ordinals.get((p, at), -1))
        if not saved:
            return
        pipe = self.client.pipeline(transaction=False)
        for p, (at, ordinal) in sorted(saved.items()):
            suffix = f"/{ordinal}" if ordinal > 0 else ""
            await self._script(
                keys=[self.keyspace.feed_cursors(p), self.keyspace.feed(p)],
                args=[self.consumer, format_feed_id(at) + suffix],
                client=pipe,
            )
        await self._execute(pipe)
        for p, (at, ordinal) in saved.items():
            self.cursors[p] = at
            self.ordinals[p] = ordinal if ordinal > 0 else None

    async def retained(self) -> int:
        """Entries the partitions' streams hold now (not yet trimmed behind every consumer)."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.xlen(self.keyspace.feed(p))
        return sum(int(n) for n in await self._execute(pipe))

    async def _execute(self, pipe: aioredis.client.Pipeline) -> list[Any]:
        try:
            async with asyncio.timeout(self.command_timeout):
                return list(await pipe.execute())
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis feed read failed: {exc!r}") from exc


RENEW_SCRIPT = """
-- KEYS: lease.  ARGV: holder, ttl ms.  Extend the lease if this holder has it: 1, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE_SCRIPT = """
-- KEYS: lease.  ARGV: holder.  Give the lease up if this holder has it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """One holder at a time for a durable consumer (`<prefix>:lease:<consumer>`, a key with a
    TTL): a second ledger writer started by mistake stands by instead of reading the same
    cursors (which made each see the other's progress as a gap). Raises Unavailable."""

    def __init__(
        self, client: aioredis.Redis, keyspace: Keyspace, consumer: str, holder: str, ttl: float
    ) -> None:
        self.client = client
        self.key = f"{keyspace.prefix}:lease:{consumer}"
        self.holder = holder
        self.ttl_ms = int(ttl * 1000)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    async def acquire(self) -> str | None:
        """Take or keep it: None when this holder has it, else who has it."""
        try:
            if await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]):
                return None
            if await self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms):
                return None
            other = await self.client.get(self.key)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"redis lease: {exc!r}") from exc
        if other is None:
            return "someone (it just expired)"
        return other.decode(errors="replace") if isinstance(other, bytes) else str(other)

    async def release(self) -> None:
        """Give it up (if held), so that a standby takes over at once."""
        try:
            await self._release(keys=[self.key], args=[self.holder])
        except (RedisError, OSError) as exc:
            raise Unavailable(f"redis lease: {exc!r}") from exc
