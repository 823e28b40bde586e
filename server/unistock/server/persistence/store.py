"""Redis access: partition ownership, fenced group-commit writes, batched reads.

Every write goes through one Lua script per partition and flush phase (and a source's claim by
its first store through one of its own, CLAIM_SCRIPT). The script checks the
partition's owner epoch first (so a process that lost a partition can never write it again) and
refuses to replace a stored position or reservation with an older version of it. It validates
before its first write: a Lua script that fails half way does not roll back.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from unistock.server.domain import Fenced, Position, StockKey, Unavailable
from unistock.server.persistence.codec import (
    FEED_NETWORK,
    FEED_STORE,
    decode_stored,
    parse_hold,
    parse_network_level_value,
)
from unistock.server.persistence.feed import READ_SCRIPT, parse_feed_id
from unistock.server.persistence.keys import (
    LAYOUT_VERSION,
    Keyspace,
    mark_field,
    position_field,
)

log = logging.getLogger(__name__)


class _HiredisPacking:
    """Packs commands with hiredis's C packer.

    redis-py's asyncio connection packs every argument in Python, re-joining a growing buffer
    per argument: a flush of a few thousand positions spent ~10% of the server's CPU there
    (bench B1 profile). Its synchronous connection already uses hiredis.pack_command when
    hiredis is installed; this does the same for asyncio (same splitting of a command name such
    as "SCRIPT LOAD", same bytes on the wire).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        packed = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        # hiredis's stub types the argument as a one-element tuple; it takes any length.
        return [hiredis.pack_command(packed)]  # type: ignore[arg-type]


def with_hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """connection_class, packing commands with hiredis."""
    if issubclass(connection_class, _HiredisPacking):
        return connection_class
    return type(f"Hiredis{connection_class.__name__}", (_HiredisPacking, connection_class), {})


#: Positions read per Redis round trip of a watch snapshot.
SCAN_CHUNK = 2000

