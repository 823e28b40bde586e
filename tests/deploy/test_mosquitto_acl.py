"""The production Mosquitto ACL, password file and limits, against a real broker.

The broker runs with ``deploy/mosquitto/unistock.acl`` (via :func:`write_acl`), a password
file made by ``mosquitto_passwd`` and the size / flow limits of
``deploy/mosquitto/mosquitto.conf``; plain TCP, except for the last test which runs the
production config itself with TLS.

Store agents are played by :class:`RawMqtt`, a minimal MQTT 5 / 3.1.1 client that reports
the broker's reason codes byte for byte (paho-mqtt 2.2 cannot even decode the PUBACK
reason 149 that ``message_size_limit`` produces). The server side uses aiomqtt, as the
Unistock server does.

"Never delivered" is proved without sleeping: after the refused message, the same
connection sends an allowed *sentinel*; the broker handles one connection's packets in
order and keeps per-subscriber order, so when the sentinel is the next message the
observer gets, the refused one was dropped.

Facts pinned here (Mosquitto 2.0.11, paho-mqtt 2.2, aiomqtt 2.5):

* MQTT 5: a publish denied by the ACL gets PUBACK reason 135 (not authorized); on MQTT
  3.1.1 the PUBACK says success. Either way the message is dropped.
* aiomqtt's ``publish()`` ignores the PUBACK reason code: it returns ``None`` on 135.
* ``acl_file`` does not check subscriptions: SUBACK grants QoS 1 for another store's acks
  topic; the ACL is applied when each message is delivered.
* ``message_size_limit`` → PUBACK reason 149 (a code MQTT 5 does not allow in a PUBACK;
  paho treats it as a protocol error and disconnects); ``max_packet_size`` → the broker
  closes the connection.
* Wrong or missing credentials → CONNACK 135 (MQTT 5) / 5 (MQTT 3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from unistock.devtools.mqtt_auth import (
    EMBEDDED_ACL,
    SERVER_USERNAME,
    acl_rules,
    deploy_broker_limits,
    deploy_file,
    reader_username,
    render_deploy_config,
    write_acl,
    write_password_file,
    write_self_signed_certs,
)
from unistock.devtools.services import MosquittoBroker
from unistock.edge.readers import DEFAULT_READER_TOPIC, ReaderListener

pytestmark = pytest.mark.timeout(30)

PASSWORDS = {
    SERVER_USERNAME: "server-secret",
    "s1": "s1-secret",
    "s2": "s2-secret",
    reader_username("s1"): "readers-s1-secret",
    reader_username("s2"): "readers-s2-secret",
}

# MQTT 5 reason codes (and the MQTT 3.1.1 CONNACK return code) asserted below.
SUCCESS = 0
NO_MATCHING_SUBSCRIBERS = 16
NOT_AUTHORIZED = 135
PACKET_TOO_LARGE = 149
V311_CONNACK_NOT_AUTHORIZED = 5

WAIT = 5.0  # seconds allowed for anything that should happen


def movements(store: str) -> str:
    return f"unistock/v1/stores/{store}/movements"


def acks(store: str) -> str:
    return f"unistock/v1/stores/{store}/acks"


def status(store: str) -> str:
    return f"unistock/v1/stores/{store}/status"


def tags(store: str, reader: str = "fx-door") -> str:
    return f"unistock/v1/stores/{store}/readers/{reader}/tags"


def reader_sync(store: str) -> str:
    return f"unistock/v1/stores/{store}/agent/reader-sync"


# --------------------------------------------------------------------------- raw client


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def _bin(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class RawMqtt:
    """A minimal asyncio MQTT 5 / 3.1.1 client exposing raw reason codes.

    QoS 0/1 only, one outstanding PUBLISH or SUBSCRIBE at a time, no topic aliases.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.version = version
        self._mid = 0
        self._acks: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.disconnect_reason: int | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        version: int = 5,
        will: Will | None = None,
    ) -> tuple[RawMqtt, int | None]:
        """Connect; return the client and the CONNACK reason (``None``: no CONNACK)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, version)
        v5 = version == 5
        flags = 0x02  # clean start / clean session
        payload = _str(client_id)
        if will is not None:
            flags |= 0x04 | (1 << 3) | (0x20 if will.retain else 0)  # will, QoS 1, retain
            payload += (b"\x00" if v5 else b"") + _str(will.topic) + _bin(will.payload)
        if username is not None:
            flags |= 0x80
            payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _bin(password.encode())
        header = _str("MQTT") + bytes([version, flags]) + struct.pack("!H", 30)
        if v5:
            header += b"\x00"  # no properties
        writer.write(_packet(0x10, header + payload))
        await writer.drain()
        try:
            first, body = await asyncio.wait_for(client._read_packet(), WAIT)
        except (asyncio.IncompleteReadError, ConnectionError):
            await client.close(graceful=False)
            return client, None
        assert first >> 4 == 2, f"expected CONNACK, got packet type {first >> 4}"
        client._task = asyncio.create_task(client._read_loop())
        return client, body[1]

    async def _read_packet(self) -> tuple[int, bytes]:
        first = (await self._reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await self._reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await self._reader.readexactly(length)

    def _skip_properties(self, body: bytes, pos: int) -> int:
        if self.version != 5:
            return pos
        length, shift = 0, 0
        while True:
            byte = body[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return pos + length

    async def _read_loop(self) -> None:
        try:
            while True:
                first, body = await self._read_packet()
                kind = first >> 4
                if kind == 3:  # PUBLISH
                    qos = (first >> 1) & 3
                    (tlen,) = struct.unpack_from("!H", body)
                    topic = body[2 : 2 + tlen].decode()
                    pos = 2 + tlen
                    if qos:
                        mid = body[pos : pos + 2]
                        pos += 2
                        self._writer.write(_packet(0x40, mid))  # PUBACK (success)
                    pos = self._skip_properties(body, pos)
                    self.messages.put_nowait((topic, body[pos:]))
                elif kind in (4, 9):  # PUBACK, SUBACK
                    (mid,) = struct.unpack_from("!H", body)
                    self._acks.put_nowait((kind, mid, body[2:]))
                elif kind == 14:  # DISCONNECT from the broker (MQTT 5)
                    self.disconnect_reason = body[0] if body else SUCCESS
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    async def _await_ack(self, kind: int, mid: int) -> bytes | None:
        ack = asyncio.ensure_future(self._acks.get())
        closed = asyncio.ensure_future(self.closed.wait())
        done, _ = await asyncio.wait({ack, closed}, timeout=WAIT, return_when="FIRST_COMPLETED")
        closed.cancel()
        if ack not in done:
            ack.cancel()
            return None
        got_kind, got_mid, rest = ack.result()
        assert (got_kind, got_mid) == (kind, mid)
        return rest

    def _next_mid(self) -> int:
        self._mid = self._mid % 65535 + 1
        return self._mid

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Publish; for QoS 1 return the PUBACK reason (``None``: connection lost first)."""
        mid = self._next_mid()
        body = _str(topic) + (struct.pack("!H", mid) if qos else b"")
        body += (b"\x00" if self.version == 5 else b"") + payload
        try:
            self._writer.write(_packet(0x30 | (qos << 1) | int(retain), body))
            await self._writer.drain()
        except ConnectionError:
            return None
        if not qos:
            return SUCCESS
        rest = await self._await_ack(4, mid)
        if rest is None:
            return None
        return rest[0] if rest else SUCCESS  # MQTT 3.1.1 and "success" omit the code

    async def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        """Subscribe; return the SUBACK reason codes (granted QoS, or >= 128 on failure)."""
        mid = self._next_mid()
        body = struct.pack("!H", mid) + (b"\x00" if self.version == 5 else b"")
        self._writer.write(_packet(0x82, body + _str(topic_filter) + bytes([qos])))
        await self._writer.drain()
        rest = await self._await_ack(9, mid)
        assert rest is not None, "no SUBACK"
        return list(rest[self._skip_properties(rest, 0) :])

    async def next_message(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def close(self, *, graceful: bool = True) -> None:
        """DISCONNECT and close, or (``graceful=False``) drop the socket so the will fires."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            if graceful:
                self._writer.write(b"\xe0\x00")
                await self._writer.drain()
            self._writer.close()
            await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker with the production ACL, the users of :data:`PASSWORDS` and prod limits."""
    passwd = write_password_file(tmp_path / "unistock.passwd", PASSWORDS)
    acl = write_acl(tmp_path / "unistock.acl", reader_stores=["s1", "s2"])
    with MosquittoBroker(
        tmp_path / "mosquitto",
        allow_anonymous=False,
        password_file=passwd,
        acl_file=acl,
        extra_config=deploy_broker_limits(),
    ) as srv:
        yield srv


@contextlib.asynccontextmanager
async def agent(
    port: int, store: str, *, version: int = 5, username: str | None = None
) -> AsyncIterator[RawMqtt]:
    """A store's agent (username = store id), or another user of the store's (``username``)."""
    user = username or store
    client, rc = await RawMqtt.connect(
        port, client_id=f"agent-{user}", username=user, password=PASSWORDS[user], version=version
    )
    assert rc == SUCCESS
    try:
        yield client
    finally:
        await client.close()


def server_client(port: int, **kwargs: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier="unistock-server-test",
        username=SERVER_USERNAME,
        password=PASSWORDS[SERVER_USERNAME],
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=WAIT,
        **kwargs,  # type: ignore[arg-type]
    )


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(client.messages), WAIT)


