"""`make demo`: the unified-commerce journeys played on a real Unistock, narrated live.

Usage: ``python -m unistock.devtools.demo [--pace SECONDS | --fast] [--no-color]``.

Everything runs in a temporary directory, on free ports, so it never meets a running
``make run``: a private ``redis-server`` and ``mosquitto`` (started as ``make run`` starts
them), the server (``python -m unistock.server.app.cli``, the ledger written in process), and
one real ``unistock-edge-agent`` process per store. Master data goes in through the admin API:
three stores in Munich with coordinates (store-centre, store-north 1.2 km away, store-west
8.5 km away), a warehouse (dc-east) and a web network over all four; the rain jacket in sizes
M and L, with GTINs (the agents' RFID catalogue is made from them).

The journeys, all on the size M jacket: store-centre is out of her size; FindStock near the
store finds store-north; an E_RESERVATION there; the pickup at store-north's till (a sale naming
the reservation); a return of the jacket at store-centre; a damaged (NON_SELLABLE) return at
store-west; a transfer of 6 from the warehouse received 5 at store-centre (GetTransfer: 1 in
transit, then lost once closed); an RFID count at store-centre reading 4 of the 6 units it
should have (2 units of shrinkage). Tills, the returns desk and the RFID reader call the
store agents' intake gRPC; the web shop calls FindStock and Reserve; the warehouse system
sends its movements with ApplyMovements. The table of the SKU's availability per location and
in the web network follows WatchAvailability and WatchNetworkAvailability, the events come from
WatchEvents as they arrive.

Output: a live table on a terminal (Rich); on a pipe or a file (or with ``--no-color``) plain
text, the table printed after each step. Exit status: 0 when every journey played, 1 when
something failed (what failed is printed), 130 on Ctrl-C (SIGINT), 143 on SIGTERM. In every
case the processes it started are stopped and its temporary directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from unistock.client import EventWatcher, UnistockClient, UnistockClientError, Watcher
from unistock.devtools.run import server_command, start_services
from unistock.devtools.services import MosquittoBroker, RedisServer, ServiceError, free_port
from unistock.edge.epc import decode_sgtin96, encode_sgtin96
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143

#: Seconds between steps unless --pace or --fast says otherwise.
DEFAULT_PACE = 1.5
#: Seconds allowed for a process to start, or for a movement to reach the server.
TIMEOUT = 60.0

STORES: dict[str, tuple[str, float, float]] = {
    "store-centre": ("Marienplatz", 48.1372, 11.5756),
    "store-north": ("Schwabing", 48.1480, 11.5756),
    "store-west": ("Pasing", 48.1490, 11.4616),
}
WAREHOUSE = ("dc-east", "East distribution centre", 48.1400, 11.7000)
WEB = "web"
LOCATIONS = (*STORES, WAREHOUSE[0])

COMPANY_PREFIX = "4012345"
SKU = "JKT-RAIN-M"  # the size she wants
#: SKU -> (item reference, size).
PRODUCTS = {SKU: ("100001", "M"), "JKT-RAIN-L": ("100002", "L")}

#: Goods in before the story starts: location -> (sku, units).
OPENING_STOCK: dict[str, list[tuple[str, int]]] = {
    "store-centre": [("JKT-RAIN-L", 3)],  # not a single M
    "store-north": [(SKU, 2)],
    "store-west": [(SKU, 4)],
    "dc-east": [(SKU, 20)],
}
RESERVATION = "ERES-1001"
TRANSFER = "T-2026-0042"
TRANSFER_SHIPPED, TRANSFER_RECEIVED = 6, 5
COUNT_ID = "count-centre-1"
COUNT_TAGS_READ = 4


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


async def until(probe: Callable[[], Awaitable[bool]], failure: Callable[[], str]) -> None:
    """Poll probe() every 50 ms until it is true; DemoError with failure() (which may tell
    what probe saw last) after TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not await probe():
        if time.monotonic() > deadline:
            raise DemoError(f"{failure()} within {TIMEOUT:.0f} s")
        await asyncio.sleep(0.05)