FLUSH_SCRIPT = """
-- KEYS: epoch, positions hash, locations set, expiry zset, sources hash, source highs hash,
--       spilled marks hash, shipments outbox hash, feed stream, holds hash per held
--       position..., transfer record keys..., transfer index keys..., reservation keys...
-- ARGV: epoch, #positions, (field, value)..., #held, per holds hash: (position number,
--       #holds, (reservation_id, value or '')...), feed entry id, feed max entries, #positions
--       with changes, per position: (position number, #changes, change...) (see
--       codec.feed_change: each starts with its position version),
--       #transfers, per transfer key: (value, "<destination>|<transfer_id>", #changes,
--       change...) (see codec.transfer_change: each starts with its revision),
--       #indexes, destination per index key..., #status groups, per group (feed kind,
--       #statuses, per status (id, value, change, status when none stored)) (StatusWrite;
--       KEYS: the group's hash: storestat, netstat), #shipments, (field, value)..., #shipped,
--       field..., #marks, (field, seq)..., #locations, location..., #sources,
--       (source_id, seq)..., #highs, (source_id, seq)..., then per reservation key:
--       (reservation_id, value, expiry score or '', retention ms or '0', #changes,
--       change..., index member, drop at ms or '', #add, #remove[, terminal entries]) (see
--       codec.reservation_change: each starts with its revision; IndexWrite); a reservation's
--       KEYS: its record, its index keys to add to, to remove from[, rixdrop, rixt]
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('FENCED partition owned by epoch ' .. tostring(epoch) ..
                           ', this writer has ' .. ARGV[1])
end
local i = 2
local written, stale = 0, 0
-- Seqs are compared as decimal strings, never as Lua numbers (doubles: 2^53 + 1 == 2^53).
local function above(new, old)
  if not old then return true end
  if not string.match(old, '^%d+$') then return tonumber(new) > (tonumber(old) or 0) end
  if #new ~= #old then return #new > #old end
  return new > old
end
-- Raise a hash field holding a seq to new (a decimal string) if it is higher.
local function raise(key, f, new)
  if above(new, redis.call('HGET', key, f)) then redis.call('HSET', key, f, new) end
end
local npos = tonumber(ARGV[i]); i = i + 1
-- Positions: one HMGET and one HSET per CHUNK fields (not two calls per position: the calls
-- were most of the script's time), skipping any whose stored version is newer.
local CHUNK = 1000
local ok, had = {}, {}
for c = 0, npos - 1, CHUNK do
  local n = math.min(CHUNK, npos - c)
  local fields = {}
  for k = 1, n do fields[k] = ARGV[i + 2 * (k - 1)] end
  local olds = redis.call('HMGET', KEYS[2], unpack(fields))
  local pairs_ = {}
  for k = 1, n do
    local v, old = ARGV[i + 2 * k - 1], olds[k]
    if old and string.sub(old, 2, 9) > string.sub(v, 2, 9) then
      stale = stale + 1
    else
      pairs_[#pairs_ + 1] = fields[k]; pairs_[#pairs_ + 1] = v
      ok[c + k] = fields[k]
      if old then had[c + k] = string.sub(old, 2, 9) end
      written = written + 1
    end
  end
  if #pairs_ > 0 then redis.call('HSET', KEYS[2], unpack(pairs_)) end
  i = i + 2 * n
end
-- The holds that changed on those positions, with their position or not at all (a stale
-- position's holds are older than the stored ones too).
local nheld = tonumber(ARGV[i]); i = i + 1
for h = 1, nheld do
  local at, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1]); i = i + 2
  if ok[at] then
    -- In slices: unpack() takes at most a few thousand values.
    local set, del = {}, {}
    for k = 0, n - 1 do
      local rid, v = ARGV[i + 2 * k], ARGV[i + 2 * k + 1]
      if v == '' then del[#del + 1] = rid else set[#set + 1] = rid; set[#set + 1] = v end
      if #set >= 2 * CHUNK then redis.call('HSET', KEYS[9 + h], unpack(set)); set = {} end
      if #del >= CHUNK then redis.call('HDEL', KEYS[9 + h], unpack(del)); del = {} end
    end
    if #set > 0 then redis.call('HSET', KEYS[9 + h], unpack(set)) end
    if #del > 0 then redis.call('HDEL', KEYS[9 + h], unpack(del)) end
  end
  i = i + 2 * n
end
-- The change feed: the changes of the positions and reservation records written, in one
-- stream entry with the id the server gave, in the same call as the state they describe
-- (appended at the end of the script). A change whose version the stored state already had
-- is not appended again (an earlier attempt of this write, reported failed, did apply): each
-- change is in the feed exactly once, and only if its state is.
local function uvarint(n)
  local out = {}
  while n >= 128 do out[#out + 1] = string.char(n % 128 + 128); n = math.floor(n / 128) end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end
local feed_id, feed_max = ARGV[i], ARGV[i + 1]; i = i + 2
local parts, appended = {}, 0
-- The n changes from ARGV[i] of a state written over `before` (its stored version, nil if
-- none): those above it, as one group of the entry (kind byte, key, count, changes).
local function group(kind, key, before, n)
  local mine = {}
  for c = 0, n - 1 do
    local change = ARGV[i + c]
    if not before or string.sub(change, 1, 8) > before then mine[#mine + 1] = change end
  end
  if #mine > 0 then
    parts[#parts + 1] = kind .. uvarint(#key) .. key .. uvarint(#mine) .. table.concat(mine)
    appended = appended + #mine
  end
end
local nfeed = tonumber(ARGV[i]); i = i + 1
for _ = 1, nfeed do
  local at, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1]); i = i + 2
  if ok[at] then group('\1', ok[at], had[at], n) end
  i = i + n
end
local k = 9 + nheld
-- Transfer records (a record never replaced by an older revision), each with its feed
-- changes (the discrepancies it recorded).
local nxfer = tonumber(ARGV[i]); i = i + 1
for _ = 1, nxfer do
  k = k + 1
  local v, name, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]); i = i + 3
  local old = redis.call('GET', KEYS[k])
  if old and string.sub(old, 2, 9) > string.sub(v, 2, 9) then
    stale = stale + 1
  else
    redis.call('SET', KEYS[k], v); written = written + 1
    group('\3', name, old and string.sub(old, 2, 9), n)
  end
  i = i + n
end
-- Transfer index: the destinations with a record of a transfer.
local nidx = tonumber(ARGV[i]); i = i + 1
for _ = 1, nidx do k = k + 1; redis.call('SADD', KEYS[k], ARGV[i]); i = i + 1 end
-- Statuses (a store's online or offline, a network level's stock class), per group a hash and
-- a feed kind; per status: its value (revision, then the status) stored when its revision is
-- newer than the stored one, its change appended only when the status differs from the stored
-- one (none stored: the default given). A retry or a second server start making the same
-- change appends nothing.
local ngroups = tonumber(ARGV[i]); i = i + 1
for _ = 1, ngroups do
  k = k + 1
  local kind, nstat = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  for _ = 1, nstat do
    local sid, v, default = ARGV[i], ARGV[i + 1], ARGV[i + 3]; i = i + 2
    local old = redis.call('HGET', KEYS[k], sid)
    if old and string.sub(old, 1, 8) >= string.sub(v, 1, 8) then
      stale = stale + 1
    else
      redis.call('HSET', KEYS[k], sid, v); written = written + 1
      local was = default
      if old then was = string.sub(old, 9) end
      if was ~= string.sub(v, 9) then group(kind, sid, nil, 1) end
    end
    i = i + 2
  end
end
-- Shipments not yet applied to their transfer record (written with their origin position),
-- and those applied (deleted once their record is durable).
local nship = tonumber(ARGV[i]); i = i + 1
for _ = 1, nship do redis.call('HSET', KEYS[8], ARGV[i], ARGV[i + 1]); i = i + 2 end
local nshipped = tonumber(ARGV[i]); i = i + 1
for _ = 1, nshipped do redis.call('HDEL', KEYS[8], ARGV[i]); i = i + 1 end
-- Spilled marks of those positions (only ever raised: a mark never goes back).
local nmark = tonumber(ARGV[i]); i = i + 1
for _ = 1, nmark do raise(KEYS[7], ARGV[i], ARGV[i + 1]); i = i + 2 end
local nloc = tonumber(ARGV[i]); i = i + 1
for _ = 1, nloc do redis.call('SADD', KEYS[3], ARGV[i]); i = i + 1 end
local nsrc = tonumber(ARGV[i]); i = i + 1
for _ = 1, nsrc do raise(KEYS[5], ARGV[i], ARGV[i + 1]); i = i + 2 end
local nhigh = tonumber(ARGV[i]); i = i + 1
for _ = 1, nhigh do raise(KEYS[6], ARGV[i], ARGV[i + 1]); i = i + 2 end
-- Reservation records, each with its index entries (see keys: us:{p}:rix:...): added to the
-- index keys of the record written, removed from those of its earlier states, and for a
-- terminal record its entries and the end of its retention kept for the sweep (rixt, rixdrop).
local nkeys = #KEYS
while k < nkeys do
  k = k + 1
  local rid, v, score, keep = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4]); i = i + 5
  local j = i + n  -- after the changes: member, drop at or '', #add, #remove[, entries]
  local member, drop = ARGV[j], ARGV[j + 1]
  local nadd, ndel = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local old = redis.call('GET', KEYS[k])
  if old and string.sub(old, 2, 9) > string.sub(v, 2, 9) then
    stale = stale + 1
  else
    if keep ~= '0' then redis.call('SET', KEYS[k], v, 'PX', keep) else redis.call('SET', KEYS[k], v) end
    if score ~= '' then redis.call('ZADD', KEYS[4], score, rid) else redis.call('ZREM', KEYS[4], rid) end
    written = written + 1
    group('\2', rid, old and string.sub(old, 2, 9), n)
    for a = k + 1, k + nadd do redis.call('ZADD', KEYS[a], 0, member) end
    for d = k + nadd + 1, k + nadd + ndel do redis.call('ZREM', KEYS[d], member) end
    if drop ~= '' then
      redis.call('ZADD', KEYS[k + nadd + ndel + 1], drop, rid)
      redis.call('HSET', KEYS[k + nadd + ndel + 2], rid, ARGV[j + 4])
    end
  end
  k = k + nadd + ndel
  i = j + 4
  if drop ~= '' then k = k + 2; i = i + 1 end
end
if #parts > 0 then
  local blob = table.concat(parts)
  local added = redis.pcall('XADD', KEYS[9], 'MAXLEN', '~', feed_max, feed_id, 'e', blob)
  if type(added) == 'table' and added.err then  -- an id not above the stream's last: Redis's
    redis.call('XADD', KEYS[9], 'MAXLEN', '~', feed_max, '*', 'e', blob)
  end
end
return {written, stale, appended}
"""


