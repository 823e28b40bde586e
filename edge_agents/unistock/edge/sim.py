"""unistock-sim: a store simulator for demos and benchmarks.

Starts N real :class:`~unistock.edge.agent.StoreAgent` instances in-process and drives them over
their local gRPC intake exactly as tills and RFID readers would:

* each store is seeded with one RECEIPT per SKU;
* M till tasks per store record sales (mostly) and returns (~5 %) for random SKUs, with
  exponential (Poisson-process) inter-arrival times at ``--rate`` sales per second per till;
* every ``--count-every`` seconds each store runs an RFID count of a random SKU subset: the
  simulator reads the SGTIN-96 tag of every unit it believes is on the shelf (plus duplicate
  reads), using a generated ``gtin,sku`` catalogue.

The simulator keeps a model of every shelf (which serialised units are on it). Sales name the EPC
of the unit sold, so an RFID count is exact and the server's ``on_hand`` must end equal to the
model: anything lost or applied twice on the way shows as a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio

from unistock.client.config import DEFAULT_MQTT_URL, ClientConfig, ConfigError
from unistock.edge.agent import AgentSettings, StoreAgent
from unistock.edge.epc import decode_sgtin96, encode_sgtin96
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.v1 import inventory_pb2 as pb

__all__ = ["Summary", "main", "simulate"]

log = logging.getLogger(__name__)

COMPANY_PREFIX = "0614141"  # 7 digits: partition 5, item reference of 6 digits
_FILTER_POS_ITEM = 1
RETURN_SHARE = 0.05


def sku_name(i: int) -> str:
    """The SKU of the i-th simulated item."""
    return f"SKU-{i:05d}"


def item_reference(i: int) -> str:
    """The SGTIN item reference of the i-th item (indicator digit 0)."""
    return f"{i + 1:06d}"


def epc_for(i: int, serial: int) -> str:
    """The SGTIN-96 EPC (hex) of unit ``serial`` of the i-th item."""
    return encode_sgtin96(_FILTER_POS_ITEM, COMPANY_PREFIX, item_reference(i), serial)


def write_catalogue(path: Path, skus: int) -> Path:
    """Write the ``gtin,sku`` catalogue of the simulated items; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["gtin,sku"]
    for i in range(skus):
        lines.append(f"{decode_sgtin96(epc_for(i, 0)).gtin14},{sku_name(i)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class StoreSummary:
    """What the simulator did at one store, and what it expects the server to hold."""

    store_id: str
    sales: int = 0
    returns: int = 0
    counts: int = 0  # COUNT movements (one per SKU per session)
    count_sessions: int = 0
    tag_reads: int = 0
    skipped_sales: int = 0  # the chosen SKU's shelf was empty
    outbox_depth: int = -1  # after the drain wait
    #: movements recorded per SKU (each one version of the server's position)
    movements: Counter[str] = field(default_factory=Counter)
    #: units the simulator believes are on the shelf, per SKU
    expected_on_hand: dict[str, int] = field(default_factory=dict)


@dataclass
class Summary:
    """The whole run."""

    stores: list[StoreSummary]
    elapsed: float  # the whole run: seeding, trading and the drain wait
    drained: bool
    trading: float = 0.0  # seconds of trading (the --duration actually run)

    @property
    def sales(self) -> int:
        """Sales recorded at all stores."""
        return sum(s.sales for s in self.stores)

    @property
    def returns(self) -> int:
        """Returns recorded at all stores."""
        return sum(s.returns for s in self.stores)

    @property
    def counts(self) -> int:
        """COUNT movements recorded at all stores."""
        return sum(s.counts for s in self.stores)

    def render(self) -> str:
        """A human-readable report."""
        out = [
            f"sim: {len(self.stores)} stores, {self.elapsed:.1f}s: {self.sales} sales "
            f"({self.sales / max(self.trading, 1e-9):.0f}/s while trading), {self.returns} returns, "
            f"{self.counts} counts recorded; drained: {'yes' if self.drained else 'NO'}"
        ]
        for s in self.stores:
            out.append(
                f"  {s.store_id}: sales={s.sales} returns={s.returns} counts={s.counts} "
                f"(sessions={s.count_sessions}, reads={s.tag_reads}) "
                f"skipped={s.skipped_sales} outbox_depth={s.outbox_depth}"
            )
        return "\n".join(out)


class _Store:
    """One simulated store: its agent, its intake stub and the shelf model."""

    def __init__(self, agent: StoreAgent, skus: int, summary: StoreSummary) -> None:
        self.agent = agent
        self.skus = skus
        self.summary = summary
        self.shelf: list[list[int]] = [[] for _ in range(skus)]  # serials per SKU
        self.sold: list[list[int]] = [[] for _ in range(skus)]
        self.next_serial = [1] * skus
        # Held by a count session from StartCount to StopCount, and by a return from its RPC to
        # its shelf update, so that a count's reads cover exactly the units on the shelf.
        self.count_lock = asyncio.Lock()
        self.channel = aio.insecure_channel(f"127.0.0.1:{agent.intake_port}")
        self.stub = ipb_grpc.StoreIntakeStub(self.channel)

    def record(self, i: int) -> None:
        self.summary.movements[sku_name(i)] += 1

    async def seed(self, units: int) -> None:
        for i in range(self.skus):
            serials = list(range(self.next_serial[i], self.next_serial[i] + units))
            self.next_serial[i] += units
            await self.stub.RecordMovement(
                ipb.RecordMovementRequest(
                    device_id="sim-seed",
                    movement=pb.Movement(sku=sku_name(i), type=pb.RECEIPT, quantity=units),
                )
            )
            self.shelf[i].extend(serials)
            self.record(i)

    async def sale(self, till_id: str, rng: random.Random) -> None:
        i = rng.randrange(self.skus)
        shelf = self.shelf[i]
        if not shelf:
            self.summary.skipped_sales += 1
            return
        serial = shelf.pop(rng.randrange(len(shelf)))
        await self.stub.RecordSale(
            ipb.SaleRequest(till_id=till_id, sku=sku_name(i), quantity=1, epc=[epc_for(i, serial)])
        )
        self.sold[i].append(serial)
        self.summary.sales += 1
        self.record(i)

    async def return_(self, till_id: str, rng: random.Random) -> None:
        i = rng.randrange(self.skus)
        async with self.count_lock:
            sold = self.sold[i]
            if sold:
                serial = sold.pop(rng.randrange(len(sold)))
            else:  # bought elsewhere: a unit this store never had
                serial = self.next_serial[i]
                self.next_serial[i] += 1
            await self.stub.RecordReturn(
                ipb.ReturnRequest(
                    till_id=till_id, sku=sku_name(i), quantity=1, epc=[epc_for(i, serial)]
                )
            )
            self.shelf[i].append(serial)
            self.summary.returns += 1
            self.record(i)

    async def till(self, till_id: str, rng: random.Random, rate: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            # Poisson arrivals: exponential gaps, scheduled on an absolute timeline so that the
            # RPC latency does not lower the rate.
            next_at += rng.expovariate(rate)
            if next_at >= until:
                return
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if rng.random() < RETURN_SHARE:
                await self.return_(till_id, rng)
            else:
                await self.sale(till_id, rng)

    async def count(self, rng: random.Random, duplicate_share: float = 0.3) -> None:
        k = rng.randint(1, self.skus)
        subset = sorted(rng.sample(range(self.skus), k))
        count_id = f"sim-{self.summary.store_id}-{uuid.uuid4().hex[:12]}"
        async with self.count_lock:
            await self.stub.StartCount(
                ipb.StartCountRequest(count_id=count_id, skus=[sku_name(i) for i in subset])
            )
            # Sales go on while the readers read: a unit sold now names its EPC and is left out
            # of the count by the agent; units on the shelf now are all read.
            epcs = [epc_for(i, serial) for i in subset for serial in list(self.shelf[i])]
            epcs += [e for e in epcs if rng.random() < duplicate_share]
            rng.shuffle(epcs)

            async def reads() -> AsyncIterator[ipb.TagRead]:
                for n, epc in enumerate(epcs):
                    r = ipb.TagRead(
                        count_id=count_id, epc=epc, reader_id="sim-reader", antenna=n % 4 + 1
                    )
                    r.read_at.GetCurrentTime()
                    yield r

            summary = await self.stub.RecordTagReads(reads())
            response = await self.stub.StopCount(ipb.StopCountRequest(count_id=count_id))
        self.summary.count_sessions += 1
        self.summary.tag_reads += summary.reads
        for m in response.counts:
            self.summary.counts += 1
            self.summary.movements[m.sku] += 1

    async def counter(self, rng: random.Random, every: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() + every < until:
            await asyncio.sleep(every)
            await self.count(rng)

    def finish(self) -> None:
        self.summary.expected_on_hand = {sku_name(i): len(self.shelf[i]) for i in range(self.skus)}


async def simulate(
    *,
    stores: int = 1,
    tills: int = 2,
    mqtt_url: str = DEFAULT_MQTT_URL,
    duration: float = 10.0,
    rate: float = 1.0,
    skus: int = 20,
    seed: int = 0,
    data_dir: Path = Path("var/sim"),
    count_every: float = 0.0,
    initial_stock: int = 100,
    drain_timeout: float = 60.0,
    store_prefix: str = "store-",
    ack_timeout: float = 10.0,
) -> Summary:
    """Run the simulation and return what it did (see the module docstring)."""
    if stores < 1 or tills < 0 or skus < 1 or rate <= 0 or duration < 0:
        raise ValueError("need stores >= 1, tills >= 0, skus >= 1, rate > 0, duration >= 0")
    catalogue = write_catalogue(data_dir / "catalogue.csv", skus)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        sims: list[_Store] = []
        runners: list[asyncio.Task[None]] = []

        async def stop_runners() -> None:
            for t in runners:
                t.cancel()
            await asyncio.gather(*runners, return_exceptions=True)

        for n in range(1, stores + 1):
            store_id = f"{store_prefix}{n:04d}"
            settings = AgentSettings(
                store_id=store_id,
                mqtt_url=mqtt_url,
                data_dir=data_dir / store_id,
                intake_port=0,
                metrics_port=0,
                catalogue=catalogue,
                ack_timeout=ack_timeout,
            )
            agent = await stack.enter_async_context(StoreAgent(settings))
            runners.append(asyncio.create_task(agent.run(), name=f"sim-agent-{store_id}"))
            store = _Store(agent, skus, StoreSummary(store_id))
            stack.push_async_callback(store.channel.close, None)
            sims.append(store)
        stack.push_async_callback(stop_runners)  # runs before the agents close

        await asyncio.gather(*(s.seed(initial_stock) for s in sims))
        loop = asyncio.get_running_loop()
        trading_from = loop.time()
        until = trading_from + duration
        async with asyncio.TaskGroup() as tg:
            for s in sims:
                sid = s.summary.store_id
                for t in range(tills):
                    rng = random.Random(f"{seed}/{sid}/till-{t}")
                    tg.create_task(s.till(f"till-{t}", rng, rate, until))
                if count_every > 0:
                    tg.create_task(
                        s.counter(random.Random(f"{seed}/{sid}/counts"), count_every, until)
                    )

        trading = loop.time() - trading_from
        drained = True
        try:
            async with asyncio.timeout(drain_timeout):
                await asyncio.gather(*(s.agent.wait_drained() for s in sims))
        except TimeoutError:
            drained = False
        for s in sims:
            s.finish()
            s.summary.outbox_depth = s.agent.outbox.depth()
    return Summary([s.summary for s in sims], time.monotonic() - started, drained, trading)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unistock-sim", description=__doc__.splitlines()[0])
    p.add_argument("--stores", type=int, default=1, help="stores (agents) to run")
    p.add_argument("--tills", type=int, default=2, help="tills per store")
    p.add_argument(
        "--mqtt-url",
        help="broker, mqtt[s]://user:pass@host:port (default: UNISTOCK_MQTT_URL, else mqtt_url of "
        f"the user config file `make run` writes, else {DEFAULT_MQTT_URL})",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of trading")
    p.add_argument("--rate", type=float, default=1.0, help="sales per second per till")
    p.add_argument("--skus", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=Path("var/sim"))
    p.add_argument(
        "--count-every", type=float, default=0.0, help="seconds between RFID counts (0: never)"
    )
    p.add_argument("--initial-stock", type=int, default=100, help="units received per SKU")
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``unistock-sim``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        mqtt_url = ClientConfig.load().mqtt_url(args.mqtt_url).value
    except ConfigError as e:
        parser.error(str(e))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        summary = asyncio.run(
            simulate(
                stores=args.stores,
                tills=args.tills,
                mqtt_url=mqtt_url,
                duration=args.duration,
                rate=args.rate,
                skus=args.skus,
                seed=args.seed,
                data_dir=args.data_dir,
                count_every=args.count_every,
                initial_stock=args.initial_stock,
                drain_timeout=args.drain_timeout,
            )
        )
    except ValueError as e:
        print(f"unistock-sim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(summary.render())
    return 0 if summary.drained else 1


if __name__ == "__main__":
    sys.exit(main())