def limit(name: str) -> int:
    (line,) = (line for line in deploy_broker_limits() if line.split()[0] == name)
    return int(line.split()[1])


# --------------------------------------------------------------------------- tests


def test_embedded_acl_matches_the_deploy_file() -> None:
    path = deploy_file("unistock.acl")
    assert path is not None
    assert acl_rules(EMBEDDED_ACL) == acl_rules(path.read_text())


async def test_store_publishes_its_movements_and_the_server_receives_them(
    broker: MosquittoBroker,
) -> None:
    async with server_client(broker.port) as server, agent(broker.port, "s1") as s1:
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        assert await s1.publish(movements("s1"), b"batch-1") == SUCCESS
        msg = await next_message(server)
        assert (str(msg.topic), msg.payload, msg.qos) == (movements("s1"), b"batch-1", 1)


async def test_server_acks_reach_only_their_store(broker: MosquittoBroker) -> None:
    async with (
        server_client(broker.port) as server,
        agent(broker.port, "s1") as s1,
        agent(broker.port, "s2") as s2,
    ):
        assert await s1.subscribe(acks("s1")) == [1]
        assert await s2.subscribe(acks("s2")) == [1]
        await server.publish(acks("s1"), b"ack-s1", qos=1)
        await server.publish(acks("s2"), b"ack-s2", qos=1)
        assert await s1.next_message() == (acks("s1"), b"ack-s1")
        assert await s2.next_message() == (acks("s2"), b"ack-s2")


