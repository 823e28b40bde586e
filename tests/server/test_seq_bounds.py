"""An absurd seq cannot blackhole a source (issue 8, item 2.5): a movement's seq may lie at most
MAX_SEQ_JUMP beyond the highest seq applied from its source (durable, so it holds across a
restart); a larger one is rejected naming seq, and the source's real movements still apply."""

from __future__ import annotations

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient
from unistock.server.domain import MAX_SEQ_JUMP
from unistock.v1 import inventory_pb2 as pb


async def test_an_absurd_seq_is_rejected_and_the_source_goes_on(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as c:
        [ack] = await send(
            c,
            batch(
                "wms-7",
                mv(1, "RECEIPT", "HAT", "s1", 10),
                mv(2**64 - 1, "SALE", "HAT", "s1", 1),
            ),
        )
        assert ack.applied == 1
        [rej] = ack.rejections
        assert (rej.source_id, rej.seq, rej.reason) == ("wms-7", 2**64 - 1, pb.INVALID_FIELD)
        assert "seq" in rej.detail
        assert "highest seq applied" in rej.detail
        # the source's next real movements at that position are not duplicates
        [ack] = await send(c, batch("wms-7", mv(2, "SALE", "HAT", "s1", 1)))
        assert (ack.applied, ack.duplicates) == (1, 0)
        assert (await level(c, "HAT", "s1")).on_hand == 9
        # the bound moves with the source: exactly MAX_SEQ_JUMP beyond its highest is fine
        [ack] = await send(c, batch("wms-7", mv(2 + MAX_SEQ_JUMP, "SALE", "HAT", "s1", 1)))
        assert ack.applied == 1
        # a new source starts at most MAX_SEQ_JUMP in
        [ack] = await send(c, batch("wms-8", mv(MAX_SEQ_JUMP + 1, "RECEIPT", "HAT", "s1", 1)))
        assert ack.applied == 0
        assert ack.rejections[0].reason == pb.INVALID_FIELD
    await srv.stop()

    # The highest seq is durable: after a restart the bound is the same.
    srv2 = await make_server(clean_redis_url)
    async with UnistockClient(target(srv2), TOKENS["backoffice"]) as c:
        [ack] = await send(c, batch("wms-7", mv(3 + 2 * MAX_SEQ_JUMP, "SALE", "HAT", "s1", 1)))
        assert ack.applied == 0  # 2 + MAX_SEQ_JUMP + MAX_SEQ_JUMP + 1: one too far
        [ack] = await send(c, batch("wms-7", mv(2 + 2 * MAX_SEQ_JUMP, "SALE", "HAT", "s1", 1)))
        assert ack.applied == 1
        assert (await level(c, "HAT", "s1")).on_hand == 7


async def test_a_batch_without_a_valid_source_advances_nothing(
    backoffice: UnistockClient,
) -> None:
    """A batch refused whole for its source_id carries no SourceAck (as over MQTT)."""
    [ack] = await send(backoffice, batch("bad source", mv(7, "RECEIPT", "HAT", "s1", 1)))
    assert ack.applied == 0
    assert not ack.sources
    assert [r.reason for r in ack.rejections] == [pb.INVALID_FIELD]
    assert "source_id" in ack.rejections[0].detail
