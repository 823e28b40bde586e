"""Network availability (domain.md "Availability for a channel"): per (network, SKU), the sum of
the durable `available` of the network's member locations, kept up to date incrementally.

Every group-commit flush reports, per position written, how much its durable available changed
(`DurableLevel.available_delta`, from `Position.durable_available`); the index adds each change
to the networks of the position's location, and to `where` (per SKU, the locations where units
are available, for FindStock): only positions with units available at a network's member
locations have an entry.

A location joins or leaves a network's sum (at start-up, when master data changes its
membership) by a scan of its stored positions, merged with the durable levels that flushes
report meanwhile (the highest version of each position wins), and applied in one synchronous
step once the flush in flight at the end of the scan has reported: so the sums never count a
change twice and never miss one (see `_scan`).

A member whose store is stale (`StoreLiveness`, the network's staleness limit) leaves the sum
under the network's EXCLUDE policy; under DISCOUNT it stays counted at the network's share of
its available (`Network.share`), re-weighted in one synchronous step from `where` when it goes
stale or comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from unistock.server.actors.liveness import StoreLiveness
from unistock.server.actors.masterdata import MasterData
from unistock.server.domain import StockKey
from unistock.server.domain.masterdata import Location, Network, StalePolicy
from unistock.server.persistence.codec import (
    OUT,
    level_class,
    network_level_change,
    network_level_value,
    split_position,
    store_status_change,
    store_status_value,
    varint,
)
from unistock.server.persistence.group_commit import DurableLevel, GroupCommit
from unistock.server.persistence.keys import parse_position_field
from unistock.server.persistence.store import RedisStore, stored_version
from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)

#: (network, sku)
NetKey = tuple[str, str]
#: How a member is counted in a network: None in full, else (stale) by that network's share.
Weight = Network | None


def _available(level: bytes) -> int:
    return pb.StockLevel.FromString(level).available


class NetworkIndex:
    """The per-(network, SKU) available sums and their versions."""

    def __init__(
        self,
        store: RedisStore,
        commit: GroupCommit,
        master: MasterData,
        publish: Callable[[list[tuple[NetKey, int, bytes]]], None] | None = None,
    ) -> None:
        self._store = store
        #: Called with the (sku, network) levels that changed: ((sku, network), version,
        #: WatchNetworkAvailabilityResponse `levels` entry) (a WatchHub's publish_entries).
        self.publish = publish
        #: Versions start at generation << 32; the generation grows with every start (stored in
        #: Redis), so a level's version grows across restarts too.
        self._base = 0
        self._commit = commit
        self._master = master
        self.totals: dict[NetKey, int] = defaultdict(int)
        self.versions: dict[NetKey, int] = defaultdict(int)
        #: network -> the member locations counted in its sums
        self.counted: dict[str, set[str]] = defaultdict(set)
        #: location -> the networks whose sums count it
        self._networks_of: dict[str, tuple[str, ...]] = {}
        #: locations being scanned -> sku -> (version, available) reported meanwhile
        self._capture: dict[str, dict[str, tuple[int, int]]] = {}
        self._lock = asyncio.Lock()
        #: Store liveness (None: nothing is ever stale, e.g. without MQTT ingestion).
        self.liveness: StoreLiveness | None = None
        #: network -> (stale policy, discount percent) as last logged
        self._policies: dict[str, tuple[StalePolicy, int]] = {}
        #: whether liveness was restored from Redis (once, before the first sync)
        self._restored = False
        #: network -> member locations whose store is stale (left out of its sums, or counted
        #: discounted: `_discounted`)
        self.stale: dict[str, set[str]] = defaultdict(set)
        #: network -> its stale members counted at its DISCOUNT share -> the network as it was
        #: when they were weighted (its stale_discount_percent)
        self._discounted: dict[str, dict[str, Network]] = {}
        #: sku -> location -> durable available > 0, for every location counted in some
        #: network: where units are (FindStock), without reading positions.
        self.where: dict[str, dict[str, int]] = {}
        #: (network, mode) -> (master-data revision, stale members, members offering the mode)
        self._eligible: dict[tuple[str, int], tuple[int, frozenset[str], dict[str, Location]]] = {}
        #: Set once the sums cover every member location (after the start-up sync).
        self.ready = asyncio.Event()
        #: store -> online, as last staged for the feed (`_stage_statuses`); empty after a
        #: start, so that the first sync stages every store's status
        self._store_online: dict[str, bool] = {}
        #: whether syncs stage store statuses: from the start-up sync on (liveness restored)
        self._statuses_on = False
        #: the revision of the last status staged (store or network level): above `_base`
        #: (this start's generation), so that revisions grow across restarts whatever the wall
        #: clock does
        self._status_rev = 0
        #: (network, sku) -> its stock class (codec.level_class) as last staged for the feed
        #: (NETWORK_* events), only when not OUT (absent: out of stock)
        self._class: dict[NetKey, int] = {}
        #: whether level changes stage their class changes: from the end of the start-up sync
        #: on, once the stored classes were compared with the sums (`_start_classes`)
        self._classes_on = False
        #: network -> the low_stock_threshold its classes were last computed with
        self._thresholds: dict[str, int] = {}
        commit.listeners.append(self.on_durable)

    # -- reads ---------------------------------------------------------------------------------

    @property
    def master(self) -> MasterData:
        """The master data the networks come from."""
        return self._master

    def known(self, network: str) -> bool:
        """Whether master data has this network."""
        return network in self._master.networks

    def eligible(
        self, network_id: str, mode: int, offers: Callable[[Location, int], bool]
    ) -> dict[str, Location]:
        """The members of a network (of master data) that offer a fulfilment mode, by id: the
        stale ones too under a DISCOUNT policy (`stale` tells them), else only fresh ones;
        cached until master data or the network's stale members change."""
        stale = frozenset(self.stale.get(network_id, ()))
        cached = self._eligible.get((network_id, mode))
        if cached is not None and cached[0] == self._master.revision and cached[1] == stale:
            return cached[2]
        network = self._master.networks[network_id]
        left_out = stale if network.stale_policy is StalePolicy.EXCLUDE else frozenset()
        found = {
            loc_id: loc
            for loc_id in network.location_ids
            if loc_id not in left_out
            and (loc := self._master.locations.get(loc_id)) is not None
            and offers(loc, mode)
        }
        self._eligible[network_id, mode] = (self._master.revision, stale, found)
        return found

    def level(self, network: str, sku: str) -> tuple[int, int, int]:
        """(available, version, fresh locations counted in full) of a SKU in a network
        (version 0: never seen)."""
        key = (network, sku)
        return (
            self.totals.get(key, 0),
            self.versions.get(key, 0),
            len(self.counted.get(network, ())) - len(self._discounted.get(network, ())),
        )

    def message(self, network: str, sku: str) -> pb.NetworkLevel:
        """The wire NetworkLevel of a SKU in a network."""
        available, version, locations = self.level(network, sku)
        return pb.NetworkLevel(
            sku=sku,
            network=network,
            available=available,
            locations=locations,
            stale_locations=len(self.stale.get(network, ())),
            version=version,
        )

    def skus_of(self, network: str) -> list[str]:
        """Every SKU the network has a level of, sorted."""
        return sorted(sku for net, sku in self.versions if net == network)

    def entry(self, network: str, sku: str) -> bytes:
        """The serialised `levels` entry (field 1) of a watch response for a network level."""
        msg = self.message(network, sku).SerializeToString()
        return b"\x0a" + varint(len(msg)) + msg

    def _bump(self, key: NetKey, changed: set[NetKey]) -> None:
        self.versions[key] = max(self.versions.get(key, 0), self._base) + 1
        changed.add(key)

    def _published(self, changed: set[NetKey]) -> None:
        if changed and self._classes_on:
            self._classify(changed)
        if changed and self.publish is not None:
            self.publish(
                [
                    ((sku, net), self.versions[net, sku], self.entry(net, sku))
                    for net, sku in changed
                ]
            )

    # -- the flush listener (synchronous) ------------------------------------------------------

    def on_durable(self, levels: list[DurableLevel]) -> None:
        """Add each durable change of available to the networks of its location (a stale
        member's by its network's share)."""
        networks_of, capture, discounted = self._networks_of, self._capture, self._discounted
        changed: set[NetKey] = set()
        for d in levels:
            sku, loc = d.key
            if capture:
                seen = capture.get(loc)
                if seen is not None:
                    before = seen.get(sku)
                    if before is None or before[0] < d.version:
                        seen[sku] = (d.version, _available(d.level))
            if d.available_delta:
                nets = networks_of.get(loc, ())
                for net in nets:
                    key = (net, sku)
                    delta = d.available_delta
                    weight = discounted.get(net, {}).get(loc) if discounted else None
                    if weight is not None:  # a stale member counted at a share
                        here = self.where.get(sku)
                        was = 0 if here is None else here.get(loc, 0)
                        delta = weight.share(was + delta, True) - weight.share(was, True)
                        if not delta:
                            continue
                    self.totals[key] += delta
                    self._bump(key, changed)
                if nets:
                    self._place(sku, loc, d.available_delta)
        self._published(changed)

    def _place(self, sku: str, loc: str, delta: int) -> None:
        """Change what `where` says of a position by delta."""
        here = self.where.get(sku)
        units = (0 if here is None else here.get(loc, 0)) + delta
        if units > 0:
            if here is None:
                here = self.where[sku] = {}
            here[loc] = units
        elif here is not None:
            here.pop(loc, None)
            if not here:
                del self.where[sku]

    # -- membership ----------------------------------------------------------------------------

    async def sync(self) -> None:
        """Make the counted members of every network, and how each counts, what master data
        and store liveness say (joins, leaves and re-weights, each exact); raises Unavailable
        (the index stays as it was for the rest)."""
        async with self._lock:
            wanted: dict[str, dict[str, Weight]] = defaultdict(dict)
            stale = self._stale_members()
            self._log_staleness(stale)
            self._stage_statuses(stale)
            for network in self._master.networks.values():
                net_id = network.network_id
                for loc in network.location_ids:
                    if loc not in stale.get(net_id, ()):
                        wanted[loc][net_id] = None
                    elif network.stale_policy is StalePolicy.DISCOUNT:
                        wanted[loc][net_id] = network
            self.stale = stale
            have: dict[str, dict[str, Weight]] = defaultdict(dict)
            for net_id, locs in self.counted.items():
                weights = self._discounted.get(net_id, {})
                for loc in locs:
                    have[loc][net_id] = weights.get(loc)
            joins, leaves, reweights = _membership_changes(wanted, have)
            changed: set[NetKey]
            for moves, sign in ((leaves, -1), (joins, +1)):  # leaves first, each scanned
                if moves:
                    found = await self._scan(moves)
                    changed = set()
                    for loc, nets in moves.items():
                        self._apply(loc, nets, found[loc], sign, changed)
                    self._settle({n for nets in moves.values() for n in nets}, changed)
            if reweights:  # from `where`, exact for counted members: no scan, no await
                found = self._held_at(set(reweights))
                changed = set()
                for loc, pairs in reweights.items():
                    self._apply(
                        loc, {n: old for n, (old, _) in pairs.items()}, found[loc], -1, changed
                    )
                    self._apply(
                        loc, {n: new for n, (_, new) in pairs.items()}, found[loc], +1, changed
                    )
                self._settle({n for pairs in reweights.values() for n in pairs}, changed)
            if self._classes_on:  # a network's threshold changed: its levels' classes may
                moved = set()
                for net, network in self._master.networks.items():
                    if self._thresholds.get(net) != network.low_stock_threshold:
                        self._thresholds[net] = network.low_stock_threshold
                        moved.add(net)
                if moved:
                    self._classify({k for k in self.versions if k[0] in moved})
            if joins or leaves or reweights:
                log.info(
                    "network availability: %d location joins, %d leaves, %d re-weighted",
                    len(joins),
                    len(leaves),
                    len(reweights),
                )
        self.ready.set()

    def _held_at(self, locations: set[str]) -> dict[str, dict[str, int]]:
        """location -> sku -> available > 0, from `where` (locations counted somewhere)."""
        out: dict[str, dict[str, int]] = {loc: {} for loc in locations}
        for sku, here in self.where.items():
            for loc in locations.intersection(here):
                out[loc][sku] = here[loc]
        return out

    def _apply(
        self,
        loc: str,
        nets: dict[str, Weight],
        found: dict[str, int],
        sign: int,
        changed: set[NetKey],
    ) -> None:
        """Add (sign +1) or remove (-1) a location's levels to/from networks, each at its
        weight, and its membership; the levels changed are added to `changed` (see _settle)."""
        was_counted = loc in self._networks_of
        for net, weight in nets.items():
            for sku, available in found.items():
                share = available if weight is None else weight.share(available, True)
                if share:
                    key = (net, sku)
                    self.totals[key] += sign * share
                    self._bump(key, changed)
            if sign > 0:
                self.counted[net].add(loc)
                if weight is not None:
                    self._discounted.setdefault(net, {})[loc] = weight
            else:
                self.counted[net].discard(loc)
                weights = self._discounted.get(net)
                if weights is not None:
                    weights.pop(loc, None)
                    if not weights:
                        del self._discounted[net]
        networks = {n for n, locs in self.counted.items() if loc in locs}
        if networks:
            self._networks_of[loc] = tuple(sorted(networks))
        else:
            self._networks_of.pop(loc, None)
        if bool(networks) != was_counted:  # first network joined / last one left
            for sku, available in found.items():
                if available > 0:
                    self._place(sku, loc, available if networks else -available)

    def _settle(self, networks: set[str], changed: set[NetKey]) -> None:
        """After joins and leaves: every level of these networks changed (their number of
        locations did), once per sync however many locations joined; publish them."""
        for key in [k for k in self.versions if k[0] in networks and k not in changed]:
            self._bump(key, changed)
        self._published(changed)

    def _stale_members(self) -> dict[str, set[str]]:
        """network -> its members whose store is stale for its staleness limit. Only locations
        with a store_id in master data (reported by a store's agent) can be stale."""
        out: dict[str, set[str]] = defaultdict(set)
        live = self.liveness
        if live is None:
            return out
        for known in self._master.locations.values():  # silent since the server knew of it
            if known.store_id:
                live.know(known.store_id)
        for network in self._master.networks.values():
            if network.staleness_limit <= 0:
                continue
            for loc in network.location_ids:
                store = self._master.store_of(loc)
                if store is not None and live.stale(store, network.staleness_limit):
                    out[network.network_id].add(loc)
        return out

    async def _scan(self, locations: Iterable[str]) -> dict[str, dict[str, int]]:
        """The latest durable available of every stored position of these locations.

        Flushes go on meanwhile: what they report for these locations is captured (from before
        the first read), the scan waits until the flush in flight at its end has reported, and
        the higher version of each position wins. Whatever is reported after this returns is a
        change on top of the value returned (the caller applies it before awaiting anything).
        """
        locs = set(locations)
        for loc in locs:
            self._capture[loc] = {}
        try:
            ks = self._store.keyspace
            found: dict[str, dict[str, tuple[int, int]]] = {loc: {} for loc in locs}
            partitions = sorted({ks.location_partition(loc) for loc in locs})
            async for chunk in self._store.scan_positions([(p, None) for p in partitions]):
                for field, value in chunk:
                    key: StockKey = parse_position_field(field.decode())
                    levels = found.get(key[1])
                    if levels is not None:
                        level, _ = split_position(value)
                        levels[key[0]] = (stored_version(value), _available(level))
            await self._commit.flushed()  # the flush in flight now has reported its levels
            out: dict[str, dict[str, int]] = {}
            for loc in locs:
                merged = found[loc]
                for sku, seen in self._capture[loc].items():
                    if sku not in merged or merged[sku][0] < seen[0]:
                        merged[sku] = seen
                out[loc] = {sku: available for sku, (_, available) in merged.items()}
            return out
        finally:
            for loc in locs:
                self._capture.pop(loc, None)

    async def run(self, retry: float = 1.0, every: float = 1.0) -> None:
        """The start-up sync (store liveness restored from Redis first), retried until Redis
        answers; then, every `every` s, the stores' last-heard times are saved, stores that
        became stale leave their networks' sums (or count discounted) and stores back (and
        caught up) count in full again. Master-data changes call sync themselves."""
        while True:
            try:
                if not self._base:
                    self._base = await self._store.next_generation("networks") << 32
                if self.liveness is not None and not self._restored:
                    self.liveness.restore(await self._store.load_heard())
                    self._restored = True
                self._statuses_on = True
                stored = await self._store.load_network_levels()
                await self.sync()
                self._start_classes(stored)  # before any flush reports: no await since the sync
                break
            except Exception as exc:  # Unavailable mostly; never leave the index unready
                log.warning("network availability not built yet: %r; retrying", exc)
                await asyncio.sleep(retry)
        while True:
            await asyncio.sleep(every)
            await self._save_liveness()
            if self._stale_members() != {n: s for n, s in self.stale.items() if s}:
                try:
                    await self.sync()
                except Exception as exc:
                    log.warning("network staleness not applied yet: %r", exc)

    async def _save_liveness(self) -> None:
        live = self.liveness
        if live is None:
            return
        changed = live.changed()
        try:
            await self._store.save_heard(changed)
        except Exception as exc:  # kept for the next round
            live.unsaved(changed)
            log.warning("store liveness not saved yet: %r", exc)

    def _stage_statuses(self, stale: dict[str, set[str]]) -> None:
        """Stage (GroupCommit.store_status_changed) the status of every store of master data
        whose status is not the one last staged: offline when one of its locations is a stale
        member of some network (stale: `_stale_members`), else online. The flush script makes a
        feed change (STORE_OFFLINE / STORE_ONLINE) only when the stored status differs, so the
        statuses staged at every start make no event unless a store changed meanwhile."""
        live = self.liveness
        if live is None or not self._statuses_on:
            return
        why: dict[str, str] = {}  # offline stores -> why (the first network by id)
        for net_id in sorted(stale):
            limit = self._master.networks[net_id].staleness_limit
            for loc in sorted(stale[net_id]):
                store = self._master.store_of(loc)
                if store is None or store in why:
                    continue
                silent, backlog = live.silent_for(store), live.backlog(store)
                why[store] = (
                    f"silent for {silent:.0f} s"
                    if silent > limit
                    else f"its agent reports a backlog of {backlog:.0f} s"
                ) + f", beyond network {net_id}'s staleness limit of {limit} s"
        stores = {loc.store_id for loc in self._master.locations.values() if loc.store_id}
        at_ms = int(time.time() * 1000)
        for store in sorted(stores):
            online = store not in why
            if self._store_online.get(store) == online:
                continue
            self._store_online[store] = online
            self._status_rev = revision = max(self._status_rev, self._base) + 1
            heard_ms = int(live.heard_at(store) * 1000)
            reason = "stale for none of its networks" if online else why[store]
            self._commit.store_status_changed(
                store,
                store_status_value(revision, online),
                store_status_change(revision, at_ms, store, online, heard_ms, reason),
            )

    # -- network stock classes (NETWORK_LOW_STOCK / OUT_OF_STOCK / BACK_IN_STOCK) -------------

    def _stage_class(self, key: NetKey, before: int, after: int, *, baseline: bool = False) -> None:
        """Stage a level's class change for the feed (GroupCommit.network_level_changed) and
        remember it as the level's class."""
        net, sku = key
        self._status_rev = revision = max(self._status_rev, self._base) + 1
        threshold = self._thresholds[net]
        self._commit.network_level_changed(
            net,
            sku,
            network_level_value(revision, after),
            network_level_change(
                revision,
                int(time.time() * 1000),
                self.message(net, sku),
                before,
                after,
                threshold,
            ),
            baseline=baseline,
        )
        if after == OUT:
            self._class.pop(key, None)
        else:
            self._class[key] = after

    def _classify(self, keys: Iterable[NetKey]) -> None:
        """Stage the class change of each level of keys whose class (its available against its
        network's low_stock_threshold, as the last sync applied it) is not the one last staged.
        Networks gone from master data are left alone."""
        networks, thresholds, classes = self._master.networks, self._thresholds, self._class
        for key in keys:
            network = networks.get(key[0])
            if network is None:
                continue
            threshold = thresholds.get(key[0])
            if threshold is None:  # a network new to master data (sync keeps them current)
                threshold = thresholds[key[0]] = network.low_stock_threshold
            after = level_class(self.totals.get(key, 0), threshold)
            before = classes.get(key, OUT)
            if after != before:
                self._stage_class(key, before, after)

    def _start_classes(self, stored: dict[NetKey, tuple[int, int]]) -> None:
        """After the start-up sync: compare every level's class with the one last published
        (stored: RedisStore.load_network_levels) and stage those that changed while the server
        was down (a store gone stale, a member or threshold changed); a level never published
        is staged as a baseline (published without an event: a first start after an upgrade
        floods no one). From then on every level change is classified."""
        thresholds = self._thresholds
        for net, network in self._master.networks.items():
            thresholds[net] = network.low_stock_threshold
        for key, (_, published) in stored.items():  # networks gone from master data left alone
            if published != OUT and key[0] in thresholds:
                self._class[key] = published
        for key in self.totals.keys() - stored.keys():
            if key[0] in thresholds:
                after = level_class(self.totals[key], thresholds[key[0]])
                if after != OUT:
                    self._stage_class(key, OUT, after, baseline=True)
        self._classify(stored)
        self._classes_on = True

    def _log_staleness(self, stale: dict[str, set[str]]) -> None:
        """Log each member that became stale or fresh, and what a stale member's units count
        for when its network's policy changed (whatever changed it: time passing, a store
        heard from, master data)."""
        for net, network in self._master.networks.items():
            now, before = stale.get(net, set()), self.stale.get(net, set())
            policy = (network.stale_policy, network.stale_discount_percent)
            counted = (
                f"counted at {network.stale_discount_percent} %"
                if network.stale_policy is StalePolicy.DISCOUNT
                else "left out"
            )
            was = self._policies.get(net)
            self._policies[net] = policy
            for loc in sorted(now):
                if loc not in before:
                    log.warning("network %s: %s is stale, its units are %s", net, loc, counted)
                elif was is not None and was != policy:
                    log.warning(
                        "network %s: stale policy changed: %s's units are now %s", net, loc, counted
                    )
            for loc in sorted(before - now):
                if loc in network.location_ids:
                    log.info(
                        "network %s: %s is no longer stale (heard from, or the network's limit "
                        "changed): its units count in full",
                        net,
                        loc,
                    )


