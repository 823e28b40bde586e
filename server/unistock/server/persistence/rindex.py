"""Reservation indexes: records by customer, channel and location, per state.

Each record is a member of sorted sets in its own partition (keys.Keyspace.reservation_index):
`us:{p}:rix:<state>:c:<customer_id>`, `...:ch:<channel>` and `...:l:<location_id>` (one per
location of its lines, held or fulfilled). Every score is 0 and the member is
`"<created ms, 13 digits>|<reservation_id>"`, so a set's lexicographic order is (created, id):
a page ends at a member and the next starts after it (`ZRANGE ... BYLEX`), stable while records
are written. The flush script writes a record's entries in the same script call as the record
(group_commit computes them, store.IndexWrite), so after any crash the indexes hold exactly the
stored records.

A terminal record vanishes when its retention runs out and Redis says nothing: its entries are
kept in `us:{p}:rixt` and the end of its retention in `us:{p}:rixdrop`, and `sweep` (the expiry
loop) removes the entries of records gone. Records stored before the indexes existed are
indexed once per partition by `backfill` (at start-up; `us:meta` field `rix:p<n>` marks a
partition done).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from unistock.server.domain import Fenced, InvalidArgument, Reservation, Unavailable
from unistock.server.persistence.codec import decode_reservation
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import IndexWrite, RedisStore, _glob_escape

log = logging.getLogger(__name__)

#: Index dimensions: customer_id, channel, a line's location_id.
CUSTOMER, CHANNEL, LOCATION = "c", "ch", "l"
#: The states of a record (ReservationState's numbers): every state when a filter gives none.
ALL_STATES = (1, 2, 3, 4)
#: Margin added to a terminal record's retention before the sweep looks at it (ms): the
#: record's PX starts when the script runs, a little after the time it was computed.
DROP_MARGIN_MS = 5_000


def index_member(r: Reservation) -> str:
    """A record's member in its index sets: created ms (13 digits) and id."""
    return f"{round(r.created_at * 1000):013d}|{r.reservation_id}"


def index_keys(ks: Keyspace, r: Reservation) -> list[str]:
    """The index sets a record belongs to (its state's), in its partition."""
    p = ks.reservation_partition(r.reservation_id)
    state = int(r.state)
    keys = []
    if r.customer_id:
        keys.append(ks.reservation_index(p, state, CUSTOMER, r.customer_id))
    if r.channel:
        keys.append(ks.reservation_index(p, state, CHANNEL, r.channel))
    seen: set[str] = set()
    for ln in (*r.lines, *r.fulfilled):
        if ln.location_id and ln.location_id not in seen:
            seen.add(ln.location_id)
            keys.append(ks.reservation_index(p, state, LOCATION, ln.location_id))
    return keys


def terminal_entries(member: str, keys: Iterable[str]) -> str:
    """What rixt keeps of a terminal record: its member and index keys, one a line (ids and
    free text are printable: no newline in them)."""
    return "\n".join((member, *keys))


def index_write(
    ks: Keyspace, r: Reservation, earlier: Iterable[Reservation], now_ms: int, retention_ms: int
) -> IndexWrite:
    """The index entries the flush writes with record r: r's keys, the keys of its earlier
    states (not yet written, or written) that it left, and for a terminal r the end of its
    retention (now + retention) and its entries."""
    keys = index_keys(ks, r)
    remove: list[str] = []
    for e in earlier:
        for key in index_keys(ks, e):
            if key not in keys and key not in remove:
                remove.append(key)
    member = index_member(r)
    if r.active:
        return IndexWrite(member, keys, remove)
    drop = str(now_ms + retention_ms + DROP_MARGIN_MS)
    return IndexWrite(member, keys, remove, drop, terminal_entries(member, keys))


def index_identity(r: Reservation) -> tuple[object, ...]:
    """What decides a record's index keys (equal identities: equal keys)."""
    return (r.state, r.customer_id, r.channel, r.lines, r.fulfilled)