async def test_mqtt5_publish_to_another_store_is_refused_with_135(
    broker: MosquittoBroker,
) -> None:
    async with server_client(broker.port) as server, agent(broker.port, "s1") as s1:
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        await server.subscribe("unistock/v1/stores/+/status", qos=1)
        for topic in (movements("s2"), status("s2"), acks("s1"), acks("s2"), "unistock/v1/x"):
            assert await s1.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        assert await s1.publish(movements("s1"), b"sentinel") == SUCCESS
        msg = await next_message(server)
        assert (str(msg.topic), msg.payload) == (movements("s1"), b"sentinel")


async def test_server_cannot_publish_movements(broker: MosquittoBroker) -> None:
    async with server_client(broker.port) as server, agent(broker.port, "s1") as s1:
        await server.subscribe(movements("s1"), qos=1)
        # The server user may not inject movements: nobody (not even itself) gets them.
        # aiomqtt waits for the PUBACK, so the broker has handled it before s1's sentinel.
        await server.publish(movements("s1"), b"forged", qos=1)
        assert await s1.publish(movements("s1"), b"sentinel") == SUCCESS
        assert (await next_message(server)).payload == b"sentinel"


async def test_aiomqtt_publish_ignores_reason_135(broker: MosquittoBroker) -> None:
    """aiomqtt 2.5 returns normally from a refused publish; paho's callback sees 135.

    An agent built on aiomqtt must read the reason code itself, e.g. by wrapping the
    paho client's ``on_publish`` as below, or rely on the server's acks alone.
    """
    seen: list[int] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username="s1",
        password=PASSWORDS["s1"],
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=WAIT,
    ) as client:
        aiomqtt_on_publish = client._on_publish

        def spy(
            paho: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties
        ) -> None:
            seen.append(rc.value)
            aiomqtt_on_publish(paho, userdata, mid, rc, props)

        client._client.on_publish = spy
        # Both calls return normally (None): the refusal is invisible to the caller.
        await client.publish(movements("s2"), b"forged", qos=1)
        await client.publish(movements("s1"), b"own", qos=1)
    assert seen == [NOT_AUTHORIZED, NO_MATCHING_SUBSCRIBERS]


