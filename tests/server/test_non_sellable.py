"""Sellable and non-sellable stock through gRPC on a real server and Redis (issue 9, item 2):
a damaged return is physically there but never available; inspection restocks it or writes it
off; every step is idempotent like any movement; StockLevel carries non_sellable, at_risk and
negative, also on watch streams and after a restart."""

from __future__ import annotations

import asyncio

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient
from unistock.v1 import inventory_pb2 as pb

KEY = ("JACKET", "s1")


def damaged(seq: int, type_: str, qty: int, **extra: object) -> pb.Movement:
    return mv(seq, type_, *KEY, qty, condition=pb.NON_SELLABLE, **extra)


async def test_a_damaged_return_is_never_available_until_restocked(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", *KEY, 4)))
        [ack] = await send(c, batch("till-1", damaged(1, "RETURN", 2)))
        assert (ack.applied, list(ack.rejections)) == (1, [])
        lvl = await level(c, *KEY)
        assert (lvl.on_hand, lvl.non_sellable, lvl.available) == (4, 2, 4)
        # a channel cannot promise the damaged units
        await c.reserve("r-1", [(*KEY, 4)], kind="ORDER")
        lvl = await level(c, *KEY)
        assert (lvl.available, lvl.reserved) == (0, 4)
        # inspection: one resellable after all, one written off; each sent twice
        inspected = batch(
            "backoffice",
            mv(1, "RESTOCK", *KEY, 1),
            damaged(2, "ADJUSTMENT", 1, adjustment_sign=pb.DECREASE, reason="torn seam"),
        )
        for _ in range(2):
            await send(c, inspected)
        lvl = await level(c, *KEY)
        assert (lvl.on_hand, lvl.non_sellable, lvl.reserved, lvl.available) == (5, 0, 4, 1)
    await srv.stop()
    srv2 = await make_server(clean_redis_url)
    async with UnistockClient(target(srv2), TOKENS["admin"]) as c:
        lvl = await level(c, *KEY)
        assert (lvl.on_hand, lvl.non_sellable, lvl.available) == (5, 0, 1)


async def test_condition_only_on_returns_and_adjustments(backoffice: UnistockClient) -> None:
    c = backoffice
    [ack] = await send(
        c,
        batch(
            "wms",
            mv(1, "RECEIPT", *KEY, 3, condition=pb.NON_SELLABLE),
            mv(2, "SALE", *KEY, 1, condition=pb.NON_SELLABLE),
            mv(3, "RETURN", *KEY, 1, condition=7),  # an unknown enum value
            mv(4, "RETURN", *KEY, 1, condition=pb.SELLABLE),
        ),
    )
    assert ack.applied == 1
    assert [(r.seq, r.reason) for r in ack.rejections] == [
        (1, pb.INVALID_FIELD),
        (2, pb.INVALID_FIELD),
        (3, pb.INVALID_FIELD),
    ]
    assert all("movements[" in r.detail and "condition" in r.detail for r in ack.rejections)
    lvl = await level(c, *KEY)
    assert (lvl.on_hand, lvl.non_sellable) == (1, 0)


async def test_levels_flag_at_risk_and_negative_also_on_watch(admin: UnistockClient) -> None:
    c = admin
    await send(c, batch("wms", mv(1, "RECEIPT", *KEY, 2)))
    await c.reserve("cc-1", [(*KEY, 2)], kind="CLICK_AND_COLLECT")
    lvl = await level(c, *KEY)
    assert (lvl.at_risk, lvl.negative) == (False, False)
    seen: list[pb.StockLevel] = []

    async def watch() -> None:
        async for msg in c.watch(skus=[KEY[0]]):
            seen.extend(msg.levels)
            if any(lv.negative for lv in msg.levels):
                return

    watcher = asyncio.create_task(watch())
    await send(c, batch("till-9", mv(1, "SALE", *KEY, 1)))  # the shelf's last units go
    lvl = await level(c, *KEY)
    assert (lvl.on_hand, lvl.at_risk, lvl.negative) == (1, True, False)
    await send(c, batch("till-9", mv(2, "SALE", *KEY, 2)))
    lvl = await level(c, *KEY)
    assert (lvl.on_hand, lvl.at_risk, lvl.negative) == (-1, True, True)
    await asyncio.wait_for(watcher, 20)
    assert seen[-1].negative
    assert seen[-1].at_risk
