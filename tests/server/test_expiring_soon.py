"""RESERVATION_EXPIRING_SOON (issue 11 item 2): an ACTIVE reservation whose expiry comes within
--expiring-soon-s is warned once per expiry, durably (real Redis, in-process server)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_events import Events, move
from tests.server.test_reservations_by import snapshot, updates
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.server.app.settings import Settings
from unistock.v1 import inventory_pb2 as pb

SOON, EXPIRED = pb.RESERVATION_EXPIRING_SOON, pb.RESERVATION_EXPIRED
U = pb.ReservationUpdate


@contextlib.asynccontextmanager
async def stocked(srv: UnistockServer, units: int = 5) -> AsyncIterator[UnistockClient]:
    """A channel client of srv, once position B@s1 received `units`."""
    async with (
        UnistockClient(target(srv), TOKENS["backoffice"]) as bo,
        UnistockClient(target(srv), TOKENS["channel"]) as c,
    ):
        await move(bo, pb.RECEIPT, "B", "s1", units)
        yield c


def shifted(srv: UnistockServer) -> list[float]:
    """Drive the server's reservation clock by hand: it reads time.time() + shift[0]."""
    shift = [0.0]
    srv.inventory.clock = lambda: time.time() + shift[0]
    return shift


async def test_warned_once_then_expired_on_both_streams(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """The expiry loop warns a hold inside the window once (event and WatchReservations
    transition), then expires it."""
    srv = await make_server(clean_redis_url, expiry_interval_s=0.1, expiring_soon_s=60)
    async with stocked(srv) as c:
        ev = Events(srv, types=[SOON, EXPIRED])
        await ev.started()
        watch = c.watch_reservations(location_id="s1")
        assert await snapshot(watch) == []
        await c.reserve("cart-1", [("B", "s1", 2)], ttl_seconds=2)
        got = await ev.take(2)
        assert [(e.type, e.reservation_id) for e in got] == [(SOON, "cart-1"), (EXPIRED, "cart-1")]
        soon = got[0]
        assert [(ln.sku, ln.location_id, ln.quantity) for ln in soon.lines] == [("B", "s1", 2)]
        r = await c.get_reservation("cart-1")
        assert soon.detail == f"reservation cart-1 expires at {r.expires_at.ToJsonString()}"
        seen = await updates(watch, 3)
        assert [list(u.transitions) for u in seen] == [[U.CREATED], [U.EXPIRING_SOON], [U.EXPIRED]]
        assert seen[1].reservation.state == pb.ACTIVE
        await ev.nothing_more(srv)
        await watch.aclose()  # type: ignore[attr-defined]
        await ev.close()


async def test_an_extension_is_warned_again_when_its_new_expiry_comes_near(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """The loop is left asleep (a long interval); warn_expiring and expire_due are called by
    hand with the reservation clock moved forward."""
    srv = await make_server(clean_redis_url, expiry_interval_s=3600, expiring_soon_s=300)
    shift = shifted(srv)
    inv = srv.inventory
    async with stocked(srv) as c:
        ev = Events(srv, types=[SOON, EXPIRED])
        await ev.started()
        await c.reserve("r", [("B", "s1", 1)], kind="ORDER", ttl_seconds=600)
        assert await inv.warn_expiring(300) == 0  # 600 s away
        shift[0] = 301
        assert await inv.warn_expiring(300) == 1
        assert await inv.warn_expiring(300) == 0  # once per expiry
        r = await c.get_reservation("r")
        await c.extend("r", expires_at=Timestamp(seconds=r.expires_at.seconds + 1000))
        assert await inv.warn_expiring(300) == 0  # its new expiry is 1,000 s further
        shift[0] = 1302  # within 300 s of its new expiry (about 1,600 s after the start)
        assert await inv.warn_expiring(300) == 1
        shift[0] = 1700
        assert await inv.expire_due() == 1
        got = await ev.take(3)
        assert [(e.type, e.reservation_id) for e in got] == [
            (SOON, "r"),
            (SOON, "r"),
            (EXPIRED, "r"),
        ]
        await ev.nothing_more(srv)
        await ev.close()


async def test_each_round_reads_a_bounded_range_and_misses_nothing(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """With 2 ids per partition per round, 5 reservations in one partition are warned over
    four rounds; one made later with an expiry before the rounds' cursor is still warned."""
    srv = await make_server(
        clean_redis_url, expiry_interval_s=3600, expiring_soon_s=300, partitions=1
    )
    inv = srv.inventory
    async with stocked(srv, 50) as c:
        for i in range(5):
            await c.reserve(f"r{i}", [("B", "s1", 1)], kind="ORDER", ttl_seconds=100 + i)
        # A full read resumes at its last expiry (inclusive: that one is read again).
        rounds = [await inv.warn_expiring(300, limit=2) for _ in range(6)]
        assert rounds == [2, 1, 1, 1, 0, 0]
        await c.reserve("late", [("B", "s1", 1)], kind="ORDER", ttl_seconds=50)
        assert await inv.warn_expiring(300, limit=2) == 1
        for rid in ("r0", "r4", "late"):
            r = await c.get_reservation(rid)
            assert r.state == pb.ACTIVE


async def test_a_restart_between_warning_and_expiry_warns_nothing_twice(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url, expiry_interval_s=0.1, expiring_soon_s=60)
    async with stocked(srv) as c:
        ev = Events(srv, types=[SOON])
        await ev.started()
        await c.reserve("cart-1", [("B", "s1", 1)], ttl_seconds=3)
        [soon] = await ev.take(1)
        assert soon.reservation_id == "cart-1"
        await ev.close()
    await srv.stop()
    srv = await make_server(clean_redis_url, expiry_interval_s=0.1, expiring_soon_s=60)
    ev = Events(srv, after_event_id="0-0", types=[SOON, EXPIRED])
    got = await ev.until(EXPIRED, reservation_id="cart-1")
    assert [(e.type, e.reservation_id) for e in got] == [(SOON, "cart-1"), (EXPIRED, "cart-1")]
    assert got[0].event_id == soon.event_id
    await ev.nothing_more(srv)
    await ev.close()


async def test_a_zero_window_warns_nothing(make_server: MakeServer, clean_redis_url: str) -> None:
    srv = await make_server(clean_redis_url, expiry_interval_s=0.1, expiring_soon_s=0)
    async with stocked(srv) as c:
        ev = Events(srv, types=[SOON, EXPIRED])
        await ev.started()
        await c.reserve("cart-1", [("B", "s1", 1)], ttl_seconds=1)
        [expired] = await ev.take(1)
        assert (expired.type, expired.reservation_id) == (EXPIRED, "cart-1")
        await ev.nothing_more(srv)
        await ev.close()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_window_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        Settings.parse(["--expiring-soon-s", value], env={})
    assert exit_.value.code == 2
    assert f"--expiring-soon-s: 0 or more, got {value}" in capsys.readouterr().err
    assert Settings.parse(["--expiring-soon-s", "0"], env={}).expiring_soon_s == 0
    assert Settings.parse([], env={"UNISTOCK_EXPIRING_SOON_S": "60"}).expiring_soon_s == 60
    assert Settings.parse([], env={}).expiring_soon_s == 300