async def test_mqtt311_denied_publish_looks_successful_but_is_dropped(
    broker: MosquittoBroker,
) -> None:
    """The MQTT 3.1.1 trap: PUBACK cannot carry a reason, so a refusal looks like success."""
    async with server_client(broker.port) as server, agent(broker.port, "s1", version=4) as s1:
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        assert await s1.publish(movements("s2"), b"forged") == SUCCESS  # a lie
        assert await s1.publish(movements("s1"), b"sentinel") == SUCCESS
        msg = await next_message(server)
        assert (str(msg.topic), msg.payload) == (movements("s1"), b"sentinel")


@pytest.mark.parametrize(
    ("username", "password", "version", "expected"),
    [
        (None, None, 5, NOT_AUTHORIZED),
        ("s1", "wrong", 5, NOT_AUTHORIZED),
        ("nobody", "whatever", 5, NOT_AUTHORIZED),
        ("s1", None, 5, NOT_AUTHORIZED),
        (None, None, 4, V311_CONNACK_NOT_AUTHORIZED),
        ("s1", "wrong", 4, V311_CONNACK_NOT_AUTHORIZED),
    ],
)
async def test_anonymous_and_bad_credentials_are_refused(
    broker: MosquittoBroker,
    username: str | None,
    password: str | None,
    version: int,
    expected: int,
) -> None:
    client, rc = await RawMqtt.connect(
        broker.port, client_id="intruder", username=username, password=password, version=version
    )
    await client.close(graceful=False)
    assert rc == expected


async def test_aiomqtt_raises_connect_error_on_wrong_password(broker: MosquittoBroker) -> None:
    client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username="s1",
        password="wrong",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=WAIT,
    )
    with pytest.raises(MqttConnectError) as info:
        await client.__aenter__()
    assert info.value.rc == NOT_AUTHORIZED


async def test_store_cannot_read_another_stores_acks(broker: MosquittoBroker) -> None:
    async with (
        server_client(broker.port) as server,
        agent(broker.port, "s1") as s1,
        agent(broker.port, "s2") as s2,
    ):
        # acl_file does not check SUBSCRIBE: 2.0.11 grants QoS 1 (later versions may
        # answer 135). A SUBACK is no evidence of access either way.
        assert (await s1.subscribe(acks("s2")))[0] in (1, NOT_AUTHORIZED)
        assert (await s1.subscribe("unistock/v1/stores/+/acks"))[0] in (1, NOT_AUTHORIZED)
        assert (await s1.subscribe("unistock/v1/stores/#"))[0] in (1, NOT_AUTHORIZED)
        assert await s2.subscribe(acks("s2")) == [1]
        await server.publish(acks("s2"), b"for-s2", qos=1)
        await server.publish(acks("s1"), b"sentinel", qos=1)
        assert await s2.next_message() == (acks("s2"), b"for-s2")  # it was published
        # s1 gets the sentinel first (once per matching subscription: mosquitto does not
        # merge overlapping subscriptions), so "for-s2" was withheld from it.
        assert await s1.next_message() == (acks("s1"), b"sentinel")
        assert await s1.next_message() == (acks("s1"), b"sentinel")
        assert s1.messages.empty()


async def test_a_store_reads_only_its_own_events(broker: MosquittoBroker) -> None:
    def events(store: str) -> str:
        return f"unistock/v1/stores/{store}/events"

    async with (
        server_client(broker.port) as server,
        agent(broker.port, "s1") as s1,
        agent(broker.port, "s2") as s2,
    ):
        assert (await s1.subscribe("unistock/v1/stores/+/events"))[0] in (1, NOT_AUTHORIZED)
        assert await s2.subscribe(events("s2")) == [1]
        await server.publish(events("s2"), b"for-s2", qos=1)
        await server.publish(events("s1"), b"sentinel", qos=1)
        assert await s2.next_message() == (events("s2"), b"for-s2")  # it was published
        assert await s1.next_message() == (events("s1"), b"sentinel")  # s2's withheld
        assert s1.messages.empty()
        # A store cannot publish events (for itself or another store).
        for topic in (events("s1"), events("s2")):
            assert await s1.publish(topic, b"forged") == NOT_AUTHORIZED, topic