SWEEP_SCRIPT = """
-- KEYS: epoch, rixdrop, rixt, per record: (record key, its index keys...)
-- ARGV: epoch, now ms, per record: (reservation_id, entries as read, #index keys)
-- Removes the index entries of terminal records whose retention ran out and whose record is
-- gone; a record still there (written again: a later retention) is looked at again later.
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('FENCED partition owned by epoch ' .. tostring(epoch) ..
                           ', this writer has ' .. ARGV[1])
end
local now = tonumber(ARGV[2])
local i, k, removed = 3, 4, 0
while i <= #ARGV do
  local rid, entries, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local due = tonumber(redis.call('ZSCORE', KEYS[2], rid) or 'inf')
  if redis.call('HGET', KEYS[3], rid) == entries and due <= now then
    local ttl = redis.call('PTTL', KEYS[k])
    if ttl == -2 then
      local member = string.match(entries, '^[^\\n]*')
      for x = k + 1, k + n do redis.call('ZREM', KEYS[x], member) end
      redis.call('HDEL', KEYS[3], rid)
      redis.call('ZREM', KEYS[2], rid)
      removed = removed + 1
    elseif ttl >= 0 then
      redis.call('ZADD', KEYS[2], now + ttl + 1, rid)
    else  -- kept without a retention: not terminal any more
      redis.call('HDEL', KEYS[3], rid)
      redis.call('ZREM', KEYS[2], rid)
    end
  end
  i = i + 3
  k = k + 1 + n
end
return removed
"""

BACKFILL_SCRIPT = """
-- KEYS: epoch, rixdrop, rixt, per record: (record key, its index keys...)
-- ARGV: epoch, per record: (reservation_id, stored header (bytes 2-9: its revision), member,
--       #index keys, drop at ms or '', entries or '')
-- Indexes records as read, unless written since (then the flush indexed them).
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[1] then
  return redis.error_reply('FENCED partition owned by epoch ' .. tostring(epoch) ..
                           ', this writer has ' .. ARGV[1])
end
local i, k, done = 2, 4, 0
while i <= #ARGV do
  local rid, header, member = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local n, drop, entries = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local v = redis.call('GET', KEYS[k])
  if v and string.sub(v, 2, 9) == header then
    for x = k + 1, k + n do redis.call('ZADD', KEYS[x], 0, member) end
    if drop ~= '' then
      redis.call('ZADD', KEYS[2], drop, rid)
      redis.call('HSET', KEYS[3], rid, entries)
    end
    done = done + 1
  end
  i = i + 6
  k = k + 1 + n
end
return done
"""


@dataclass(frozen=True, slots=True)
class Query:
    """A reservations filter: at least one of customer_id, channel, location_id (all given
    must match) and the states (ReservationState numbers; empty: every state)."""

    customer_id: str = ""
    channel: str = ""
    location_id: str = ""
    states: frozenset[int] = frozenset()

    def driving(self) -> tuple[str, str]:
        """The index read (dimension, value): the most selective given."""
        if self.customer_id:
            return CUSTOMER, self.customer_id
        if self.location_id:
            return LOCATION, self.location_id
        return CHANNEL, self.channel

    def matches(self, r: Reservation) -> bool:
        """Whether a record is selected."""
        if self.states and int(r.state) not in self.states:
            return False
        if self.customer_id and r.customer_id != self.customer_id:
            return False
        if self.channel and r.channel != self.channel:
            return False
        if self.location_id:
            return any(ln.location_id == self.location_id for ln in (*r.lines, *r.fulfilled))
        return True


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: records in (created, id) order and where the next starts
    ("" when nothing follows)."""

    records: list[tuple[Reservation, bytes]]
    next_token: str


_TOKEN_PREFIX = "v1|"


def encode_token(member: str, newest_first: bool) -> str:
    """An opaque page token: after this member, in this direction."""
    raw = f"{_TOKEN_PREFIX}{'d' if newest_first else 'a'}|{member}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, newest_first: bool) -> str:
    """The member a page token names; InvalidArgument("page_token") when it is not one of
    ours or was made for the other direction."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument("page_token", "not a token this server returned") from None
    if not raw.startswith(_TOKEN_PREFIX):
        raise InvalidArgument("page_token", "not a token this server returned")
    direction, _, member = raw[len(_TOKEN_PREFIX) :].partition("|")
    if direction not in ("a", "d") or "|" not in member:
        raise InvalidArgument("page_token", "not a token this server returned")
    if (direction == "d") != newest_first:
        raise InvalidArgument("page_token", "made for the other order (newest_first)")
    return member