def epc(sku: str, serial: int) -> str:
    """The SGTIN-96 EPC (24 hex digits) of unit `serial` of a product."""
    return encode_sgtin96(1, COMPANY_PREFIX, PRODUCTS[sku][0], serial)


def gtin(sku: str) -> str:
    """A product's GTIN-14 (what its tags carry)."""
    return decode_sgtin96(epc(sku, 1)).gtin14


# --------------------------------------------------------------------------- processes


@dataclass
class Stack:
    """What the demo started, all under `root`; stop() stops it all and removes root."""

    root: Path
    log: Callable[[str], None]
    services: list[RedisServer | MosquittoBroker] = field(default_factory=list)
    #: (name, process, log file) of the server and the agents, in start order.
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    grpc_port: int = 0
    #: store -> (intake port, metrics port) of its agent.
    agents: dict[str, tuple[int, int]] = field(default_factory=dict)

    def start(self) -> None:
        """Start redis-server, mosquitto, the server and an agent per store; raises
        ServiceError or DemoError naming what did not start."""
        # Only what is set here: a UNISTOCK_* variable of the caller's shell (a `make run`
        # URL, a database) must not send the demo to someone else's services.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTOCK_")}
        start_services(
            self.root, self.env, self.services, lambda _var, _default: free_port(), self.log
        )
        self.tokens = {
            r: f"demo-{r}-{secrets.token_hex(12)}" for r in ("admin", "channel", "backoffice")
        }
        server_env = dict(
            self.env,
            UNISTOCK_DATA_DIR=str(self.root / "server"),
            UNISTOCK_TOKENS=",".join(f"{r}:{t}" for r, t in self.tokens.items()),
            UNISTOCK_GRPC_PORT="0",
            UNISTOCK_METRICS_PORT="0",
            UNISTOCK_LEDGER_IN_PROCESS="1",
        )
        [port] = self._launch(
            "unistock-server",
            server_command(),
            server_env,
            r"unistock-server ready: gRPC on port (\d+)",
        )
        self.grpc_port = int(port)
        catalogue = self.root / "catalogue.csv"
        catalogue.write_text("gtin,sku\n" + "".join(f"{gtin(s)},{s}\n" for s in PRODUCTS))
        started = []
        for store in STORES:
            metrics = free_port()
            cmd = [
                sys.executable,
                "-m",
                "unistock.edge.cli",
                "--store-id",
                store,
                "--mqtt-url",
                self.env["UNISTOCK_MQTT_URL"],
                "--data-dir",
                str(self.root / f"agent-{store}"),
                "--intake-port",
                "0",
                "--metrics-port",
                str(metrics),
                "--catalogue",
                str(catalogue),
            ]
            started.append((store, metrics, self._spawn(f"agent {store}", cmd, self.env)))
        for store, metrics, (proc, log) in started:
            [intake] = self._ready(f"agent {store}", proc, log, r"intake on port (\d+)")
            self.agents[store] = (int(intake), metrics)

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str]
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name.replace(' ', '-')}.log"
        with log.open("wb") as out:
            # Own session: a Ctrl-C in the terminal reaches the demo only, which stops it.
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs.append((name, proc, log))
        self.log(f"started {name} pid {proc.pid}")
        return proc, log

    def _ready(
        self, name: str, proc: subprocess.Popen[bytes], log: Path, pattern: str
    ) -> tuple[str, ...]:
        """The groups of `pattern` once the process's output has it; DemoError if it exits
        or TIMEOUT passes first."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            text = log.read_text(errors="replace")
            if m := re.search(pattern, text):
                return m.groups()
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with code {proc.returncode}"
                    if proc.poll() is not None
                    else (f"was not ready after {TIMEOUT:.0f} s")
                )
                tail = "\n".join(text.splitlines()[-15:])
                raise DemoError(f"{name} {why}; its last output:\n{tail}")
            time.sleep(0.05)

    def _launch(
        self, name: str, cmd: list[str], env: dict[str, str], ready: str
    ) -> tuple[str, ...]:
        proc, log = self._spawn(name, cmd, env)
        return self._ready(name, proc, log, ready)

    def exited(self) -> list[str]:
        """The server or agents that exited on their own ("unistock-server pid 12 exited
        with code -9"), the usual cause of a failed step. Waits up to a second for one: a
        killed process's connections can break a moment before it can be reaped."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and all(p.poll() is None for _, p, _ in self.procs):
            time.sleep(0.02)
        return [
            f"{name} pid {proc.pid} exited with code {proc.returncode} (its output: {log})"
            for name, proc, log in self.procs
            if proc.poll() is not None
        ]

    def stop(self) -> list[str]:
        """Stop the agents, then the server (SIGTERM, SIGKILL after 10 s), then mosquitto and
        redis-server; remove root. Returns what was stopped ("agent store-north pid 123")."""
        stopped = []
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stopped.append(f"{name} pid {proc.pid}")
        for svc in reversed(self.services):
            pid = svc.pid
            svc.stop()
            stopped.append(f"{svc.binary_name} pid {pid}")
        shutil.rmtree(self.root, ignore_errors=True)
        return stopped


# --------------------------------------------------------------------------- narration


@dataclass
class Board:
    """What the watches saw: the SKU's level per location, its web level, the last events."""

    levels: dict[str, pb.StockLevel] = field(default_factory=dict)
    web: pb.NetworkLevel | None = None
    events: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    #: Every event type seen.
    seen: set[int] = field(default_factory=set)

    def table(self) -> Table:
        t = Table(
            title=f"{SKU}: availability (WatchAvailability, WatchNetworkAvailability)",
            title_justify="left",
        )
        for col in ("location", "on hand", "reserved", "available", "non-sellable", "in transit"):
            t.add_column(col, justify="left" if col == "location" else "right")
        for loc in LOCATIONS:
            lv = self.levels.get(loc)
            cells = (
                [lv.on_hand, lv.reserved, lv.available, lv.non_sellable, lv.in_transit]
                if lv is not None
                else [0] * 5
            )
            t.add_row(loc, *(str(c) for c in cells))
        web = "-" if self.web is None else str(self.web.available)
        t.add_row(f"{WEB} (network)", "", "", web, "", "", style="bold")
        return t

    def render(self) -> RenderableType:
        events = Text("\n".join(self.events) or "(none yet)", no_wrap=True, overflow="ellipsis")
        return Group(self.table(), Text("Events (WatchEvents):", style="bold"), events)


def describe(ev: pb.InventoryEvent) -> str:
    """One line for an event: its type, SKU, where, and the server's detail."""
    where = ev.location_id or ev.network
    return f"event: {pb.EventType.Name(ev.type)} {ev.sku} at {where}: {ev.detail}"


class Narrator:
    """Prints the story; on a terminal the board stays live below it."""

    def __init__(self, console: Console, pace: float) -> None:
        self.console = console
        self.pace = pace
        self.board = Board()
        self.live: Live | None = None
        self.steps = 0

    def say(self, text: str, style: str = "") -> None:
        self.console.print(text, style=style, highlight=False)

    def event(self, ev: pb.InventoryEvent) -> None:
        line = describe(ev)
        self.board.events.append(line)
        self.board.seen.add(ev.type)
        if self.live is None:  # on a terminal the live board shows it
            self.say(f"  {line}", "magenta")

    def heading(self, title: str, what: str) -> None:
        self.steps += 1
        self.console.rule(f"[bold]{self.steps}. {title}", align="left")
        self.say(what)

    def effect(self, text: str) -> None:
        self.say(f"  -> {text}", "green")

    async def pause(self) -> None:
        if self.live is None:
            self.console.print(self.board.table())
        await asyncio.sleep(self.pace)


# --------------------------------------------------------------------------- the journeys


def now() -> Timestamp:
    t = Timestamp()
    t.FromDatetime(datetime.now(UTC).replace(tzinfo=None))
    return t


class Demo:
    """The journeys on a started Stack, through its APIs only."""

    def __init__(
        self,
        stack: Stack,
        narrator: Narrator,
        channels: dict[str, aio.Channel],
        admin: UnistockClient,
        shop: UnistockClient,
        wms: UnistockClient,
    ) -> None:
        self.stack, self.n = stack, narrator
        self.tills = {s: ipb_grpc.StoreIntakeStub(ch) for s, ch in channels.items()}
        self.admin, self.shop, self.wms = admin, shop, wms
        self.wms_seq = 0

    # -- reading the server ------------------------------------------------------------------

    async def level(self, loc: str, sku: str = SKU) -> pb.StockLevel:
        [lv] = await self.shop.get_availability(keys=[(sku, loc)])
        return lv

    async def web(self) -> int:
        """The web network's available of SKU once it agrees with its members' levels (it
        follows them asynchronously)."""
        net = pb.NetworkLevel()

        async def agrees() -> bool:
            nonlocal net
            members = await self.shop.get_availability(keys=[(SKU, loc) for loc in LOCATIONS])
            [net] = await self.shop.get_network_availability(WEB, [SKU])
            return net.available == sum(max(lv.available, 0) for lv in members)

        await until(
            agrees,
            lambda: (
                f"the web network's {SKU} available ({net.available}) did "
                "not follow its members' levels"
            ),
        )
        return net.available

    async def step_done(self) -> None:
        """Once the watches show what the server has now (versions of every location's level,
        the web level), the pause between steps (the board printed first, without a
        terminal)."""
        board = self.n.board

        async def shown() -> bool:
            levels = await self.shop.get_availability(keys=[(SKU, loc) for loc in LOCATIONS])
            [net] = await self.shop.get_network_availability(WEB, [SKU])
            seen = {loc: lv.version for loc, lv in board.levels.items()}
            return (board.web.version if board.web is not None else 0) >= net.version and all(
                seen.get(lv.location_id, 0) >= lv.version for lv in levels
            )

        await until(shown, lambda: "the watches did not show the server's levels")
        await self.n.pause()

    async def events_seen(self, *types: int) -> None:
        """Until WatchEvents delivered an event of each type; DemoError naming a missing one."""

        def missing() -> list[str]:
            seen = self.n.board.seen
            return [pb.EventType.Name(t) for t in types if t not in seen]  # type: ignore[arg-type]

        async def seen() -> bool:
            return not missing()

        await until(seen, lambda: f"WatchEvents did not deliver {', '.join(missing())}")

    async def drained(self, store: str) -> None:
        """Until the store's agent has had every movement it took acknowledged by the server
        (its outbox depth, read from its /metrics)."""
        url = f"http://127.0.0.1:{self.stack.agents[store][1]}/metrics"
        left = 0.0

        def depth() -> float:
            with urllib.request.urlopen(url, timeout=10) as r:
                for line in bytes(r.read()).decode().splitlines():
                    if line.startswith("unistock_agent_outbox_depth "):
                        return float(line.split()[1])
            raise DemoError(f"{url} has no unistock_agent_outbox_depth")

        async def empty() -> bool:
            nonlocal left
            left = await asyncio.to_thread(depth)
            return left == 0

        await until(
            empty,
            lambda: (
                f"{store}'s agent still has {left:.0f} movements the server has not acknowledged"
            ),
        )

    async def shipped(self, store: str) -> None:
        """Until the destination's record of TRANSFER counts what was shipped (the server
        writes it just after applying the TRANSFER_OUT at the origin)."""

        async def recorded() -> bool:
            try:
                transfers = await self.admin.get_transfer(TRANSFER, store)
            except UnistockClientError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                return False
            return any(ln.shipped for t in transfers for ln in t.lines)

        await until(recorded, lambda: f"{store} did not see transfer {TRANSFER} shipped")

    async def wms_send(self, *movements: pb.Movement) -> None:
        """The warehouse system's movements (source wms-dc-east, its own seqs) through
        ApplyMovements; DemoError if the server rejects one."""
        for m in movements:
            self.wms_seq += 1
            m.seq = self.wms_seq
            m.location_id = m.location_id or WAREHOUSE[0]
        batch = pb.MovementBatch(source_id="wms-dc-east", movements=movements)
        async for ack in self.wms.apply_movements([batch]):
            if ack.rejections:
                raise DemoError(f"the server rejected the warehouse's movements: {ack.rejections}")

    # -- set-up ------------------------------------------------------------------------------

    async def master_data(self) -> None:
        self.n.heading(
            "Master data",
            "Back office loads three stores, a warehouse, the web "
            "network over all four and the rain jacket in M and L (AdminService).",
        )
        locations = [
            apb.Location(
                location_id=s,
                type=apb.STORE,
                name=name,
                store_id=s,
                latitude=lat,
                longitude=lon,
                has_position=True,
                e_reservation=True,
                click_and_collect=True,
                ship_from_store=True,
            )
            for s, (name, lat, lon) in STORES.items()
        ]
        wh, name, lat, lon = WAREHOUSE
        locations.append(
            apb.Location(
                location_id=wh,
                type=apb.WAREHOUSE,
                name=name,
                latitude=lat,
                longitude=lon,
                has_position=True,
            )
        )
        await self.admin.upsert_locations(locations)
        await self.admin.upsert_networks([apb.Network(network_id=WEB, location_ids=LOCATIONS)])
        await self.admin.upsert_products(
            [
                apb.Product(sku=s, gtin=gtin(s), model="JKT-RAIN", size=size, colour="navy")
                for s, (_, size) in PRODUCTS.items()
            ]
        )
        self.n.effect(f"{len(locations)} locations, network {WEB}, {len(PRODUCTS)} products")

    async def goods_in(self) -> None:
        self.n.heading(
            "Goods in",
            "Each store receives its opening stock at its back door "
            "(through its agent); the warehouse system books its own.",
        )
        for loc, lines in OPENING_STOCK.items():
            for sku, units in lines:
                mv = pb.Movement(sku=sku, type=pb.RECEIPT, quantity=units)
                if loc in STORES:
                    await self.tills[loc].RecordMovement(
                        ipb.RecordMovementRequest(
                            device_id="backdoor",
                            movement=mv,
                            request_id=f"gi/{loc}/{sku}",
                            sent_at=now(),
                        )
                    )
                else:
                    await self.wms_send(mv)
        for store in STORES:
            await self.drained(store)
        for loc in LOCATIONS:
            self.n.effect(f"{loc}: {SKU} on hand {(await self.level(loc)).on_hand}")
        self.n.effect(f"web: {SKU} available {await self.web()}")

    # -- the journeys ------------------------------------------------------------------------

    async def out_of_size(self) -> None:
        self.n.heading(
            "Out of her size",
            "A shopper at store-centre wants the rain jacket in M; the shelf only has L.",
        )
        m, size_l = await self.level("store-centre"), await self.level("store-centre", "JKT-RAIN-L")
        self.n.effect(
            f"store-centre: {SKU} available {m.available}, JKT-RAIN-L available {size_l.available}"
        )

    async def find_nearby(self) -> str:
        self.n.heading(
            "The nearest store has it",
            "The assistant looks for an M nearby that "
            "can be held for her (FindStock, E_RESERVATION, near store-centre).",
        )
        found = await self.shop.find_stock(
            WEB, [(SKU, 1)], "E_RESERVATION", near_location_id="store-centre", limit=3
        )
        if not found.options:
            raise DemoError("FindStock found no store with the jacket in M")
        for opt in found.options:
            has = (await self.level(opt.location_id)).available
            self.n.effect(
                f"option {opt.location_id}: {opt.distance_km:.1f} km away, {has} available"
            )
        best = found.options[0].location_id
        self.n.effect(f"nearest: {best}")
        return best

    async def reserve(self, store: str) -> None:
        async with self.journey(
            "E-reservation",
            f"She asks {store} to hold one for her this afternoon (Reserve, kind E_RESERVATION).",
        ):
            before = await self.level(store)
            held = await self.shop.reserve(
                RESERVATION,
                [(SKU, store, 1)],
                kind="E_RESERVATION",
                channel="store-centre",
                customer_id="cust-4711",
            )
            after = await self.level(store)
            self.n.effect(
                f"reservation {RESERVATION} {pb.ReservationState.Name(held.reservation.state)}"
            )
            self.n.effect(
                f"{store}: available {before.available} -> {after.available}, reserved "
                f"{before.reserved} -> {after.reserved}"
            )

    async def pickup(self, store: str) -> None:
        async with self.journey(
            "Pickup at the till",
            f"She collects it at {store}; the till rings it "
            f"up naming the reservation (RecordSale with reservation_id).",
        ):
            before = await self.level(store)
            receipt = await self.tills[store].RecordSale(
                ipb.SaleRequest(
                    till_id=f"{store}/till-1",
                    sku=SKU,
                    quantity=1,
                    reservation_id=RESERVATION,
                    request_id=f"{store}/receipt-0815/1",
                    sent_at=now(),
                )
            )
            self.n.effect(
                f"the till has its receipt at once (seq {receipt.seq} of {receipt.source_id}): "
                "the sale is kept in the store's outbox until the server confirms it"
            )
            await self.drained(store)
            res, after = await self.shop.get_reservation(RESERVATION), await self.level(store)
            self.n.effect(f"reservation {RESERVATION} {pb.ReservationState.Name(res.state)}")
            self.n.effect(
                f"{store}: on hand {before.on_hand} -> {after.on_hand}, reserved "
                f"{before.reserved} -> {after.reserved}, available {before.available} -> "
                f"{after.available}"
                + (
                    " (the unit sold was the one held for her: nothing else changes)"
                    if before.available == after.available
                    else ""
                )
            )

    @contextlib.asynccontextmanager
    async def journey(self, title: str, what: str) -> AsyncIterator[None]:
        """A journey's heading and sentence, then (after the block) how the web network's
        available of SKU moved."""
        self.n.heading(title, what)
        before = await self.web()
        yield
        after = await self.web()
        self.n.effect(
            f"web: available {before} -> {after}"
            + (" (unchanged: what the web may promise is the same)" if before == after else "")
        )

    async def till(
        self, store: str, action: Callable[[], Awaitable[object]]
    ) -> tuple[pb.StockLevel, pb.StockLevel]:
        """(level before, level after) of SKU at store around a till call."""
        before = await self.level(store)
        await action()
        await self.drained(store)
        return before, await self.level(store)

    async def returned(
        self,
        store: str,
        receipt: str,
        condition: pb.ItemCondition.ValueType = pb.ITEM_CONDITION_UNSPECIFIED,
    ) -> tuple[pb.StockLevel, pb.StockLevel]:
        """A return of one SKU at store's returns desk (RecordReturn): (level before, after)."""
        return await self.till(
            store,
            lambda: self.tills[store].RecordReturn(
                ipb.ReturnRequest(
                    till_id=f"{store}/returns-desk",
                    sku=SKU,
                    quantity=1,
                    condition=condition,
                    request_id=f"{store}/{receipt}/1",
                    sent_at=now(),
                )
            ),
        )

    async def return_elsewhere(self) -> None:
        store = "store-centre"
        async with self.journey(
            "A return in another store",
            "A week later she returns the jacket at "
            f"{store}, not where she bought it (RecordReturn).",
        ):
            before, after = await self.returned(store, "return-0042")
            self.n.effect(
                f"{store}: on hand {before.on_hand} -> {after.on_hand}, available "
                f"{before.available} -> {after.available} (sellable again)"
            )

    async def damaged_return(self) -> None:
        store = "store-west"
        async with self.journey(
            "A damaged return",
            f"At {store} a customer brings one back with a torn "
            "seam: it goes to the back room, not the shelf (condition NON_SELLABLE).",
        ):
            before, after = await self.returned(store, "return-0007", pb.NON_SELLABLE)
            self.n.effect(
                f"{store}: non-sellable {before.non_sellable} -> {after.non_sellable}, "
                f"available {before.available} -> {after.available} (not for sale)"
            )

    async def transfer_short(self) -> None:
        store, wh = "store-centre", WAREHOUSE[0]
        async with self.journey(
            "A transfer received short",
            f"The warehouse ships {TRANSFER_SHIPPED} to "
            f"{store} (TRANSFER_OUT); the store unpacks only {TRANSFER_RECEIVED} "
            "(TRANSFER_IN).",
        ):
            wh_before, st_before = await self.level(wh), await self.level(store)
            await self.wms_send(
                pb.Movement(
                    sku=SKU,
                    type=pb.TRANSFER_OUT,
                    quantity=TRANSFER_SHIPPED,
                    transfer_id=TRANSFER,
                    counterpart_location_id=store,
                )
            )
            await self.shipped(store)
            shipped = await self.level(store)
            self.n.effect(
                f"{wh}: on hand {wh_before.on_hand} -> {(await self.level(wh)).on_hand}; "
                f"{store}: in transit {st_before.in_transit} -> {shipped.in_transit}"
            )
            before, after = await self.till(
                store,
                lambda: self.tills[store].RecordMovement(
                    ipb.RecordMovementRequest(
                        device_id=f"{store}/handheld-1",
                        request_id=f"{TRANSFER}/in",
                        sent_at=now(),
                        movement=pb.Movement(
                            sku=SKU,
                            type=pb.TRANSFER_IN,
                            quantity=TRANSFER_RECEIVED,
                            transfer_id=TRANSFER,
                            counterpart_location_id=wh,
                        ),
                    )
                ),
            )
            self.n.effect(
                f"{store}: on hand {before.on_hand} -> {after.on_hand}, in transit "
                f"{before.in_transit} -> {after.in_transit}"
            )
            [t] = await self.admin.get_transfer(TRANSFER, store)
            [ln] = t.lines
            self.n.effect(
                f"transfer {TRANSFER} {pb.TransferState.Name(t.state)}: shipped "
                f"{ln.shipped}, received {ln.received}, in transit {ln.in_transit}"
            )
            self.n.say(
                "  The store closes the transfer: the missing unit is written off as lost "
                "in transit (CloseTransfer)."
            )
            t = await self.admin.close_transfer(TRANSFER, store)
            [ln] = t.lines
            self.n.effect(
                f"transfer {TRANSFER} {pb.TransferState.Name(t.state)}: units lost in transit "
                f"{ln.lost}"
            )

    async def count(self) -> None:
        store = "store-centre"
        async with self.journey(
            "An RFID count finds shrinkage",
            f"Staff at {store} walk the floor with a "
            f"reader (StartCount, tag reads of SGTIN-96 EPCs, StopCount).",
        ):
            till = self.tills[store]
            before = await self.level(store)
            await till.StartCount(ipb.StartCountRequest(count_id=COUNT_ID, skus=[SKU]))
            read_at = now()
            reads = [  # every tag seen three times, on two antennas
                ipb.TagRead(
                    count_id=COUNT_ID,
                    epc=epc(SKU, serial),
                    reader_id="hh-1",
                    antenna=1 + k % 2,
                    read_at=read_at,
                )
                for k in range(3)
                for serial in range(1, COUNT_TAGS_READ + 1)
            ]
            summary = await till.RecordTagReads(iter(reads))
            stop = await till.StopCount(ipb.StopCountRequest(count_id=COUNT_ID))
            [counted] = stop.counts
            self.n.effect(f"{summary.reads} tag reads, {counted.quantity} distinct units of {SKU}")
            await self.drained(store)
            after = await self.level(store)
            self.n.effect(
                f"{store}: on hand {before.on_hand} -> {after.on_hand}: shrinkage "
                f"{before.on_hand - after.on_hand} units"
            )

    async def play(self) -> None:
        """Every step after the master data (which the watches need)."""
        await self.step_done()
        await self.goods_in()
        await self.step_done()
        await self.out_of_size()
        await self.step_done()
        store = await self.find_nearby()
        await self.step_done()
        await self.reserve(store)
        await self.step_done()
        await self.pickup(store)
        await self.step_done()
        for journey in (
            self.return_elsewhere,
            self.damaged_return,
            self.transfer_short,
            self.count,
        ):
            await journey()
            await self.step_done()
        # The events of the last journeys, before the end.
        await self.events_seen(pb.TRANSFER_SHORT, pb.COUNT_VARIANCE)


async def watch(board: Board, narrator: Narrator, client: UnistockClient) -> None:
    """Keep the board up to date from the three watches (until cancelled)."""

    async def levels() -> None:
        async for lv in Watcher(client, skus=[SKU]):
            board.levels[lv.location_id] = lv

    async def network() -> None:
        async for msg in client.watch_networks([WEB], [SKU]):
            for lv in msg.levels:
                board.web = lv

    async def events() -> None:
        async for ev in EventWatcher(client, skus=[SKU]):
            narrator.event(ev)

    async with asyncio.TaskGroup() as tg:
        for job in (levels(), network(), events()):
            tg.create_task(job)


@contextlib.asynccontextmanager
async def live(narrator: Narrator) -> AsyncIterator[None]:
    """On a terminal, the board live at the bottom of the screen while in the block."""
    if not narrator.console.is_terminal:
        yield
        return
    with Live(
        get_renderable=narrator.board.render, console=narrator.console, refresh_per_second=8
    ) as lv:
        narrator.live = lv
        try:
            yield
        finally:
            narrator.live = None


async def play(stack: Stack, narrator: Narrator) -> None:
    """Connect to the started stack and play every journey."""
    target = f"127.0.0.1:{stack.grpc_port}"
    async with contextlib.AsyncExitStack() as es:
        admin = await es.enter_async_context(UnistockClient(target, stack.tokens["admin"]))
        shop = await es.enter_async_context(UnistockClient(target, stack.tokens["channel"]))
        wms = await es.enter_async_context(UnistockClient(target, stack.tokens["backoffice"]))
        channels = {
            s: await es.enter_async_context(aio.insecure_channel(f"127.0.0.1:{intake}"))
            for s, (intake, _) in stack.agents.items()
        }
        demo = Demo(stack, narrator, channels, admin, shop, wms)
        await es.enter_async_context(live(narrator))
        await demo.master_data()
        async with asyncio.TaskGroup() as tg:  # a watch that fails stops the story
            watcher = tg.create_task(watch(narrator.board, narrator, shop))
            await demo.play()
            watcher.cancel()
        if narrator.live is not None:
            narrator.live.refresh()


def first_error(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="make demo",
        description="Play Unistock's unified-commerce journeys on private, temporary services.",
    )
    p.add_argument(
        "--pace",
        type=float,
        default=DEFAULT_PACE,
        metavar="SECONDS",
        help=f"pause between steps (default {DEFAULT_PACE})",
    )
    p.add_argument("--fast", action="store_true", help="no pauses (same as --pace 0)")
    p.add_argument(
        "--no-color", action="store_true", help="plain output (also when stdout is not a terminal)"
    )
    a = p.parse_args(argv)
    if a.pace < 0:
        p.error(f"--pace {a.pace}: must be 0 or more")
    if a.fast:
        a.pace = 0.0
    return a


def _terminated(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(EXIT_TERMINATED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (see the module docstring)."""
    args = parse(argv)
    plain = args.no_color or not sys.stdout.isatty()
    console = Console(
        no_color=plain, force_terminal=False if plain else None, highlight=False, soft_wrap=plain
    )
    narrator = Narrator(console, args.pace)
    try:
        root = Path(tempfile.mkdtemp(prefix="unistock-demo-"))
    except OSError as exc:
        narrator.say(f"Demo failed: cannot create its temporary directory: {exc}", "bold red")
        return EXIT_FAILED
    stack = Stack(root, lambda line: narrator.say(f"  {line}", "dim"))
    signal.signal(signal.SIGTERM, _terminated)
    code = EXIT_FAILED
    try:
        narrator.say(f"Unistock demo: everything runs in {root}", "bold")
        stack.start()
        asyncio.run(play(stack, narrator))
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        narrator.say("\nInterrupted: stopping everything.", "yellow")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
        narrator.say("\nTerminated: stopping everything.", "yellow")
    except Exception as group:  # say what failed, then still stop everything
        err = first_error(group)
        known = (DemoError, ServiceError, UnistockClientError)
        why = str(err) if isinstance(err, known) else f"{type(err).__name__}: {err}"
        narrator.say(f"\nDemo failed: {why}", "bold red")
        for what in stack.exited():
            narrator.say(f"  {what}", "red")
    finally:
        # A second Ctrl-C must not leave half of it running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for what in stack.stop():
            narrator.say(f"  stopped {what}", "dim")
        narrator.say(f"Removed {root}.")
    if code == EXIT_OK:
        narrator.say("Demo finished: every journey played.", "bold green")
    return code


if __name__ == "__main__":
    sys.exit(main())
