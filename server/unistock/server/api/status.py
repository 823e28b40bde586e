"""AdminService.GetServerStatus (`unistock status`): what one server process sees of itself,
of the stores' edge agents and of the change feed's durable consumers.

Everything is read from the server's own state (no Prometheus registry is read) except two
Redis reads made per call: a PING (health) and, per owned partition, the feed consumers'
cursors with what the stream holds after each (FEED_SCRIPT), so that the lag of a consumer
running in another process (unistock-ledger) is computed here, as of the call.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import RedisError

from unistock.server.domain import Unavailable
from unistock.server.mqtt.bounded import AgentStatuses
from unistock.server.persistence.feed import parse_feed_id
from unistock.v1 import admin_pb2 as apb

if TYPE_CHECKING:
    from unistock.server.app.server import UnistockServer

#: A partition whose consumer's cursor carries no entry number is counted up to this many
#: entries behind (the count is then a lower bound).
COUNT_CAP = 10_000

FEED_SCRIPT = """
-- KEYS: cursors hash, feed stream.  ARGV: count cap
-- {name, first unread entry id or "", entries behind, 1 if exact else 0, ...} for every
-- consumer with a cursor in the partition. A cursor "<id>/<ordinal>" (ordinal = the entry's
-- number among every entry ever added) gives an exact count (added - ordinal, trimmed
-- entries included); a bare "<id>" is counted with XRANGE up to the cap.
local added = 0
local exists = redis.call('EXISTS', KEYS[2]) == 1
if exists then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
end
local out = {}
local cursors = redis.call('HGETALL', KEYS[1])
for i = 1, #cursors, 2 do
  local id, ordinal = string.match(cursors[i + 1], '^([^/]*)/?(%d*)$')
  local first, behind, exact = '', 0, 1
  if exists and id then
    local cap = tonumber(ARGV[1])
    local after = redis.call('XRANGE', KEYS[2], '(' .. id, '+', 'COUNT',
                             ordinal ~= '' and 1 or cap + 1)
    if #after > 0 then first = after[1][1] end
    if ordinal ~= '' then
      behind = math.max(0, added - tonumber(ordinal))
    else
      behind = math.min(#after, cap)
      if #after > cap then exact = 0 end
    end
  end
  table.insert(out, cursors[i])
  table.insert(out, first)
  table.insert(out, behind)
  table.insert(out, exact)
end
return out
"""


def _timestamp(unix: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


def _version() -> str:
    try:
        return importlib.metadata.version("unistock")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


@dataclass(slots=True)
class _Consumer:
    first_unread_ms: int | None = None
    behind: int = 0
    exact: bool = True
    partitions: set[int] = field(default_factory=set)


class ServerStatusReport:
    """Builds ServerStatus answers from a running UnistockServer."""

    def __init__(self, server: UnistockServer) -> None:
        self.server = server
        self.version = _version()
        self._script = server.store.client.register_script(FEED_SCRIPT)
        #: A cursor without its entry's number is counted up to this many entries behind.
        self.count_cap = COUNT_CAP

    async def build(self) -> apb.ServerStatus:
        """The status as of now; never raises for Redis being down (it says so)."""
        srv = self.server
        now, mono = time.time(), time.monotonic()
        out = apb.ServerStatus(
            version=self.version,
            at=_timestamp(now),
            uptime_seconds=max(0.0, mono - srv.started_monotonic),
            started_at=_timestamp(now - (mono - srv.started_monotonic)),
        )
        self._health(out.health, mono)
        await self._redis(out)
        ks = srv.store.keyspace
        out.partitions.count = ks.partitions
        out.partitions.owned.extend(sorted(srv.store.epochs))
        directory = srv.inventory.positions
        out.positions.resident = len(directory)
        out.positions.max_resident = directory.max_resident
        out.positions.passivated = directory.passivated
        out.positions.activated = directory.activated
        out.stores.extend(self._stores(now))
        w = out.watch_subscribers
        w.availability = srv.hub.subscribers
        w.network = srv.network_hub.subscribers
        w.reservations = srv.service.reservation_hub.subscribers
        w.events = srv.event_hub.subscribers if srv.event_hub is not None else 0
        h = out.health
        h.serving = srv.serving and h.redis_reachable and (h.mqtt_connected or not h.mqtt_enabled)
        return out

    def _health(self, h: apb.Health, mono: float) -> None:
        srv = self.server
        last = srv.commit.last_flushed
        h.last_flush_age_seconds = -1.0 if last is None else max(0.0, mono - last)
        h.mqtt_enabled = srv.ingestor is not None
        h.mqtt_connected = srv.ingestor is not None and srv.ingestor.connected.is_set()

    async def _redis(self, out: apb.ServerStatus) -> None:
        """PING, then the feed consumers (both within the Redis timeout)."""
        srv = self.server
        try:
            async with asyncio.timeout(srv.settings.redis_timeout_s):
                await srv.store.client.ping()
                consumers = await self._consumers()
        except (RedisError, OSError, TimeoutError, Unavailable) as exc:
            out.health.redis_reachable = False
            out.health.redis_error = str(exc) or type(exc).__name__
            return
        out.health.redis_reachable = True
        now_ms = time.time() * 1000
        owned = len(self.server.store.epochs)
        for name in sorted(consumers):
            c = consumers[name]
            lag = (
                0.0 if c.first_unread_ms is None else max(0.0, (now_ms - c.first_unread_ms) / 1000)
            )
            out.feed_consumers.append(
                apb.FeedConsumer(
                    name=name,
                    lag_seconds=lag,
                    entries_behind=c.behind,
                    entries_behind_at_least=not c.exact,
                    partitions_without_cursor=owned - len(c.partitions),
                )
            )

    async def _consumers(self) -> dict[str, _Consumer]:
        store = self.server.store
        ks = store.keyspace
        owned = sorted(store.epochs)
        pipe = store.client.pipeline(transaction=False)
        for p in owned:
            await self._script(
                keys=[ks.feed_cursors(p), ks.feed(p)], args=[self.count_cap], client=pipe
            )
        found: dict[str, _Consumer] = {}
        for p, reply in zip(owned, await pipe.execute(), strict=True):
            values: list[Any] = list(reply)
            for i in range(0, len(values), 4):
                name, first, behind, exact = values[i : i + 4]
                c = found.setdefault(name.decode(errors="replace"), _Consumer())
                c.partitions.add(p)
                c.behind += int(behind)
                c.exact = c.exact and bool(int(exact))
                if first:
                    ms = parse_feed_id(first)[0]
                    if c.first_unread_ms is None or ms < c.first_unread_ms:
                        c.first_unread_ms = ms
        return found

    def _stores(self, now: float) -> list[apb.StoreAgent]:
        srv = self.server
        master = srv.master
        ingestor, liveness = srv.ingestor, srv.liveness
        statuses = ingestor.statuses if ingestor is not None else AgentStatuses()
        ids = {loc.store_id for loc in master.locations.values() if loc.store_id}
        ids.update(statuses)
        if liveness is not None:
            ids.update(liveness.stores())
        stale = self._stale_networks(ids)
        out = []
        for store_id in sorted(ids):
            a = apb.StoreAgent(store_id=store_id)
            status = statuses.get(store_id)
            if status is not None:
                a.state = status.state
                a.source_id = status.source_id
                a.outbox_depth = status.outbox_depth
                a.last_acked_seq = status.last_acked_seq
                a.oldest_unacked_age_seconds = status.oldest_unacked_age_seconds
                a.rejected_unresolved = status.rejected_unresolved
                if status.HasField("last_rejected_at"):
                    a.last_rejected_at.CopyFrom(status.last_rejected_at)
                if status.HasField("at"):
                    a.status_at.CopyFrom(status.at)
            heard = liveness.last_heard(store_id) if liveness is not None else None
            if heard is not None:
                at, assumed = heard
                a.last_heard.CopyFrom(_timestamp(at))
                a.has_been_heard = not assumed
                a.silent_seconds = max(0.0, now - at)
            a.stale_networks.extend(sorted(stale.get(store_id, ())))
            a.stale = bool(a.stale_networks)
            out.append(a)
        return out

    def _stale_networks(self, stores: set[str]) -> dict[str, set[str]]:
        """store -> the networks it is stale for now, as the network index decides
        (StoreLiveness.stale with each network's staleness limit)."""
        live = self.server.liveness
        out: dict[str, set[str]] = {}
        if live is None:
            return out
        master = self.server.master
        for network in master.networks.values():
            if network.staleness_limit <= 0:
                continue
            for loc in network.location_ids:
                store = master.store_of(loc)
                if (
                    store is not None
                    and store in stores
                    and live.stale(store, network.staleness_limit)
                ):
                    out.setdefault(store, set()).add(network.network_id)
        return out
