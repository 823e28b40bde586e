"""`unistock history` and `unistock kpis`: the real CLI against a real server whose ledger
writer runs in process (SQLite in its data directory): tables, JSON, limits, usage errors
(exit 2 naming the flag) and refusals (exit 1)."""

from __future__ import annotations

import json

import pytest

from tests.client.test_cli import cli
from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, mv, send
from tests.server.test_ledger_service import settled
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.server.persistence.ledger import TRANSFER, LedgerStore


@pytest.fixture
async def day(make_server: MakeServer, clean_redis_url: str) -> UnistockServer:
    """A server whose ledger holds: at s1 a receipt of 10, two till sales (3, 1), a return, a
    web order of 2 shipped, a count of 3 (variance -1); at s2 a receipt of 4."""
    srv = await make_server(clean_redis_url, ledger_in_process=1)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(
            c,
            batch(
                "till",
                mv(1, "RECEIPT", "SHOE", "s1", 10),
                mv(2, "SALE", "SHOE", "s1", 3),
                mv(3, "SALE", "SHOE", "s1", 1),
                mv(4, "RETURN", "SHOE", "s1", 1),
                mv(5, "RECEIPT", "SHOE", "s2", 4),
            ),
        )
        await c.reserve("web-1", [("SHOE", "s1", 2)], kind="ORDER", channel="web")
        await c.fulfil("web-1")
        await send(c, batch("count", mv(1, "COUNT", "SHOE", "s1", 4, count_id="c-1")))
        await settled(c, 7, sku="SHOE")  # the writer runs behind the answers
    return srv


async def test_history_of_a_position_as_a_table_and_as_json(day: UnistockServer) -> None:
    rc, out, err = await cli(day, "history", "SHOE@s1", "--since", "1h")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].strip().startswith("SHOE@s1: 6 entries (ledger written up to 20"), lines[0]
    rows = [ln for ln in lines if "│" in ln and "SHOE" in ln]
    kinds = [r.split("│")[2].strip() for r in rows]
    assert kinds == ["RECEIPT", "SALE", "SALE", "RETURN", "SHIPMENT", "COUNT"]
    last = [c.strip() for c in rows[-1].split("│")]
    assert last[5:9] == ["4", "-1", "4", "4"]  # qty, Δ on hand, on hand, available
    assert "count c-1, variance -1" in last[10]
    assert "reservation web-1" in rows[4]

    rc, out, err = await cli(day, "history", "SHOE@s1", "--json", "--type", "SALE")
    assert rc == 0, err
    sales = json.loads(out)
    assert [(e["type"], e["quantity"], e["seq"]) for e in sales] == [
        ("SALE", "3", "2"),
        ("SALE", "1", "3"),
    ]


async def test_history_of_a_location_a_sku_a_reservation_and_a_limit(
    day: UnistockServer,
) -> None:
    rc, out, _ = await cli(day, "history", "--location", "s2", "--json")
    assert [(e["sku"], e["type"]) for e in json.loads(out)] == [("SHOE", "RECEIPT")]
    rc, out, _ = await cli(day, "history", "SHOE", "--json")
    every = json.loads(out)
    assert len(every) == 7
    rc, out, _ = await cli(day, "history", "--reservation", "web-1", "--json")
    entries = json.loads(out)
    assert sorted(e["type"] for e in entries) == ["RESERVATION", "RESERVATION", "SHIPMENT"]
    rc, out, err = await cli(day, "history", "SHOE", "--json", "--limit", "2")
    assert rc == 0
    assert json.loads(out) == every[:2]
    assert "note: only the oldest 2 shown" in err
    rc, out, err = await cli(day, "history", "SHOE@s1", "--until", "2000-01-01T00:00:00Z")
    assert (rc, out) == (0, "")
    assert "note: no ledger entry matches" in err
    # A transfer discrepancy (the transfer writer's row): no levels of the position shown.
    row = {"entry_key": "t:s2|T1:3:0", "feed_id": "1-0", "kind": TRANSFER, "at_ms": 1,
           "sku": "SHOE", "location_id": "s2", "version": 3, "quantity": 2, "transfer_id": "T1",
           "reason": "CLOSED_SHORT"}  # fmt: skip
    LedgerStore(day.master.store.engine).write([row])
    rc, out, _ = await cli(day, "history", "--location", "s2")
    [cells] = [ln.split("│")[2:-1] for ln in out.splitlines() if "TRANSFER_DISCREPANCY" in ln]
    assert [c.strip() for c in cells[3:9]] == ["2", "", "", "", "", "transfer T1, CLOSED_SHORT"]


async def test_kpis_by_location_store_and_channel(day: UnistockServer) -> None:
    rc, out, err = await cli(day, "kpis", "--by", "location", "--since", "7d", "--json")
    assert rc == 0, err
    [s1] = json.loads(out)["groups"]  # s2 has a receipt only: no figure
    assert s1["key"] == "s1"
    assert (s1["unitsSold"], s1["unitsReturned"], s1["shrinkage"]) == ("6", "1", "1")
    assert (s1["reservationsMade"], s1["reservationsFulfilled"]) == ("1", "1")
    rc, out, err = await cli(day, "kpis", "--by", "channel", "--since", "1d")
    assert rc == 0, err
    assert out.startswith("KPIs by channel, ")
    rows = {
        cells[1].strip(): [c.strip() for c in cells[2:-1]]
        for cells in (ln.split("│") for ln in out.splitlines() if "│" in ln)
    }
    #                 sold returned shrinkage lost made fulfilled expired released
    assert rows["store"] == ["4", "1", "1", "0", "0", "0", "0", "0"]
    assert rows["web"] == ["2", "0", "0", "0", "1", "1", "0", "0"]
    assert rows["total"] == ["6", "1", "1", "0", "1", "1", "0", "0"]
    rc, out, err = await cli(day, "kpis", "--by", "store", "--location", "s2")
    assert (rc, out) == (0, "")
    assert "note: no ledger entry counted" in err


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("history",), "give SKU@LOC, SKU, --location LOC or --reservation ID"),
        (("history", "A@s1", "--reservation", "r"), "argument --reservation"),
        (("history", "A@s1", "--location", "s2"), "argument --location"),
        (("history", "@s1"), "argument SKU@LOC|SKU"),
        (("history", "A", "--since", "3x"), "argument --since"),
        (("history", "A", "--since", "2030-01-01T00:00:00"), "argument --since"),
        (("history", "A", "--type", "SOLD"), "argument --type"),
        (("history", "A", "--limit", "-1"), "argument --limit"),
        (("kpis", "--by", "region"), "argument --by"),
        (("kpis", "--since", "1h", "--until", "2h"), "argument --until"),
    ],
)
async def test_bad_flags_exit_2_naming_the_flag(
    server: UnistockServer, args: tuple[str, ...], flag: str
) -> None:
    rc, out, err = await cli(server, *args)
    assert rc == 2, err
    assert flag in err
    assert out == ""


async def test_a_refused_call_exits_1_with_the_status(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "kpis", role="channel")
    assert rc == 1
    assert err.startswith("error: PERMISSION_DENIED: role 'channel' may not call GetKpis")
    rc, _, err = await cli(server, "history", "A B")  # not an identifier: the server says
    assert rc == 1
    assert "INVALID_ARGUMENT" in err
    assert "sku" in err
