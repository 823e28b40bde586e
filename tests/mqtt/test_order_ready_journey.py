"""'Your order is ready' (issue 11): a click & collect reservation made online reaches the
store app of the store holding it (READY_FOR_PICKUP on MQTT unistock/v1/stores/{store}/events)
and the customer's reservation watch (CREATED); its pickup at the till reaches the customer's
watch (FULFILLED). Real Mosquitto and Redis."""

from __future__ import annotations

import asyncio

from tests.fixtures.server import TOKENS, MakeServer, start_mqtt_server, target
from tests.mqtt.test_events_mqtt import DEADLINE, published_from_now, store_app, take
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

U = pb.ReservationUpdate


async def test_your_order_is_ready(
    make_server: MakeServer, clean_redis_url: str, mosquitto_broker: MosquittoBroker
) -> None:
    srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
    async with UnistockClient(target(srv), TOKENS["admin"]) as admin:
        await admin.upsert_locations(
            [apb.Location(location_id="store-2", type=apb.STORE, store_id="store-2")]
        )
        receipt = pb.Movement(seq=1, sku="BOOT-42", location_id="store-2", type=pb.RECEIPT,
                              quantity=3)  # fmt: skip
        [a async for a in admin.apply_movements([pb.MovementBatch(source_id="wms",
                                                                  movements=[receipt])])]  # fmt: skip
    await published_from_now(srv)
    async with (
        store_app(mosquitto_broker, "unistock/v1/stores/store-2/events") as app,
        UnistockClient(target(srv), TOKENS["channel"]) as web,
        UnistockClient(target(srv), TOKENS["backoffice"]) as customer_service,
    ):
        watch = customer_service.watch_reservations(customer_id="ann")
        first = await anext(watch)
        assert first.snapshot_complete
        assert not first.updates
        await web.reserve(
            "web-77", [("BOOT-42", "store-2", 1)], kind="CLICK_AND_COLLECT", channel="web",
            customer_id="ann",
        )  # fmt: skip
        # The store app: "to prepare for pickup".
        while True:
            topic, ev = (await take(app, 1))[0]
            if ev.type == pb.READY_FOR_PICKUP:
                break
        assert topic == "unistock/v1/stores/store-2/events"
        assert (ev.reservation_id, ev.location_id, ev.sku) == ("web-77", "store-2", "BOOT-42")
        assert [(ln.sku, ln.quantity) for ln in ev.lines] == [("BOOT-42", 1)]
        assert ev.detail.endswith("ready for pickup at store-2 (1 unit)"), ev.detail
        # The customer's watch: her new reservation.
        async with asyncio.timeout(DEADLINE):
            created = await anext(watch)
        [update] = created.updates
        assert update.reservation.reservation_id == "web-77"
        assert list(update.transitions) == [U.CREATED]
        assert update.reservation.state == pb.ACTIVE
        # She picks it up at the till: a SALE naming the reservation.
        pickup = pb.Movement(seq=1, sku="BOOT-42", location_id="store-2", type=pb.SALE,
                             quantity=1, reservation_id="web-77")  # fmt: skip
        [a async for a in customer_service.apply_movements(
            [pb.MovementBatch(source_id="till-1", movements=[pickup])])]  # fmt: skip
        async with asyncio.timeout(DEADLINE):
            done = await anext(watch)
        [update] = done.updates
        assert list(update.transitions) == [U.FULFILLED]
        assert update.reservation.state == pb.FULFILLED
        await watch.aclose()
