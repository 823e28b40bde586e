"""FindStock (issue 10 item 2) on a real server, Redis and SQLite master data: ranking (one
location covering every line before closer partial ones, distance, the last unit last), modes
(a location without the mode is never offered), max distance, splits, variants, staleness left
to its own test; bad input is INVALID_ARGUMENT naming the field. And the signature journey:
her size is gone in store-1, FindStock finds it at store-2 (1.2 km), an e-reservation there,
picked up at store-2's till: FULFILLED, on_hand - 1."""

from __future__ import annotations

import grpc
import pytest

from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

# Munich: store-2 is 1.2 km north of store-1, store-3 4 km east, the DC 28 km away.
SITES = {
    "store-1": (48.1372, 11.5756),
    "store-2": (48.1480, 11.5756),
    "store-3": (48.1372, 11.6295),
    "dc": (48.35, 11.78),
}


async def master(c: UnistockClient, e_reservation_at_3: bool = True) -> None:
    def store(loc: str, **caps: bool) -> apb.Location:
        lat, lon = SITES[loc]
        return apb.Location(
            location_id=loc, type=apb.STORE, store_id=loc, latitude=lat, longitude=lon,
            has_position=True, **caps,
        )  # fmt: skip

    lat, lon = SITES["dc"]
    await c.upsert_locations(
        [
            store("store-1", click_and_collect=True, e_reservation=True),
            store("store-2", click_and_collect=True, e_reservation=True, ship_from_store=True),
            store("store-3", e_reservation=e_reservation_at_3, ship_from_store=True),
            apb.Location(location_id="dc", type=apb.WAREHOUSE, latitude=lat, longitude=lon,
                         has_position=True),
        ]
    )  # fmt: skip
    await c.upsert_networks([apb.Network(network_id="web", location_ids=list(SITES))])
    await c.upsert_products(
        [
            apb.Product(sku=f"SHOE-{size}", model="SHOE", size=str(size), colour="black")
            for size in (41, 42, 43)
        ]
    )


def ids(resp: pb.FindStockResponse) -> list[str]:
    return [o.location_id for o in resp.options]


async def test_ranking_covers_all_first_then_distance_then_depth(admin: UnistockClient) -> None:
    await master(admin)
    await send(
        admin,
        batch(
            "wms",
            mv(1, "RECEIPT", "SHOE-42", "store-2", 1),  # closest, the last unit
            mv(2, "RECEIPT", "SHOE-42", "store-3", 5),
            mv(3, "RECEIPT", "SHOE-42", "dc", 50),
            mv(4, "RECEIPT", "SHOE-43", "dc", 50),
            mv(5, "RECEIPT", "SHOE-43", "store-3", 1),
        ),
    )
    # One line: nearest first among those that have it.
    r = await admin.find_stock("web", [("SHOE-42", 1)], "SHIP", near_location_id="store-1")
    assert ids(r) == ["store-2", "store-3", "dc"]
    assert [round(o.distance_km, 1) for o in r.options] == [1.2, 4.0, 28.1]
    # Two lines: the DC serves both alone, before closer stores that serve one or part.
    r = await admin.find_stock(
        "web", [("SHOE-42", 2), ("SHOE-43", 2)], "SHIP", near_location_id="store-1"
    )
    assert ids(r) == ["dc", "store-2", "store-3"]  # then the partial ones by distance
    assert [o.covers_all for o in r.options] == [True, False, False]
    assert list(r.options[2].lines) == [
        pb.StockLine(sku="SHOE-42", quantity=2),
        pb.StockLine(sku="SHOE-43", quantity=1),
    ]
    # Without a position: ranked by whether it covers, then stock depth (the last unit last).
    r = await admin.find_stock("web", [("SHOE-42", 1)], "SHIP")
    assert ids(r) == ["dc", "store-3", "store-2"]
    assert all(o.distance_km == 0 for o in r.options)
    # A customer's own position, and limit.
    r = await admin.find_stock("web", [("SHOE-42", 1)], "SHIP", near=SITES["store-3"], limit=1)
    assert ids(r) == ["store-3"]


async def test_a_location_without_a_position_comes_after_those_with_one(
    admin: UnistockClient,
) -> None:
    """Distance unknown: ranked as infinitely far (after every location with a position that
    covers as much), and never within a max distance."""
    await master(admin)
    await admin.upsert_locations([apb.Location(location_id="dc-2", type=apb.WAREHOUSE)])
    await admin.upsert_networks([apb.Network(network_id="web", location_ids=[*SITES, "dc-2"])])
    await send(
        admin,
        batch(
            "wms",
            mv(1, "RECEIPT", "SHOE-42", "dc-2", 90),  # deepest, position unknown
            mv(2, "RECEIPT", "SHOE-42", "dc", 5),
            mv(3, "RECEIPT", "SHOE-42", "store-3", 1),
        ),
    )
    r = await admin.find_stock("web", [("SHOE-42", 1)], "SHIP", near_location_id="store-1")
    assert ids(r) == ["store-3", "dc", "dc-2"]
    assert r.options[2].distance_km == 0  # unknown: 0 on the wire
    r = await admin.find_stock(
        "web", [("SHOE-42", 1)], "SHIP", near_location_id="store-1", max_distance_km=1000
    )
    assert ids(r) == ["store-3", "dc"]


