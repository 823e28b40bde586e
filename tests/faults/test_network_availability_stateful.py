"""F18 (issue 10 item 1): network availability equals the oracle after every step.

A hypothesis state machine drives a real server on a real Redis (and its SQLite master data)
with movements, reservations and releases, safety stock changes (per position and a location's
default), locations joining and leaving networks, stores going silent past web's staleness
limit and heard from again (their locations leave and rejoin web's sums, counted as stale),
web's stale policy switched between EXCLUDE and DISCOUNT at any percent (stale members then
count at that share of their available), restarts, and positions passivated all the time
(max_resident=2). After every step, for every network and SKU, GetNetworkAvailability equals
the oracle: the sum of GetAvailability's available over the network's fresh members plus, under
DISCOUNT, each stale member's available * percent // 100 (each member's level is durable when
it is answered); and a WatchNetworkAvailability stream, resumed with its known versions after
every restart, converges to the same levels.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.faults.machines import RealServer, collect, run_machine
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.actors.liveness import StoreLiveness
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

SKUS = ("A", "B")
LOCS = ("L1", "L2", "L3")
NETWORKS = ("web", "market")
LIMIT = 60  # web's staleness limit, seconds


def _store(loc: str, **fields: Any) -> apb.Location:
    """A store location reported by the store of the same id."""
    return apb.Location(location_id=loc, type=apb.STORE, store_id=loc, **fields)


KEYS = [(s, loc) for s in SKUS for loc in LOCS]


class NetworkMachine(RealServer, RuleBasedStateMachine):
    runs: ClassVar[int] = 0
    server_settings: ClassVar[dict[str, Any]] = {"max_resident": 2}  # passivated all the time

    def __init__(self) -> None:
        super().__init__()
        self.empty_redis()
        NetworkMachine.runs += 1
        self.data_dir = self.tmp / f"run-{self.runs}"  # a fresh SQLite per example
        self.srv: UnistockServer | None = None
        self.client: UnistockClient | None = None
        self.seq = 0
        self.rid = 0
        self.active: list[str] = []
        self.members: dict[str, set[str]] = {"web": {"L1", "L2"}, "market": {"L3"}}
        #: Stores (= locations) silent past web's staleness limit; market is never stale.
        self.silent: set[str] = set()
        #: web's stale policy: None EXCLUDE, else DISCOUNT at this percent
        self.discount: int | None = None
        self.now = 1000.0
        #: (network, sku) -> (version, available, locations) as the watch stream last said
        self.watched: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.watcher: asyncio.Task[None] | None = None
        self.run(self._start())
        self.run(self.c.upsert_locations([_store(loc) for loc in LOCS]))
        self.run(self._networks())
        self._watch()

    async def _networks(self) -> None:
        await self.c.upsert_networks(
            [
                apb.Network(
                    network_id=n,
                    location_ids=sorted(m),
                    staleness_limit_seconds=LIMIT if n == "web" else 0,
                    stale_policy=(
                        apb.Network.DISCOUNT
                        if n == "web" and self.discount is not None
                        else apb.Network.EXCLUDE
                    ),
                    stale_discount_percent=(self.discount or 0) if n == "web" else 0,
                )
                for n, m in self.members.items()
            ]
        )

    async def _start(self) -> None:
        await super()._start()
        # Store liveness on the machine's clock (the server has no MQTT here): every store is
        # heard of at the start, as after any restart.
        assert self.srv is not None
        self.liveness = StoreLiveness(lambda: self.now)
        self.srv.networks.liveness = self.liveness
        self.silent = set()

    def send(self, movements: list[pb.Movement]) -> None:
        for m in movements:
            self.seq += 1
            m.seq = self.seq
        batch = pb.MovementBatch(source_id="bo", movements=movements)
        [ack] = self.run(collect(self.c.apply_movements([batch])))
        assert not ack.rejections, ack

    # -- rules -----------------------------------------------------------------------------

    @initialize(stock=st.lists(st.integers(0, 9), min_size=len(KEYS), max_size=len(KEYS)))
    def receive(self, stock: list[int]) -> None:
        moves = [
            pb.Movement(sku=s, location_id=loc, type=pb.RECEIPT, quantity=q)
            for (s, loc), q in zip(KEYS, stock, strict=True)
            if q
        ]
        if moves:
            self.send(moves)

    @rule(
        moves=st.lists(
            st.tuples(
                st.sampled_from(["RECEIPT", "SALE"]), st.sampled_from(KEYS), st.integers(1, 5)
            ),
            min_size=1,
            max_size=3,
        )
    )
    def movements(self, moves: list[tuple[str, tuple[str, str], int]]) -> None:
        self.send(
            [
                pb.Movement(sku=k[0], location_id=k[1], type=pb.MovementType.Value(t), quantity=q)
                for t, k, q in moves
            ]
        )

    @rule(key=st.sampled_from(KEYS), q=st.integers(1, 4))
    def reserve(self, key: tuple[str, str], q: int) -> None:
        self.rid += 1
        rid = f"r{self.rid}"
        try:
            self.run(self.c.reserve(rid, [(key[0], key[1], q)], kind="ORDER"))
        except UnistockClientError:
            return
        self.active.append(rid)

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.active))
        self.active.remove(rid)
        self.run(self.c.release(rid))

    @rule(key=st.sampled_from(KEYS), units=st.one_of(st.none(), st.integers(0, 4)))
    def safety_stock(self, key: tuple[str, str], units: int | None) -> None:
        row = apb.SafetyStock(sku=key[0], location_id=key[1], units=units or 0, clear=units is None)
        self.run(self.c.set_safety_stock([row]))

    @rule(loc=st.sampled_from(LOCS), units=st.integers(0, 3))
    def default_safety_stock(self, loc: str, units: int) -> None:
        self.run(self.c.upsert_locations([_store(loc, default_safety_stock=units)]))

    @rule(network=st.sampled_from(NETWORKS), loc=st.sampled_from(LOCS))
    def toggle_member(self, network: str, loc: str) -> None:
        self.members[network] ^= {loc}
        self.run(self._networks())

    @rule(discount=st.one_of(st.none(), st.sampled_from([0, 33, 50, 100])))
    def web_stale_policy(self, discount: int | None) -> None:
        self.discount = discount
        self.run(self._networks())

    @rule(loc=st.sampled_from(LOCS))
    def store_goes_silent(self, loc: str) -> None:
        """Time passes beyond web's limit; every store but this one (and those already
        silent) is heard from meanwhile."""
        self.now += LIMIT + 1
        for other in LOCS:
            if other != loc and other not in self.silent:
                self.liveness.heard(other)
        self.silent.add(loc)
        assert self.srv is not None
        self.run(self.srv.networks.sync())

    @precondition(lambda self: self.silent)
    @rule(data=st.data())
    def store_heard_again(self, data: st.DataObject) -> None:
        loc = data.draw(st.sampled_from(sorted(self.silent)))
        self.liveness.heard(loc)
        self.silent.discard(loc)
        assert self.srv is not None
        self.run(self.srv.networks.sync())

    @rule()
    def restart(self) -> None:
        self.run(self._stop())
        self.run(self._start())
        self._watch()

    # -- the watch stream ------------------------------------------------------------------

    def _watch(self) -> None:
        """(Re)start following every network, resuming from the versions already seen."""
        if self.watcher is not None:
            self.watcher.cancel()
        self.watcher = self.loop.create_task(self._follow(self.c))

    async def _follow(self, c: UnistockClient) -> None:
        known = {(sku, net): v for (net, sku), (v, _, _) in self.watched.items()}
        with contextlib.suppress(UnistockClientError):  # the server stopped: resumed later
            async for msg in c.watch_networks(list(NETWORKS), known_versions=known):
                for lv in msg.levels:
                    key = (lv.network, lv.sku)
                    if key not in self.watched or self.watched[key][0] < lv.version:
                        self.watched[key] = (lv.version, lv.available, lv.locations)

    def teardown(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.run(asyncio.gather(self.watcher, return_exceptions=True))
        super().teardown()

    # -- the invariant ---------------------------------------------------------------------

    @invariant()
    def networks_equal_the_oracle(self) -> None:
        levels = {
            (lv.sku, lv.location_id): lv for lv in self.run(self.c.get_availability(keys=KEYS))
        }
        want: dict[tuple[str, str], tuple[int, int, int]] = {}
        for network, members in self.members.items():
            stale = members & self.silent if network == "web" else set()
            counted = members - stale
            got = self.run(self.c.get_network_availability(network, list(SKUS)))
            for lv in got:
                oracle = sum(levels[lv.sku, loc].available for loc in counted)
                if network == "web" and self.discount is not None:
                    oracle += sum(
                        levels[lv.sku, loc].available * self.discount // 100 for loc in stale
                    )
                assert (lv.available, lv.locations, lv.stale_locations) == (
                    oracle,
                    len(counted),
                    len(stale),
                ), (network, lv, {loc: levels[lv.sku, loc] for loc in members}, stale)
                if lv.version:
                    want[network, lv.sku] = (lv.version, lv.available, lv.locations)
        for _ in range(100):  # the stream converges to the same levels
            if all(self.watched.get(k) == v for k, v in want.items()):
                return
            self.run(asyncio.sleep(0.02))
        assert {k: self.watched.get(k) for k in want} == want


def test_network_availability_equals_the_oracle(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_machine(NetworkMachine, tmp_path_factory, "f18", max_examples=40, steps=30)
