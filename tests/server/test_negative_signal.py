"""A position going negative is a fact the server must accept, and must say so (issue 8, item
1.5): a warning naming the position and the movement, and unistock_negative_positions_total."""

from __future__ import annotations

import logging

import pytest

from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient
from unistock.server.actors.inventory import LogBudget
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb


async def test_a_position_going_negative_is_logged_and_counted(
    server: UnistockServer, backoffice: UnistockClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="unistock.server.actors.inventory"):
        [ack] = await send(
            backoffice,
            batch(
                "till-n",
                mv(1, "RECEIPT", "MUG", "s1", 1),
                mv(2, "SALE", "MUG", "s1", 3),  # two more than the books say are there
                mv(3, "SALE", "MUG", "s1", 1),  # still negative: not a new event
            ),
        )
    assert ack.applied == 3
    lvl = await level(backoffice, "MUG", "s1")
    assert (lvl.on_hand, lvl.available) == (-3, 0)
    registry = server.metrics.registry
    assert registry.get_sample_value("unistock_negative_positions_total") == 1
    [record] = [r for r in caplog.records if "went negative" in r.getMessage()]
    message = record.getMessage()
    assert "MUG" in message
    assert "s1" in message
    assert "till-n" in message
    assert "seq 2" in message
    # back above zero, then below again: a new event
    await send(
        backoffice, batch("till-n", mv(4, "RECEIPT", "MUG", "s1", 5), mv(5, "SALE", "MUG", "s1", 3))
    )
    assert registry.get_sample_value("unistock_negative_positions_total") == 2


async def test_non_sellable_going_negative_is_counted_too(
    server: UnistockServer, backoffice: UnistockClient
) -> None:
    """A write-off of more damaged units than the books hold is a fact, and a signal."""
    await send(
        backoffice,
        batch(
            "backoffice",
            mv(1, "ADJUSTMENT", "VASE", "s1", 2, adjustment_sign=pb.DECREASE, reason="broken",
               condition=pb.NON_SELLABLE),
        ),
    )  # fmt: skip
    lvl = await level(backoffice, "VASE", "s1")
    assert (lvl.non_sellable, lvl.negative) == (-2, True)
    assert server.metrics.registry.get_sample_value("unistock_negative_positions_total") == 1


async def test_many_positions_going_negative_at_once_log_a_few_lines_and_count_all(
    server: UnistockServer, backoffice: UnistockClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong feed (a till selling what was never received) drives hundreds of positions
    negative at once: at most 10 lines per 10 s, the next one saying how many were not logged;
    the metric counts every one."""
    clock = [1000.0]
    server.inventory.negative_log = LogBudget(10, 10.0, lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="unistock.server.actors.inventory"):
        await send(backoffice, batch("till-x", *(mv(i, "SALE", f"SKU-{i}", "s1", 1)
                                                 for i in range(1, 201))))  # fmt: skip
        lines = [r.getMessage() for r in caplog.records if "went negative" in r.getMessage()]
        assert len(lines) == 10
        clock[0] += 10
        await send(backoffice, batch("till-x", mv(201, "SALE", "SKU-201", "s1", 1)))
    lines = [r.getMessage() for r in caplog.records if "went negative" in r.getMessage()]
    assert len(lines) == 11
    assert "(190 more went negative since the last line, not logged" in lines[-1]
    registry = server.metrics.registry
    assert registry.get_sample_value("unistock_negative_positions_total") == 201