def _weight_key(weight: Weight) -> int | None:
    return None if weight is None else weight.stale_discount_percent


def _membership_changes(
    wanted: dict[str, dict[str, Weight]], have: dict[str, dict[str, Weight]]
) -> tuple[
    dict[str, dict[str, Weight]],
    dict[str, dict[str, Weight]],
    dict[str, dict[str, tuple[Weight, Weight]]],
]:
    """(joins, leaves, re-weights): per location, the networks it joins (at their weight),
    leaves (at the weight it was counted at), and stays in at another weight (old, new)."""
    joins: dict[str, dict[str, Weight]] = {}
    leaves: dict[str, dict[str, Weight]] = {}
    reweights: dict[str, dict[str, tuple[Weight, Weight]]] = {}
    for loc, nets in wanted.items():
        had = have.get(loc, {})
        if new := {n: w for n, w in nets.items() if n not in had}:
            joins[loc] = new
        if moved := {
            n: (had[n], w)
            for n, w in nets.items()
            if n in had and _weight_key(had[n]) != _weight_key(w)
        }:
            reweights[loc] = moved
    for loc, nets in have.items():
        if gone := {n: w for n, w in nets.items() if n not in wanted.get(loc, {})}:
            leaves[loc] = gone
    return joins, leaves, reweights