async def test_agent_reads_its_readers_tags_and_does_the_sync_round_trip(
    broker: MosquittoBroker,
) -> None:
    """The agent's own ReaderListener, with the store's credentials, on the production ACL."""
    received: list[tuple[str, bytes]] = []
    listener = ReaderListener(
        f"mqtt://s1:{PASSWORDS['s1']}@127.0.0.1:{broker.port}",
        [DEFAULT_READER_TOPIC.replace("{store_id}", "s1")],
        identifier="unistock-agent-s1-readers",
        sync_topic=reader_sync("s1"),
        on_message=lambda topic, payload: received.append((topic, payload)),
    )
    connected = asyncio.Event()
    session = asyncio.create_task(listener.session(connected.set))
    try:
        await asyncio.wait_for(connected.wait(), WAIT)
        async with agent(broker.port, "s1", username=reader_username("s1")) as reader:
            assert await reader.publish(tags("s1"), b'{"epc": "3034257BF400B7800004CB2F"}') == (
                SUCCESS
            )
        # The marker goes out on reader-sync and comes back behind the read: both allowed.
        assert await listener.sync(WAIT) is True
        assert received == [(tags("s1"), b'{"epc": "3034257BF400B7800004CB2F"}')]
    finally:
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)


async def test_store_cannot_read_another_stores_reader_tags(broker: MosquittoBroker) -> None:
    async with (
        agent(broker.port, "s1") as s1,
        agent(broker.port, "s1", username=reader_username("s1")) as readers_s1,
        agent(broker.port, "s2", username=reader_username("s2")) as readers_s2,
    ):
        # A SUBACK is no evidence (acl_file does not check SUBSCRIBE); delivery is.
        assert (await s1.subscribe(tags("s2", "+")))[0] in (1, NOT_AUTHORIZED)
        assert (await s1.subscribe(reader_sync("s2")))[0] in (1, NOT_AUTHORIZED)
        assert await s1.subscribe("unistock/v1/stores/+/readers/+/tags") == [1]
        assert await readers_s2.publish(tags("s2"), b"s2-read") == SUCCESS
        assert await readers_s1.publish(tags("s1"), b"sentinel") == SUCCESS
        # The sentinel is the first message s1 gets: s2's read was withheld from it.
        assert await s1.next_message() == (tags("s1"), b"sentinel")
        assert s1.messages.empty()


async def test_readers_and_agents_publish_only_their_own_stores_reader_topics(
    broker: MosquittoBroker,
) -> None:
    async with (
        server_client(broker.port) as server,
        agent(broker.port, "s1") as s1,
        agent(broker.port, "s1", username=reader_username("s1")) as readers_s1,
    ):
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        assert await s1.subscribe(tags("s1", "+")) == [1]
        # The readers' user may publish tag reads of its store, nothing else.
        for topic in (tags("s2"), reader_sync("s1"), movements("s1"), status("s1"), tags("x")):
            assert await readers_s1.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        # An agent may not feed another store's count, nor its sync barrier.
        for topic in (tags("s2"), reader_sync("s2")):
            assert await s1.publish(topic, b"forged") == NOT_AUTHORIZED, topic
        assert await readers_s1.publish(tags("s1", "fx-backroom"), b"read") == SUCCESS
        assert await s1.next_message() == (tags("s1", "fx-backroom"), b"read")
        assert await s1.publish(movements("s1"), b"sentinel") == SUCCESS
        msg = await next_message(server)
        assert (str(msg.topic), msg.payload) == (movements("s1"), b"sentinel")


async def test_will_is_published_only_to_the_agents_own_status(
    broker: MosquittoBroker,
) -> None:
    async with server_client(broker.port) as server:
        await server.subscribe("unistock/v1/stores/+/status", qos=1)
        # Mosquitto 2.0.11 accepts a foreign will at CONNECT and drops it when it fires.
        foreign, rc = await RawMqtt.connect(
            broker.port,
            client_id="agent-s1-a",
            username="s1",
            password=PASSWORDS["s1"],
            will=Will(status("s2"), b"offline"),
        )
        assert rc == SUCCESS
        await foreign.close(graceful=False)
        await asyncio.wait_for(foreign.closed.wait(), WAIT)
        own, rc = await RawMqtt.connect(
            broker.port,
            client_id="agent-s1-b",
            username="s1",
            password=PASSWORDS["s1"],
            will=Will(status("s1"), b"offline"),
        )
        assert rc == SUCCESS
        assert await own.publish(status("s1"), b"online", retain=True) == SUCCESS
        await own.close(graceful=False)
        first, second = await next_message(server), await next_message(server)
        assert [(str(m.topic), m.payload) for m in (first, second)] == [
            (status("s1"), b"online"),
            (status("s1"), b"offline"),
        ]
    # The retained status is the will; nothing retained for s2.
    async with server_client(broker.port) as late:
        await late.subscribe(status("s2"), qos=1)
        await late.subscribe(status("s1"), qos=1)
        msg = await next_message(late)
        assert (str(msg.topic), msg.payload, msg.retain) == (status("s1"), b"offline", True)