CLAIM_SCRIPT = """
-- KEYS: epoch, sources hash, source owners hash.  ARGV: epoch, source_id, store_id
-- The source's owner (set to store_id when it has none: the first claim wins, atomically) and
-- its highest contiguous durable seq.
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('FENCED partition owned by epoch ' .. tostring(epoch) ..
                           ', this writer has ' .. ARGV[1])
end
redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[3])
return {redis.call('HGET', KEYS[3], ARGV[2]), redis.call('HGET', KEYS[2], ARGV[2]) or '0'}
"""


class IndexWrite(NamedTuple):
    """A reservation record's index entries, written with it (see keys: us:{p}:rix:...)."""

    #: "<created ms, 13 digits>|<reservation_id>" (rindex.index_member)
    member: str
    #: the index keys of the record written (ZADD, idempotent)
    add: list[str]
    #: index keys of its earlier states that it left (ZREM)
    remove: list[str]
    #: a terminal record: when its retention runs out (ms since epoch, a decimal string;
    #: "" for an ACTIVE record), and its entries for the sweep (rindex.terminal_entries)
    drop_at: str = ""
    entries: str = ""


class StatusWrite(NamedTuple):
    """A status kept with the feed change of its changes: a store's online / offline
    (FEED_STORE, codec.store_status_value / store_status_change, key the store id) or a network
    level's stock class (FEED_NETWORK, codec.network_level_value / network_level_change, key
    "<network>|<sku>")."""

    kind: int
    key: str
    #: revision (8 bytes) then the status
    value: bytes
    #: the feed change, appended when the status differs from the stored one
    change: bytes
    #: the status assumed when none is stored
    default: bytes


@dataclass(slots=True)
class PartitionWrite:
    """What one flush phase writes into one partition."""

    positions: list[bytes | str] = field(default_factory=list)  # field, value, field, value...
    #: changed holds of those positions: (position number from 1, holds hash key,
    #: [reservation_id, value or b"" (deleted), ...])
    holds: list[tuple[int, str, list[bytes | str]]] = field(default_factory=list)
    #: feed changes of those positions: (position number from 1, [change, ...]) (see
    #: codec.feed_change)
    feed: list[tuple[int, list[bytes]]] = field(default_factory=list)
    #: (transfer record key, stored record, "<destination>|<transfer_id>", its feed changes)
    #: of transfers to this partition's locations
    transfers: list[tuple[str, bytes, str, list[bytes]]] = field(default_factory=list)
    #: (transfer index key, destination location) of transfers indexed in this partition
    indexes: list[tuple[str, str]] = field(default_factory=list)
    #: statuses of this partition's stores and network levels, oldest first
    statuses: list[StatusWrite] = field(default_factory=list)
    #: shipments of this partition's positions not yet applied: field, value, field, value...
    shipments: list[bytes | str] = field(default_factory=list)
    #: shipments applied to their (durable) transfer record: fields to delete
    shipped: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    #: spilled marks of the positions: field (see keys.mark_field), seq
    marks: list[bytes | str | int] = field(default_factory=list)
    #: (source_id, highest contiguous durable seq): only ever raised
    sources: list[tuple[str, int]] = field(default_factory=list)
    #: (source_id, highest seq applied from it anywhere): only ever raised
    highs: list[tuple[str, int]] = field(default_factory=list)
    #: (reservation_id, value, expiry score or "", retention ms or "0", feed changes, its
    #: index entries)
    reservations: list[tuple[str, bytes, str, str, list[bytes], IndexWrite]] = field(
        default_factory=list
    )


