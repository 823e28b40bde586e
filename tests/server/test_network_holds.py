"""Network holds (issue 10 item 3, first part): a reservation line may name a network instead
of a location; the server chooses one location by the sourcing rules, all-or-nothing with the
other lines, and the line names both. Real server, Redis and SQLite master data."""

from __future__ import annotations

import grpc
import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import InsufficientStockError, UnistockClient
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb


async def master(c: UnistockClient) -> None:
    await c.upsert_locations(
        [
            apb.Location(location_id="s1", type=apb.STORE, click_and_collect=True),
            apb.Location(location_id="s2", type=apb.STORE, click_and_collect=True,
                         ship_from_store=True),
            apb.Location(location_id="dc", type=apb.WAREHOUSE),
        ]
    )  # fmt: skip
    await c.upsert_networks([apb.Network(network_id="web", location_ids=["s1", "s2", "dc"])])


async def hold(
    c: UnistockClient, rid: str, lines: list[pb.ReservationLine], kind: int = pb.CART
) -> pb.ReserveResponse:
    req = pb.ReserveRequest(reservation_id=rid, lines=lines, kind=kind)
    resp: pb.ReserveResponse = await c.stub.Reserve(req, metadata=c.metadata)
    return resp


def web(sku: str, qty: int) -> pb.ReservationLine:
    return pb.ReservationLine(sku=sku, network="web", quantity=qty)


async def test_a_network_line_is_held_at_the_best_location_and_named(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await master(c)
        await send(
            c,
            batch(
                "wms",
                mv(1, "RECEIPT", "A", "s1", 9),  # s1 does not ship: never chosen for a CART
                mv(2, "RECEIPT", "A", "s2", 2),
                mv(3, "RECEIPT", "A", "dc", 5),
            ),
        )
        r = await hold(c, "cart-1", [web("A", 2)])
        [line] = r.reservation.lines
        assert (line.location_id, line.network, line.quantity) == ("dc", "web", 2)  # deepest
        again = await hold(c, "cart-1", [web("A", 2)])  # the same request: the same hold
        assert again.replayed
        assert list(again.reservation.lines) == [line]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hold(c, "cart-1", [web("A", 3)])
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # Click & collect may be served by s1; a location line of the same request keeps its
        # position to itself (the network line goes elsewhere).
        r = await hold(
            c,
            "cc-1",
            [pb.ReservationLine(sku="A", location_id="s1", quantity=1), web("A", 2)],
            kind=pb.CLICK_AND_COLLECT,
        )
        assert [(ln.location_id, ln.network) for ln in r.reservation.lines] == [
            ("s1", ""),
            ("s2", "web"),
        ]
        assert (await level(c, "A", "s2")).reserved == 2
        # No single location can promise 7 for shipping: the whole reservation fails.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await hold(c, "cart-2", [pb.ReservationLine(sku="A", location_id="dc", quantity=1),
                                     web("A", 7)])  # fmt: skip
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "web" in (err.value.details() or "")
        assert (await level(c, "A", "dc")).reserved == 2  # nothing of cart-2 held
        # The short line says the most one location of the network could promise: dc's 3.
        with pytest.raises(InsufficientStockError) as short:
            await c.reserve("cart-2", [], network_lines=[("A", "web", 7)])
        [line] = short.value.short_lines
        assert (line.sku, line.location_id, line.requested, line.available) == ("A", "web", 7, 3)
    await srv.stop()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        got = await c.get_reservation("cart-1")
        assert [(ln.location_id, ln.network) for ln in got.lines] == [("dc", "web")]
        await c.release("cart-1")
        assert (await level(c, "A", "dc")).reserved == 0


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (pb.ReservationLine(sku="A", location_id="s1", network="web", quantity=1), "lines[0]"),
        (pb.ReservationLine(sku="A", network="bad id", quantity=1), "lines[0].network"),
        (pb.ReservationLine(sku="A", quantity=1), "lines[0].location_id"),
    ],
)
async def test_bad_network_lines_name_the_field(
    client: UnistockClient, line: pb.ReservationLine, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hold(client, "r", [line])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field), err.value.details()


async def test_an_unknown_network_is_not_found(admin: UnistockClient) -> None:
    await master(admin)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hold(admin, "r", [pb.ReservationLine(sku="A", network="nope", quantity=1)])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