class ReservationIndex:
    """Reads the reservation indexes of the owned partitions; sweeps and backfills them."""

    #: Rounds (two pipelines each) a page reads at most before it returns, short if need be.
    max_rounds = 16

    def __init__(self, store: RedisStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        #: Wall clock (s): the end of a backfilled terminal record's retention.
        self._clock = clock
        self._ks = store.keyspace
        self._sweep_sha = hashlib.sha1(SWEEP_SCRIPT.encode()).hexdigest()
        self._backfill_sha = hashlib.sha1(BACKFILL_SCRIPT.encode()).hexdigest()

    async def page(
        self, query: Query, page_size: int, after: str = "", *, newest_first: bool = False
    ) -> Page:
        """Up to page_size records matching query, after member `after` ("" from the start),
        oldest first (newest first if asked), with their stored bytes. Raises Unavailable.

        Each round reads a few members after the cursor from the driving index of every
        owned partition and state (one pipeline), keeps those up to the first set's last
        member when that set may hold more (the merge is exact up to there), reads their
        records (one pipeline) and moves the cursor past them. Records gone meanwhile
        (retention) or changed so that they no longer match are skipped. A page may hold
        fewer than page_size (max_rounds reached): its token says where to go on."""
        ks, store = self._ks, self._store
        dimension, value = query.driving()
        states = sorted(query.states) if query.states else ALL_STATES
        keys = [
            ks.reservation_index(p, s, dimension, value)
            for p in sorted(store.epochs)
            for s in states
        ]
        # Enough per set that a page usually takes one round, little enough that a page of
        # one big set beside hundreds of others does not read hundreds of pages.
        limit = min(page_size + 1, max(32, 2 * (page_size + 1) // len(keys) + 1))
        out: list[tuple[Reservation, bytes]] = []
        cursor = after
        for _ in range(self.max_rounds):
            pipe = store.client.pipeline(transaction=False)
            for key in keys:
                if newest_first:
                    pipe.zrevrangebylex(key, f"({cursor}" if cursor else "+", "-", 0, limit)
                else:
                    pipe.zrangebylex(key, f"({cursor}" if cursor else "-", "+", 0, limit)
            found = [[m.decode() for m in ms] for ms in await store._execute(pipe)]
            # Members past the end of a set cut short by the limit may have others before
            # them in that set: only those up to the nearest such end are certain.
            ends = [ms[-1] for ms in found if len(ms) == limit]
            members = sorted({m for ms in found for m in ms}, reverse=newest_first)
            if ends:
                end = max(ends) if newest_first else min(ends)
                members = [m for m in members if (m >= end if newest_first else m <= end)]
            if not members:
                return Page(out, "")
            ids = [m.partition("|")[2] for m in members]
            for member, data in zip(members, await store.load_reservations(ids), strict=True):
                if data is not None:  # else its retention ran out; the sweep removes it
                    r = decode_reservation(data)
                    if query.matches(r):
                        if len(out) == page_size:
                            return Page(out, encode_token(cursor, newest_first))
                        out.append((r, data))
                cursor = member
            if not ends:
                return Page(out, "")
        return Page(out, encode_token(cursor, newest_first))

    async def sweep(self, now_ms: int, limit: int = 500) -> int:
        """Remove the index entries of terminal records whose retention ran out (up to limit
        per owned partition); returns how many records' entries were removed. Raises
        Unavailable, Fenced."""
        ks, store = self._ks, self._store
        owned = sorted(store.epochs)
        pipe = store.client.pipeline(transaction=False)
        for p in owned:
            pipe.zrangebyscore(ks.index_drops(p), "-inf", now_ms, start=0, num=limit)
        due = [
            (p, [r.decode() for r in rids])
            for p, rids in zip(owned, await store._execute(pipe), strict=True)
            if rids
        ]
        if not due:
            return 0
        pipe = store.client.pipeline(transaction=False)
        for p, rids in due:
            pipe.hmget(ks.index_terminal(p), rids)
        calls: list[tuple[list[str], list[Any]]] = []
        for (p, rids), entries in zip(due, await store._execute(pipe), strict=True):
            keys = [ks.epoch(p), ks.index_drops(p), ks.index_terminal(p)]
            args: list[Any] = [store.epochs[p], now_ms]
            for rid, e in zip(rids, entries, strict=True):
                lines = e.decode().split("\n") if e is not None else [""]
                keys.append(ks.reservation(p, rid))
                keys += lines[1:]
                args += (rid, e if e is not None else "", len(lines) - 1)
            calls.append((keys, args))
        return sum(await self._run(self._sweep_sha, SWEEP_SCRIPT, calls))

    async def backfill(self, batch: int = 1000) -> int:
        """Index the records of the owned partitions not yet marked done (records stored
        before the indexes existed), then mark them; returns the records indexed. One SCAN of
        the record keys for all of them (a crash before the end: done again, idempotently).
        Raises Unavailable, Fenced."""
        ks, store = self._ks, self._store
        owned = sorted(store.epochs)
        pipe = store.client.pipeline(transaction=False)
        for p in owned:
            pipe.hexists(ks.meta, f"rix:p{p}")
        todo = {p for p, done in zip(owned, await store._execute(pipe), strict=True) if not done}
        if not todo:
            return 0
        total = 0
        match = _glob_escape(f"{ks.prefix}:{{p") + "*}:res:*"
        cursor = 0
        while True:
            try:
                async with asyncio.timeout(store.command_timeout):
                    cursor, names = await store.client.scan(cursor, match=match, count=batch)
            except (RedisError, OSError, TimeoutError) as exc:
                raise Unavailable(f"redis scan failed: {exc!r}") from exc
            by_partition: dict[int, list[str]] = {}
            for n in names:
                name = n.decode() if isinstance(n, bytes) else n
                p = self._partition_of(name)
                if p in todo:
                    by_partition.setdefault(p, []).append(name)
            for p, found in sorted(by_partition.items()):
                total += await self._backfill_keys(p, found)
            if int(cursor) == 0:
                break
        pipe = store.client.pipeline(transaction=False)
        pipe.hset(ks.meta, mapping={f"rix:p{p}": 1 for p in sorted(todo)})
        await store._execute(pipe)
        log.info("reservation index: %d partitions backfilled (%d records)", len(todo), total)
        return total

    def _partition_of(self, name: str) -> int:
        """The partition of a key "<prefix>:{p<n>}:...", -1 when it names none."""
        tag = name[len(self._ks.prefix) + 1 :].partition("}")[0]
        return int(tag[2:]) if tag.startswith("{p") and tag[2:].isdigit() else -1

    async def _backfill_keys(self, p: int, names: Sequence[str]) -> int:
        pipe = self._store.client.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
            pipe.pttl(name)
        found = await self._store._execute(pipe)
        return await self.index_read(
            p, [(n, d, int(t)) for n, d, t in zip(names, found[::2], found[1::2], strict=True)]
        )

    async def index_read(self, p: int, read: Sequence[tuple[str, bytes | None, int]]) -> int:
        """Index records of partition p as read: (record key, stored value or None, its PTTL
        in ms); those written since they were read are left to the flush that wrote them (one
        script call). Returns how many were indexed."""
        ks, store = self._ks, self._store
        now_ms = round(self._clock() * 1000)
        keys = [ks.epoch(p), ks.index_drops(p), ks.index_terminal(p)]
        args: list[Any] = [store.epochs[p]]
        for name, data, ttl in read:
            if data is None:
                continue
            r = decode_reservation(data)
            write = index_write(ks, r, (), now_ms, max(ttl, 0))
            keys.append(name)
            keys += write.add
            args += (
                r.reservation_id, data[1:9], write.member, len(write.add),
                write.drop_at if ttl >= 0 else "", write.entries,
            )  # fmt: skip
        if len(keys) == 3:
            return 0
        return sum(await self._run(self._backfill_sha, BACKFILL_SCRIPT, [(keys, args)]))

    async def _run(
        self, sha: str, script: str, calls: list[tuple[list[str], list[Any]]]
    ) -> list[int]:
        """Script calls in one pipeline (loading the script when Redis lost it)."""
        store = self._store
        for attempt in (1, 2):
            pipe = store.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            try:
                async with asyncio.timeout(store.command_timeout):
                    results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError) as exc:
                raise Unavailable(f"redis index script failed: {exc!r}") from exc
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                try:
                    async with asyncio.timeout(store.command_timeout):
                        await store.client.script_load(script)
                except (RedisError, OSError, TimeoutError) as exc:
                    raise Unavailable(f"redis script load failed: {exc!r}") from exc
                continue
            out = []
            for r in results:
                if isinstance(r, ResponseError) and str(r).startswith("FENCED"):
                    raise Fenced(str(r))
                if isinstance(r, Exception):
                    raise Unavailable(f"redis index script failed: {r}")
                out.append(int(r))
            return out
        raise AssertionError("not reached")