async def test_modes_distance_split_and_variants(admin: UnistockClient) -> None:
    await master(admin, e_reservation_at_3=False)
    await send(
        admin,
        batch(
            "wms",
            mv(1, "RECEIPT", "SHOE-42", "store-1", 3),  # store-1: no ship-from-store
            mv(2, "RECEIPT", "SHOE-42", "store-3", 3),  # store-3: no e-reservation
            mv(3, "RECEIPT", "SHOE-41", "store-2", 2),
            mv(4, "RECEIPT", "SHOE-43", "store-2", 1),
        ),
    )
    r = await admin.find_stock("web", [("SHOE-42", 1)], "SHIP", near_location_id="store-1")
    assert ids(r) == ["store-3"]  # never store-1 (no ship-from-store)
    r = await admin.find_stock("web", [("SHOE-42", 1)], "E_RESERVATION", near_location_id="store-1")
    assert ids(r) == ["store-1"]  # never store-3 (no e-reservation)
    r = await admin.find_stock(
        "web", [("SHOE-42", 1)], "SHIP", near_location_id="store-1", max_distance_km=2
    )
    assert ids(r) == []  # store-3 is 4 km away
    # Split: 5 wanted, no store has 5; store-1 (3) and store-3 (3) together do.
    r = await admin.find_stock(
        "web", [("SHOE-42", 5)], "CLICK_AND_COLLECT", near_location_id="store-1", allow_split=True
    )
    assert [o.covers_all for o in r.options] == [False]
    r = await admin.find_stock(
        "web", [("SHOE-42", 5), ("SHOE-41", 1)], "SHIP", near_location_id="store-2",
        allow_split=True,
    )  # fmt: skip
    assert [(o.location_id, [(ln.sku, ln.quantity) for ln in o.lines]) for o in r.split] == [
        ("store-3", [("SHOE-42", 3)]),
        ("store-2", [("SHOE-41", 1)]),
    ]
    assert not r.split_covers_all  # only 3 of the 5 SHOE-42 can ship
    # Variants: size 42 is asked for; 41 and 43 are at store-2, nearby.
    r = await admin.find_stock(
        "web", [("SHOE-42", 1)], "E_RESERVATION", near_location_id="store-1", include_variants=True
    )
    assert [(v.sku, v.size, v.location_id, v.available) for v in r.variants] == [
        ("SHOE-41", "41", "store-2", 2),
        ("SHOE-43", "43", "store-2", 1),
    ]
    assert all(v.of_sku == "SHOE-42" for v in r.variants)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lines": []}, "lines"),
        ({"lines": [("A", 0)]}, "lines[0].quantity"),
        ({"lines": [("A", 1), ("A", 2)]}, "lines[1].sku"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"near": (91.0, 0.0)}, "near.latitude"),
        ({"near": (0.0, 181.0)}, "near.longitude"),
        ({"near": (1.0, 1.0), "near_location_id": "store-1"}, "near"),
        ({"near_location_id": "nowhere"}, "near_location_id"),
        ({"max_distance_km": 5.0}, "max_distance_km"),
        ({"max_distance_km": -1.0, "near_location_id": "store-1"}, "max_distance_km"),
        ({"network": ""}, "network"),
    ],
)
async def test_bad_requests_name_the_field(
    admin: UnistockClient, kwargs: dict[str, object], field: str
) -> None:
    await master(admin)
    args: dict[str, object] = {"network": "web", "lines": [("A", 1)], "limit": 10}
    args.update(kwargs)
    network, lines = args.pop("network"), args.pop("lines")
    with pytest.raises(UnistockClientError) as err:
        await admin.find_stock(network, lines, "SHIP", **args)  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{field}:" in str(err.value), err.value


async def test_unknown_network_and_mode(admin: UnistockClient) -> None:
    await master(admin)
    with pytest.raises(UnistockClientError) as err:
        await admin.find_stock("nope", [("A", 1)])
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    request = pb.FindStockRequest(lines=[pb.StockLine(sku="A", quantity=1)], network="web", limit=1)
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await admin.stub.FindStock(request, metadata=admin.metadata)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mode" in (raw.value.details() or "")


async def test_her_size_is_gone_here_found_nearby_held_and_picked_up(
    admin: UnistockClient, client: UnistockClient
) -> None:
    await master(admin)
    await send(admin, batch("wms", mv(1, "RECEIPT", "SHOE-42", "store-2", 2)))
    # store-1 has none of her size: FindStock from the store she is in.
    r = await client.find_stock(
        "web", [("SHOE-42", 1)], "E_RESERVATION", near_location_id="store-1", limit=3
    )
    best = r.options[0]
    assert (best.location_id, round(best.distance_km, 1), best.covers_all) == ("store-2", 1.2, True)
    held = await client.reserve(
        "hold-her-42", [("SHOE-42", best.location_id, 1)], kind="E_RESERVATION"
    )
    assert held.reservation.state == pb.ACTIVE
    # Picked up at store-2's till: the sale names the reservation.
    await send(
        admin,
        batch("till-s2", mv(1, "SALE", "SHOE-42", "store-2", 1, reservation_id="hold-her-42")),
    )
    assert (await client.get_reservation("hold-her-42")).state == pb.FULFILLED
    lvl = await level(client, "SHOE-42", "store-2")
    assert (lvl.on_hand, lvl.reserved, lvl.available) == (1, 0, 1)