async def test_payload_over_message_size_limit_is_refused(broker: MosquittoBroker) -> None:
    size_limit = limit("message_size_limit")
    assert size_limit == 1024 * 1024
    async with server_client(broker.port) as server, agent(broker.port, "s1") as s1:
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        assert await s1.publish(movements("s1"), b"x" * size_limit) == SUCCESS
        assert await s1.publish(movements("s1"), b"x" * (size_limit + 1)) == PACKET_TOO_LARGE
        assert await s1.publish(movements("s1"), b"sentinel") == SUCCESS
        payload = (await next_message(server)).payload
        assert isinstance(payload, bytes)
        assert len(payload) == size_limit
        assert (await next_message(server)).payload == b"sentinel"


async def test_10mb_payload_is_refused_and_the_connection_closed(
    broker: MosquittoBroker,
) -> None:
    assert limit("max_packet_size") < 10 * 1024 * 1024
    async with server_client(broker.port) as server, agent(broker.port, "s1") as s1:
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        assert await s1.publish(movements("s1"), b"x" * (10 * 1024 * 1024)) is None
        await asyncio.wait_for(s1.closed.wait(), WAIT)
        async with agent(broker.port, "s1") as again:
            assert await again.publish(movements("s1"), b"sentinel") == SUCCESS
        assert (await next_message(server)).payload == b"sentinel"
    assert "oversize packet" in broker.log_tail(20)


async def test_aiomqtt_oversized_publish_times_out_and_disconnects(
    broker: MosquittoBroker,
) -> None:
    """With paho/aiomqtt, reason 149 is a "malformed packet": publish() hangs, then fails.

    Agents must keep each payload below ``message_size_limit`` themselves.
    """
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username="s1",
        password=PASSWORDS["s1"],
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=1.0,
    ) as client:
        with pytest.raises(aiomqtt.MqttError):
            await client.publish(movements("s1"), b"x" * (limit("message_size_limit") + 1), qos=1)
        with pytest.raises(aiomqtt.MqttError):
            await client.publish(movements("s1"), b"small", qos=1)


# --------------------------------------------------------------------- production config


class DeployBroker(MosquittoBroker):
    """Runs ``deploy/mosquitto/mosquitto.conf`` itself, relocated under ``data_dir``."""

    def config_text(self) -> str:
        run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
        return render_deploy_config(self.data_dir, self.port, run_as=run_as)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log" / "mosquitto.log"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_production_config_serves_mqtt5_over_tls(tmp_path: Path) -> None:
    root = tmp_path / "prod"
    etc = root / "etc"
    ca, _, _ = write_self_signed_certs(etc / "certs")
    write_password_file(etc / "unistock.passwd", PASSWORDS)
    write_acl(etc / "unistock.acl")
    tls = aiomqtt.TLSParameters(ca_certs=str(ca))
    with DeployBroker(root) as srv:
        async with (
            server_client(srv.port, tls_params=tls) as server,
            aiomqtt.Client(
                "127.0.0.1",
                srv.port,
                username="s1",
                password=PASSWORDS["s1"],
                protocol=aiomqtt.ProtocolVersion.V5,
                tls_params=tls,
                timeout=WAIT,
            ) as s1,
        ):
            await server.subscribe("unistock/v1/stores/+/movements", qos=1)
            await s1.publish(movements("s1"), b"over-tls", qos=1)
            assert (await next_message(server)).payload == b"over-tls"
        # Plain MQTT on the TLS port gets no CONNACK.
        plain, rc = await RawMqtt.connect(
            srv.port, client_id="plain", username="s1", password=PASSWORDS["s1"]
        )
        await plain.close(graceful=False)
        assert rc is None
        log = srv.log_path.read_text()
    assert "Opening ipv4 listen socket" in log
