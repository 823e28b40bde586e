"""TransferReservation (issue 10 item 3) on a real server and Redis: held units move between
locations, every move or none, idempotent on request_id, across a restart; bad moves name the
field. Crash orders are covered by tests/faults/test_flush_prefix_crash.py."""

from __future__ import annotations

import grpc
import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.v1 import inventory_pb2 as pb


def lines(r: pb.Reservation) -> list[tuple[str, str, int]]:
    return sorted((ln.sku, ln.location_id, ln.quantity) for ln in r.lines)


async def test_held_units_move_every_move_or_none_and_once(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["channel"]) as c:
        async with UnistockClient(target(srv), TOKENS["admin"]) as admin:
            await send(
                admin,
                batch(
                    "wms",
                    mv(1, "RECEIPT", "A", "s1", 3),
                    mv(2, "RECEIPT", "A", "s2", 2),
                    mv(3, "RECEIPT", "B", "s1", 1),
                ),
            )
        await c.reserve("o-1", [("A", "s1", 3), ("B", "s1", 1)], kind="ORDER")
        r = await c.transfer_reservation("o-1", "move-1", [("A", "s1", "s2", 2)])
        assert lines(r) == [("A", "s1", 1), ("A", "s2", 2), ("B", "s1", 1)]
        for _ in range(2):  # a retry changes nothing more
            again = await c.transfer_reservation("o-1", "move-1", [("A", "s1", "s2", 2)])
            assert lines(again) == lines(r)
        a1, a2 = await c.get_availability(keys=[("A", "s1"), ("A", "s2")])
        assert (a1.reserved, a1.available, a2.reserved, a2.available) == (1, 2, 2, 0)
        with pytest.raises(UnistockClientError) as err:  # the request_id reused
            await c.transfer_reservation("o-1", "move-1", [("A", "s1", "s2", 1)])
        assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "'move-1' was already used on reservation 'o-1' with other moves" in str(err.value)
        assert "for another transfer" in str(err.value)
        # s2 cannot promise one more: nothing moves, not even the B move that would fit.
        with pytest.raises(UnistockClientError) as err:
            await c.transfer_reservation(
                "o-1", "move-2", [("B", "s1", "s2", 1), ("A", "s1", "s2", 1)]
            )
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert lines(await c.get_reservation("o-1")) == lines(r)
    await srv.stop()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["channel"]) as c:
        assert lines(await c.get_reservation("o-1")) == lines(r)
        assert (await level(c, "A", "s2")).reserved == 2
        await c.release("o-1")
        a1, a2 = await c.get_availability(keys=[("A", "s1"), ("A", "s2")])
        assert (a1.reserved, a2.reserved) == (0, 0)


@pytest.mark.parametrize(
    ("moves", "field"),
    [
        ([], "moves"),
        ([("A", "s1", "s1", 1)], "moves[0].to_location_id"),
        ([("A", "s1", "s2", 0)], "moves[0].quantity"),
        ([("A", "s1", "s2", 9)], "moves[0].quantity"),
        ([("A", "nowhere", "s2", 1)], "moves[0].quantity"),
        ([("A", "s1", "bad id", 1)], "moves[0].to_location_id"),
    ],
)
async def test_bad_moves_name_the_field(
    client: UnistockClient,
    backoffice: UnistockClient,
    moves: list[tuple[str, str, str, int]],
    field: str,
) -> None:
    await send(backoffice, batch("wms", mv(1, "RECEIPT", "A", "s1", 3)))
    await client.reserve("o-1", [("A", "s1", 2)], kind="ORDER")
    with pytest.raises(UnistockClientError) as err:
        await client.transfer_reservation("o-1", "t", moves)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field}:" in str(err.value), err.value


async def test_only_active_reservations_move(
    client: UnistockClient, backoffice: UnistockClient
) -> None:
    await send(backoffice, batch("wms", mv(1, "RECEIPT", "A", "s1", 3)))
    await client.reserve("o-1", [("A", "s1", 1)], kind="ORDER")
    await client.release("o-1")
    with pytest.raises(UnistockClientError) as err:
        await client.transfer_reservation("o-1", "t", [("A", "s1", "s2", 1)])
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(UnistockClientError) as err:
        await client.transfer_reservation("nope", "t", [("A", "s1", "s2", 1)])
    assert err.value.code == grpc.StatusCode.NOT_FOUND
