"""A network's stale policy (issue 10: "left out or discounted by the network's policy; stale
locations last or excluded"), on a real server, Redis and SQLite master data, with store
liveness on a test clock (the real agent's side is tests/edge/test_network_staleness_e2e.py):

- EXCLUDE (the default): a stale store's units leave the network's available, FindStock never
  offers it and a network hold never chooses it.
- DISCOUNT at p %: its units count at available * p // 100 (also as sales change them), it is
  offered after every fresh location with `stale` set, and a network hold chooses it only when
  no fresh location can hold the line. Switching policy, or the store coming back, re-weights
  at once.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.actors.liveness import StoreLiveness
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb

LIMIT = 60


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def web(c: UnistockClient, policy: int, percent: int = 0) -> None:
    await c.upsert_networks(
        [
            apb.Network(
                network_id="web",
                location_ids=["near", "far", "dc"],
                staleness_limit_seconds=LIMIT,
                stale_policy=policy,  # type: ignore[arg-type]
                stale_discount_percent=percent,
            )
        ]
    )


async def level(c: UnistockClient) -> tuple[int, int, int]:
    [lv] = await c.get_network_availability("web", ["BOOT"])
    return (lv.available, lv.locations, lv.stale_locations)


async def options(c: UnistockClient) -> list[tuple[str, bool]]:
    r = await c.find_stock("web", [("BOOT", 1)], "SHIP", near=(48.0, 11.0))
    return [(o.location_id, o.stale) for o in r.options]


async def test_exclude_and_discount(
    server: UnistockServer, admin: UnistockClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "unistock.server.actors.networks")
    clock = Clock()
    live = StoreLiveness(clock)
    server.networks.liveness = live
    await admin.upsert_locations(
        [
            # "near" is 1 km from the customer, "far" 50 km; both ship from store.
            apb.Location(location_id="near", type=apb.STORE, store_id="near", latitude=48.009,
                         longitude=11.0, has_position=True, ship_from_store=True),
            apb.Location(location_id="far", type=apb.STORE, store_id="far", latitude=48.45,
                         longitude=11.0, has_position=True, ship_from_store=True),
            apb.Location(location_id="dc", type=apb.WAREHOUSE),
        ]
    )  # fmt: skip
    await web(admin, apb.Network.EXCLUDE)
    await send(
        admin,
        batch(
            "wms",
            mv(1, "RECEIPT", "BOOT", "near", 10),
            mv(2, "RECEIPT", "BOOT", "far", 4),
            mv(3, "RECEIPT", "BOOT", "dc", 1),
        ),
    )
    assert await level(admin) == (15, 3, 0)
    assert await options(admin) == [("near", False), ("far", False), ("dc", False)]

    clock.now += LIMIT + 1  # "near" goes silent; "far" is heard from
    live.heard("far")
    await server.networks.sync()
    assert await level(admin) == (5, 2, 1)  # EXCLUDE: its 10 units left out
    assert "network web: near is stale, its units are left out" in caplog.messages
    assert await options(admin) == [("far", False), ("dc", False)]
    # A network hold never chooses it, though it is nearest and has the most.
    r = await admin.reserve("cart-1", [], network_lines=[("BOOT", "web", 2)], kind="CART")
    [line] = r.reservation.lines
    assert line.location_id == "far"

    await web(admin, apb.Network.DISCOUNT, 50)  # re-weighted at once
    assert "network web: stale policy changed: near's units are now counted at 50 %" in (
        caplog.messages
    )
    assert await level(admin) == (2 + 1 + 5, 2, 1)  # far 4-2, dc 1, near 10 * 50 %
    await send(admin, batch("pos", mv(1, "SALE", "BOOT", "near", 3)))  # 7 left: counts 3
    assert await level(admin) == (2 + 1 + 3, 2, 1)
    # Offered last, flagged; a hold takes it only when no fresh location has the units.
    assert await options(admin) == [("far", False), ("dc", False), ("near", True)]
    r = await admin.reserve("cart-2", [], network_lines=[("BOOT", "web", 2)], kind="CART")
    [line] = r.reservation.lines
    assert line.location_id == "far"  # fresh, though farther than nothing (no position given)
    r = await admin.reserve("cart-3", [], network_lines=[("BOOT", "web", 5)], kind="CART")
    [line] = r.reservation.lines
    assert line.location_id == "near"  # only the stale store has 5
    assert await level(admin) == (0 + 1 + 1, 2, 1)  # near: 2 left, counts 1

    live.heard("near")  # back and caught up: counted in full again
    await server.networks.sync()
    assert await level(admin) == (0 + 1 + 2, 3, 0)
    assert any("network web: near is no longer stale" in m for m in caplog.messages)
    assert await options(admin) == [("near", False), ("dc", False)]

    clock.now += LIMIT + 1
    await web(admin, apb.Network.DISCOUNT, 0)  # both stores stale, counting nothing ...
    assert "network web: far is stale, its units are counted at 0 %" in caplog.messages
    assert await level(admin) == (1, 1, 2)
    assert await options(admin) == [("dc", False), ("near", True)]  # ... yet offered, last
    await web(admin, apb.Network.EXCLUDE)
    assert await level(admin) == (1, 1, 2)
    assert await options(admin) == [("dc", False)]


@pytest.mark.parametrize(
    ("policy", "percent", "field", "words"),
    [
        (apb.Network.EXCLUDE, 10, "networks[0].stale_discount_percent", "only with"),
        (apb.Network.DISCOUNT, 101, "networks[0].stale_discount_percent", "0 to 100"),
        (7, 0, "networks[0].stale_policy", "EXCLUDE or DISCOUNT"),
    ],
)
async def test_bad_policies_name_the_field(
    admin: UnistockClient, policy: int, percent: int, field: str, words: str
) -> None:
    await admin.upsert_locations([apb.Location(location_id="dc", type=apb.WAREHOUSE)])
    with pytest.raises(UnistockClientError) as err:
        await admin.upsert_networks(
            [
                apb.Network(
                    network_id="web",
                    location_ids=["dc"],
                    stale_policy=policy,  # type: ignore[arg-type]
                    stale_discount_percent=percent,
                )
            ]
        )
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field}:" in str(err.value), err.value
    assert words in str(err.value)


async def test_a_stale_store_that_can_hold_a_line_is_chosen_before_fresh_ones_that_cannot(
    server: UnistockServer, admin: UnistockClient
) -> None:
    """DISCOUNT: "a network hold chooses it only when no fresh location can hold the line" -
    and then it does, however many fresh locations hold a few units."""
    clock = Clock()
    live = StoreLiveness(clock)
    server.networks.liveness = live
    fresh = [f"f{i}" for i in range(12)]
    await admin.upsert_locations(
        [apb.Location(location_id=loc, type=apb.WAREHOUSE) for loc in fresh]
        + [apb.Location(location_id="old", type=apb.STORE, store_id="old", ship_from_store=True)]
    )
    await admin.upsert_networks(
        [
            apb.Network(
                network_id="web",
                location_ids=[*fresh, "old"],
                staleness_limit_seconds=LIMIT,
                stale_policy=apb.Network.DISCOUNT,
                stale_discount_percent=50,
            )
        ]
    )
    await send(
        admin,
        batch(
            "wms",
            *(mv(i, "RECEIPT", "BOOT", loc, 1) for i, loc in enumerate(fresh, 1)),
            mv(99, "RECEIPT", "BOOT", "old", 7),
        ),
    )
    clock.now += LIMIT + 1
    await server.networks.sync()
    assert (await level(admin))[2] == 1  # "old" is stale
    r = await admin.reserve("cart-5", [], network_lines=[("BOOT", "web", 5)], kind="CART")
    [line] = r.reservation.lines
    assert line.location_id == "old"