Phase = dict[int, PartitionWrite]


class RedisStore:
    """Owns a set of partitions in one Redis and reads and writes them."""

    def __init__(
        self,
        client: aioredis.Redis,
        keyspace: Keyspace,
        *,
        command_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.command_timeout = command_timeout
        self.epochs: dict[int, int] = {}
        #: Entries kept per partition's feed (approximately: MAXLEN ~); --feed-max-entries.
        self.feed_max_entries = 100_000
        #: feed kind of a StatusWrite -> the hash of its statuses in a partition
        self._status_hash = {
            FEED_STORE: keyspace.store_status,
            FEED_NETWORK: keyspace.network_status,
        }
        #: Changes appended to the feed by this process (a counter, for the metrics).
        self.feed_changes = 0
        #: The last feed entry id given: (ms, sequence).
        self._feed_last = (0, 0)
        #: The first feed id of the flush in progress, or of a flush that failed (its script
        #: calls may have applied, and may still): no reader goes past it until a later flush
        #: completes. None when every id given is settled.
        self._feed_open: tuple[int, int] | None = None
        self._flush_sha = hashlib.sha1(FLUSH_SCRIPT.encode()).hexdigest()
        self._claim = client.register_script(CLAIM_SCRIPT)  # loads itself on NOSCRIPT
        self._read_feed = client.register_script(READ_SCRIPT)
        #: Spilled marks this process wrote or read (field -> seq), the most recent last: this
        #: process alone writes its partitions (fenced), so a hit is what Redis holds, and a
        #: source sending again to a crowded position costs no round trip. Bounded.
        self._marks: dict[str, int] = {}
        self.max_cached_marks = 65_536
        # HSCAN replies stay flat [cursor, [field, value, ...]]: a snapshot of a million
        # positions need not build redis-py's dict of every chunk first.
        client.set_response_callback("HSCAN", lambda response, **options: response)

    @classmethod
    def from_url(cls, url: str, keyspace: Keyspace, *, command_timeout: float = 5.0) -> RedisStore:
        """A store on a Redis URL. No per-command socket timeout: redis-py wraps each command
        in wait_for for it (1.3-1.5x slower); deadlines are applied per batch instead."""
        # A blocking pool: a burst waits for a connection (within the batch deadline) instead
        # of failing with MaxConnectionsError while Redis is merely slow.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=command_timeout,
            health_check_interval=10,
            max_connections=64,
            timeout=command_timeout,
            decode_responses=False,
        )
        pool.connection_class = with_hiredis_packing(pool.connection_class)
        return cls(aioredis.Redis(connection_pool=pool), keyspace, command_timeout=command_timeout)

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection."""
        await self.client.aclose()
        await self.client.connection_pool.disconnect()

    # -- ownership -----------------------------------------------------------------------------

    async def open(self, partitions: Iterable[int] | None = None) -> None:
        """Check the layout and take ownership of partitions (all by default) by bumping epochs."""
        ks = self.keyspace
        try:
            async with asyncio.timeout(self.command_timeout):
                meta = await self.client.hgetall(ks.meta)
                if not meta:
                    await self.client.hsetnx(ks.meta, "layout", LAYOUT_VERSION)
                    await self.client.hsetnx(ks.meta, "partitions", ks.partitions)
                    meta = await self.client.hgetall(ks.meta)
                stored = int(meta[b"partitions"])
                if stored != ks.partitions:
                    raise ValueError(
                        f"the Redis keyspace {ks.prefix!r} was created with {stored} partitions, "
                        f"this server is configured for {ks.partitions}"
                    )
                owned = list(range(ks.partitions)) if partitions is None else list(partitions)
                pipe = self.client.pipeline(transaction=False)
                for p in owned:
                    pipe.incr(ks.epoch(p))
                for p in owned:  # the feeds' last ids: new ones go on above them
                    pipe.xrevrange(ks.feed(p), count=1)
                replies = await pipe.execute()
                epochs = replies[: len(owned)]
                for last in replies[len(owned) :]:
                    if last:
                        self._feed_last = max(self._feed_last, parse_feed_id(last[0][0]))
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis: {exc}") from exc
        self.epochs = dict(zip(owned, (int(e) for e in epochs), strict=True))
        log.info("owning %d partitions of %r", len(owned), ks.prefix)

    # -- writes --------------------------------------------------------------------------------

    async def flush(self, phases: list[Phase]) -> tuple[int, int]:
        """Write phases in order; see _flush. Loads the script when Redis lost it (restart)."""
        try:
            return await self._flush(phases)
        except NoScriptError:
            try:
                async with asyncio.timeout(self.command_timeout):
                    await self.client.script_load(FLUSH_SCRIPT)
            except (RedisError, OSError, TimeoutError) as exc:
                raise Unavailable(f"redis script load failed: {exc!r}") from exc
            # Safe to repeat: the script never replaces a newer version with an older one.
            return await self._flush(phases)

    def feed_id(self) -> str:
        """The next feed entry id, "<ms>-<n>": above every id given before (and every id in
        the streams when the partitions were opened), from the wall clock when it moved on.
        The ids of one flush's entries increase in the order of its script calls, and a later
        flush's are higher: the feed's global order."""
        ms, n = self._feed_last
        now = int(time.time() * 1000)
        self._feed_last = (now, 0) if now > ms else (ms, n + 1)
        if self._feed_open is None:
            self._feed_open = self._feed_last
        return f"{self._feed_last[0]}-{self._feed_last[1]}"

    def feed_watermark(self) -> tuple[int, int]:
        """Every feed entry with an id below this is in the streams to stay (ms, sequence): the
        first id of a flush in progress (or failed), else just above the last id given."""
        if self._feed_open is not None:
            return self._feed_open
        ms, n = self._feed_last
        return (ms, n + 1)

    async def read_feed_from(
        self,
        after: tuple[int, int],
        limit: int = 1000,
        streams: dict[int, tuple[int, int, int]] | None = None,
    ) -> list[tuple[tuple[int, int], int, bytes]]:
        """The feed entries of every owned partition after an id (exclusive), in the feed's
        global order, at most limit, only those below the watermark (settled): (id, partition,
        entry). streams, when given, gets per owned partition (entries ever added to its
        stream, entries it holds, entries after `after` read from it), all read at the same
        instant as its entries (persistence.feed READ_SCRIPT): the entries a partition returns
        are the first of those read from it, so a reader can number them and see a gap the
        feed's cap made. Raises Unavailable."""
        watermark = self.feed_watermark()  # first: whatever is below it is already readable
        owned = sorted(self.epochs)
        pipe = self.client.pipeline(transaction=False)
        for p in owned:
            await self._read_feed(
                keys=[self.keyspace.feed(p)], args=[f"{after[0]}-{after[1]}", limit], client=pipe
            )
        try:
            async with asyncio.timeout(self.command_timeout):
                results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis feed read failed: {exc!r}") from exc
        out: list[tuple[tuple[int, int], int, bytes]] = []
        for p, (added, length, entries) in zip(owned, results, strict=True):
            if streams is not None:
                streams[p] = (int(added), int(length), len(entries))
            for entry_id, fields in cast(list[tuple[bytes, list[bytes]]], entries):
                at = parse_feed_id(entry_id)
                if at < watermark:
                    out.append((at, p, fields[fields.index(b"e") + 1]))
        out.sort(key=lambda e: e[0])
        return out[:limit]

    async def save_feed_cursor(self, consumer: str, at: tuple[int, int]) -> None:
        """A durable consumer has what the feed holds up to `at` (inclusive): kept in every
        owned partition (us:{p}:feedcur), so the feed is trimmed behind it. Raises Unavailable."""
        pipe = self.client.pipeline(transaction=False)
        for p in sorted(self.epochs):
            pipe.hset(self.keyspace.feed_cursors(p), consumer, f"{at[0]}-{at[1]}")
        await self._execute(pipe)

    async def load_feed_cursor(self, consumer: str) -> tuple[int, int]:
        """Where a durable consumer is (the lowest over the owned partitions; (0, 0): nowhere
        yet). Raises Unavailable."""
        pipe = self.client.pipeline(transaction=False)
        owned = sorted(self.epochs)
        for p in owned:
            pipe.hget(self.keyspace.feed_cursors(p), consumer)
        values = await self._execute(pipe)
        found = [parse_feed_id(v) for v in values if v is not None]
        return min(found) if len(found) == len(owned) else (0, 0)

    async def trim_feed(self, consumers: list[str]) -> None:
        """Trim every owned partition's feed behind the slowest durable consumer with a cursor
        there (every one counts, these or others, such as a ledger writer in another process),
        and not at all where one of these has no cursor yet. Raises Unavailable."""
        if not consumers:
            return
        owned = sorted(self.epochs)
        pipe = self.client.pipeline(transaction=False)
        for p in owned:
            pipe.hgetall(self.keyspace.feed_cursors(p))
        cursors = await self._execute(pipe)
        pipe = self.client.pipeline(transaction=False)
        for p, values in zip(owned, cursors, strict=True):
            if any(c.encode() not in values for c in consumers):
                continue
            ms, n = min(parse_feed_id(v) for v in values.values())
            pipe.xtrim(self.keyspace.feed(p), minid=f"{ms}-{n + 1}", approximate=False)
        await self._execute(pipe)

    async def feed_fullest(self) -> int:
        """Entries held by the fullest of the owned partitions' feed streams."""
        pipe = self.client.pipeline(transaction=False)
        for p in sorted(self.epochs):
            pipe.xlen(self.keyspace.feed(p))
        return max((int(n) for n in await self._execute(pipe)), default=0)

    async def read_feed(
        self, partition: int, after: str = "0-0", count: int = 1000
    ) -> list[tuple[str, bytes]]:
        """Entries of a partition's feed after an id (exclusive): (id, FeedBatch bytes), oldest
        first, at most count; raises Unavailable."""
        try:
            async with asyncio.timeout(self.command_timeout):
                entries = await self.client.xrange(
                    self.keyspace.feed(partition), min=f"({after}", count=count
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis feed read failed: {exc!r}") from exc
        out: list[tuple[str, bytes]] = []
        for entry_id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], entries):
            out.append((entry_id.decode(), fields[b"e"]))
        return out

    async def _flush(self, phases: list[Phase]) -> tuple[int, int]:
        """Write phases in order in one pipeline; returns (records written, stale skipped).

        One Redis applies a pipeline's commands in order and appends them to its AOF in that
        order, so a crash can lose a suffix of the phases but never an earlier phase without a
        later one. Raises Fenced if another process owns a partition, Unavailable on errors.
        """
        ks = self.keyspace
        pipe = self.client.pipeline(transaction=False)
        for phase in phases:
            for p, w in phase.items():
                keys: list[str] = [
                    ks.epoch(p),
                    ks.positions(p),
                    ks.locations(p),
                    ks.expiries(p),
                    ks.sources(p),
                    ks.source_highs(p),
                    ks.spilled_marks(p),
                    ks.shipments(p),
                    ks.feed(p),
                ]
                args: list[bytes | str | int] = [
                    self.epochs[p],
                    len(w.positions) // 2,
                    *w.positions,
                    len(w.holds),
                ]
                for number, holds_key, changes in w.holds:
                    keys.append(holds_key)
                    args += (number, len(changes) // 2, *changes)
                feeds = (
                    w.feed
                    or w.statuses
                    or any(r[4] for r in w.reservations)
                    or any(t[3] for t in w.transfers)
                )
                args += (self.feed_id() if feeds else "", self.feed_max_entries, len(w.feed))
                for number, staged in w.feed:
                    args += (number, len(staged), *staged)
                args.append(len(w.transfers))
                for key, value, name, xfed in w.transfers:
                    keys.append(key)
                    args += (value, name, len(xfed), *xfed)
                args.append(len(w.indexes))
                for key, destination in w.indexes:
                    keys.append(key)
                    args.append(destination)
                kinds = sorted({st.kind for st in w.statuses})
                args.append(len(kinds))
                for kind in kinds:
                    mine = [st for st in w.statuses if st.kind == kind]
                    keys.append(self._status_hash[kind](p))
                    args += (bytes((kind,)), len(mine))
                    for st in mine:
                        args += (st.key, st.value, st.change, st.default)
                args += (len(w.shipments) // 2, *w.shipments, len(w.shipped), *w.shipped)
                args.append(len(w.marks) // 2)
                args.extend(w.marks)
                args.append(len(w.locations))
                args.extend(w.locations)
                args.append(len(w.sources))
                for source_id, seq in w.sources:
                    args.extend((source_id, seq))
                args.append(len(w.highs))
                for source_id, seq in w.highs:
                    args.extend((source_id, seq))
                for rid, value, score, keep, fed, index in w.reservations:
                    keys.append(ks.reservation(p, rid))
                    keys += index.add
                    keys += index.remove
                    args.extend((rid, value, score, keep, len(fed), *fed))
                    args += (index.member, index.drop_at, len(index.add), len(index.remove))
                    if index.drop_at:
                        keys += (ks.index_drops(p), ks.index_terminal(p))
                        args.append(index.entries)
                pipe.evalsha(self._flush_sha, len(keys), *keys, *args)
        try:
            async with asyncio.timeout(self.command_timeout):
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis flush failed: {exc!r}") from exc
        if not any(isinstance(r, Exception) for r in results):
            self._feed_open = None  # this flush's ids, and any failed one's before, settled
        written = stale = 0
        appended = 0
        for r in results:
            if isinstance(r, NoScriptError):
                raise r
            if isinstance(r, ResponseError) and str(r).startswith("FENCED"):
                raise Fenced(str(r))
            if isinstance(r, Exception):
                raise Unavailable(f"redis flush failed: {r}")
            written += int(r[0])
            stale += int(r[1])
            appended += int(r[2])
        self.feed_changes += appended
        for phase in phases:
            for w in phase.values():
                marks = w.marks
                for i in range(0, len(marks), 2):
                    self._remember_mark(str(marks[i]), int(marks[i + 1]))
        return written, stale

    def _remember_mark(self, name: str, seq: int) -> None:
        cache = self._marks
        cache[name] = max(seq, cache.pop(name, 0))  # re-inserted: now the most recent
        if len(cache) > self.max_cached_marks:
            del cache[next(iter(cache))]

    # -- reads ---------------------------------------------------------------------------------

    async def load_positions(self, keys: list[StockKey]) -> list[bytes | None]:
        """Stored positions of keys (None where absent), in one pipeline of HMGETs."""
        ks = self.keyspace
        by_part: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            by_part[ks.location_partition(key[1])].append(i)
        pipe = self.client.pipeline(transaction=False)
        order: list[list[int]] = []
        for p, idx in by_part.items():
            pipe.hmget(ks.positions(p), [position_field(keys[i]) for i in idx])
            order.append(idx)
        out: list[bytes | None] = [None] * len(keys)
        for idx, values in zip(order, await self._execute(pipe), strict=True):
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out

    async def read_positions(self, keys: list[StockKey]) -> list[Position | None]:
        """Stored positions of keys, decoded with their holds (None where absent).

        One pipeline, and one more for the holds hashes of the positions that have holds.
        Consistent only for positions nobody writes meanwhile: the process owning them reads
        them while they are not resident (see actors.directory).
        """
        found: list[Position | None] = []
        apart: list[Position] = []
        for key, data in zip(keys, await self.load_positions(keys), strict=True):
            if data is None:
                found.append(None)
                continue
            p, holds_apart = decode_stored(key, data)
            found.append(p)
            if holds_apart:
                apart.append(p)
        if apart:
            pipe = self.client.pipeline(transaction=False)
            for p in apart:
                pipe.hgetall(self.keyspace.holds(p.key))
            for p, holds in zip(apart, await self._execute(pipe), strict=True):
                p.restore_holds(parse_hold(rid, v) for rid, v in holds.items())
        return found

    async def _hget_ints(self, fields: list[tuple[str, str]]) -> list[int]:
        """Integer values of (hash key, field) pairs (0 where absent), in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for key, name in fields:
            pipe.hget(key, name)
        return [int(v or 0) for v in await self._execute(pipe)]

    async def load_sources(self, ids: list[str]) -> list[int]:
        """Highest contiguous durable seq of each source (0 when never seen)."""
        ks = self.keyspace
        return await self._hget_ints([(ks.sources(ks.source_partition(s)), s) for s in ids])

    async def claim_source(self, source_id: str, store_id: str) -> tuple[str, int]:
        """The store owning source_id (store_id if it had none: now claimed, durably) and its
        highest contiguous durable seq. One fenced script call in the source's partition."""
        ks = self.keyspace
        p = ks.source_partition(source_id)
        keys = [ks.epoch(p), ks.sources(p), ks.source_owners(p)]
        try:
            async with asyncio.timeout(self.command_timeout):
                owner, seq = await self._claim(
                    keys=keys, args=[self.epochs[p], source_id, store_id]
                )
        except ResponseError as exc:
            if str(exc).startswith("FENCED"):
                raise Fenced(str(exc)) from exc
            raise Unavailable(f"redis claim failed: {exc!r}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis claim failed: {exc!r}") from exc
        return owner.decode(), int(seq)

    def cached_marks(self, wanted: list[tuple[StockKey, str]]) -> list[int | None]:
        """The spilled marks of (position, source) pairs this process knows (None: not known;
        load_marks reads them). Never below what this process wrote."""
        cache = self._marks
        return [cache.get(mark_field(k, s)) for k, s in wanted]

    async def load_marks(self, wanted: list[tuple[StockKey, str]]) -> list[int]:
        """The spilled marks of (position, source) pairs (0 where none), in one pipeline, kept
        in the cache. A value read while a flush wrote a higher one is merged into it (a mark
        only grows), so what is returned and cached is never older than what was written."""
        ks = self.keyspace
        names = [mark_field(k, s) for k, s in wanted]
        found = {name: seq for name in names if (seq := self._marks.get(name)) is not None}
        missing = [
            (ks.spilled_marks(ks.location_partition(k[1])), name)
            for (k, _), name in zip(wanted, names, strict=True)
            if name not in found
        ]
        if missing:
            for (_, name), seq in zip(missing, await self._hget_ints(missing), strict=True):
                found[name] = max(seq, self._marks.get(name, 0))
                self._remember_mark(name, seq)
        return [found[name] for name in names]

    async def load_source_highs(self, ids: list[str]) -> list[int]:
        """Highest seq applied from each source anywhere (0 when never seen)."""
        ks = self.keyspace
        return await self._hget_ints([(ks.source_highs(ks.source_partition(s)), s) for s in ids])

    async def load_reservations(self, ids: list[str]) -> list[bytes | None]:
        """Stored reservation records (None where absent), in one pipeline."""
        ks = self.keyspace
        pipe = self.client.pipeline(transaction=False)
        for rid in ids:
            pipe.get(ks.reservation(ks.reservation_partition(rid), rid))
        return list(await self._execute(pipe))

    async def next_generation(self, name: str) -> int:
        """A counter that grows by one with every call, kept in the layout hash (durable):
        what makes versions kept in memory grow across restarts too."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(self.keyspace.meta, f"generation:{name}", 1)
        [n] = await self._execute(pipe)
        return int(n)

    async def save_heard(self, heard: dict[str, float]) -> None:
        """Store liveness: store id -> last heard (Unix seconds), one HSET per partition in one
        pipeline; raises Unavailable. Advisory data, not fenced: a later save wins."""
        if not heard:
            return
        by_partition: dict[int, dict[str, str]] = {}
        for store_id, at in heard.items():
            by_partition.setdefault(self.keyspace.store_partition(store_id), {})[store_id] = (
                f"{at:.3f}"
            )
        pipe = self.client.pipeline(transaction=False)
        for partition, fields in sorted(by_partition.items()):
            pipe.hset(self.keyspace.heard(partition), mapping=fields)  # type: ignore[arg-type]
        await self._execute(pipe)

    async def load_heard(self) -> dict[str, float]:
        """Every stored last-heard time (see save_heard); raises Unavailable."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.keyspace.partitions):
            pipe.hgetall(self.keyspace.heard(partition))
        out: dict[str, float] = {}
        for fields in await self._execute(pipe):
            for store_id, at in fields.items():
                out[store_id.decode()] = float(at)
        return out

    async def load_network_levels(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(network, sku) -> (revision, stock class) of every network level's last published
        class (us:{p}:netstat, codec.network_level_value); raises Unavailable."""
        pipe = self.client.pipeline(transaction=False)
        for partition in range(self.keyspace.partitions):
            pipe.hgetall(self.keyspace.network_status(partition))
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for fields in await self._execute(pipe):
            for key, value in fields.items():
                network, _, sku = key.decode().partition("|")
                out[network, sku] = parse_network_level_value(value)
        return out

    async def load_transfers(self, keys: list[tuple[str, str]]) -> list[bytes | None]:
        """Stored transfer records of (destination, transfer_id) keys (None where absent)."""
        pipe = self.client.pipeline(transaction=False)
        for destination, transfer_id in keys:
            pipe.get(self.keyspace.transfer(destination, transfer_id))
        return list(await self._execute(pipe))

    async def transfer_destinations(self, transfer_id: str) -> list[str]:
        """The destinations holding a record of transfer_id, sorted."""
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(self.keyspace.transfer_index(transfer_id))
        [found] = await self._execute(pipe)
        return sorted(d.decode() for d in found)

    async def pending_shipments(self) -> list[tuple[str, bytes]]:
        """(field, stored Shipment) of every shipment of the owned partitions not yet applied to
        its transfer record (normally none: only a crash leaves some)."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.epochs:
            pipe.hgetall(self.keyspace.shipments(p))
        return [(f.decode(), v) for found in await self._execute(pipe) for f, v in found.items()]

    async def due_reservations(self, now: float, limit: int = 1000) -> list[str]:
        """Ids of ACTIVE reservations whose expiry is at or before now, in owned partitions."""
        ks = self.keyspace
        pipe = self.client.pipeline(transaction=False)
        for p in self.epochs:
            pipe.zrangebyscore(ks.expiries(p), "-inf", int(now * 1000), start=0, num=limit)
        return [rid.decode() for ids in await self._execute(pipe) for rid in ids]

    async def expiring_reservations(
        self, since_ms: int, until_ms: int, limit: int = 1000
    ) -> list[list[tuple[str, int]]]:
        """Per owned partition, the first `limit` (reservation_id, expiry in ms) of ACTIVE
        reservations whose expiry is in [since_ms, until_ms], earliest first (one pipelined
        ZRANGEBYSCORE per partition on the expiry zset)."""
        ks = self.keyspace
        pipe = self.client.pipeline(transaction=False)
        for p in self.epochs:
            pipe.zrangebyscore(
                ks.expiries(p), since_ms, until_ms, start=0, num=limit, withscores=True
            )
        return [
            [(rid.decode(), int(score)) for rid, score in found]
            for found in await self._execute(pipe)
        ]

    async def locations(self) -> set[str]:
        """Every location id that has stored positions."""
        ks = self.keyspace
        pipe = self.client.pipeline(transaction=False)
        for p in range(ks.partitions):
            pipe.smembers(ks.locations(p))
        return {loc.decode() for locs in await self._execute(pipe) for loc in locs}

    async def scan_positions(
        self, scans: list[tuple[int, str | None]], count: int = 1000, parallel: int = 64
    ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        """Stored positions of (partition, MATCH pattern) scans, in chunks of (field, value).

        Each round pipelines one HSCAN per unfinished scan (up to `parallel` of them), so a
        full snapshot costs one round trip per `parallel * count` positions.
        """
        ks = self.keyspace
        pending = list(scans)
        active: dict[tuple[int, str | None], int] = {}
        while pending or active:
            while pending and len(active) < parallel:
                active[pending.pop(0)] = 0
            items = list(active.items())
            pipe = self.client.pipeline(transaction=False)
            for (partition, match), cursor in items:
                pipe.hscan(ks.positions(partition), cursor, match=match, count=count)
            chunk: list[tuple[bytes, bytes]] = []
            for (scan, _), (cursor, flat) in zip(items, await self._execute(pipe), strict=True):
                pairs = iter(flat)
                chunk.extend(zip(pairs, pairs, strict=False))  # (field, value) pairs
                cursor = int(cursor)
                if cursor == 0:
                    del active[scan]
                else:
                    active[scan] = cursor
            if chunk:
                yield chunk

    async def scan_levels(
        self, skus: frozenset[str], locations: frozenset[str], known_locations: set[str]
    ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        """Stored positions matching a watch filter, in chunks of (field, stored value)."""
        ks = self.keyspace
        if skus:
            # The (sku, location) pairs are made chunk by chunk, never all at once (a filter may
            # select a million positions), and each chunk is a Redis round trip: other calls
            # run in between.
            locs, ordered = sorted(locations or known_locations), sorted(skus)
            pairs = ((sku, loc) for loc in locs for sku in ordered)
            while keys := list(itertools.islice(pairs, SCAN_CHUNK)):
                values = await self.load_positions(keys)
                yield [
                    (position_field(k).encode(), v)
                    for k, v in zip(keys, values, strict=True)
                    if v is not None
                ]
        else:
            scans: list[tuple[int, str | None]] = (
                [
                    (ks.location_partition(loc), _glob_escape(loc) + "|*")
                    for loc in sorted(locations)
                ]
                if locations
                else [(p, None) for p in range(ks.partitions)]
            )
            async for found in self.scan_positions(scans):
                yield found

    async def _execute(self, pipe: aioredis.client.Pipeline) -> list[Any]:
        try:
            async with asyncio.timeout(self.command_timeout):
                return list(await pipe.execute())
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis read failed: {exc!r}") from exc

    async def ping(self) -> float:
        """Round-trip time to Redis in seconds; raises Unavailable."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis ping failed: {exc!r}") from exc
        return time.perf_counter() - start


def _glob_escape(text: str) -> str:
    """text as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def stored_version(value: bytes) -> int:
    """The version in a stored position's header, without decoding it."""
    return int.from_bytes(value[1:9], "big")
