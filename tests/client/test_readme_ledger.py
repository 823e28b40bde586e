"""The docs' History and KPIs example runs as written: each `.venv/bin/unistock` line of
its block, in a shell from the checkout, against a real server whose ledger writer runs in
process; the tables printed are the docs' (every cell but the times)."""

from __future__ import annotations

from tests.client.test_readme_cli_examples import sh
from tests.docs import commands, example
from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_ledger_service import settled
from unistock.client import UnistockClient


def rows(table: str) -> list[list[str]]:
    """The cells of a Rich table's body and footer rows."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.splitlines()
        if line.startswith("│")
    ]


async def test_the_ledger_example_runs_as_written(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    lines, output = commands(example("history-kpis")), example("history-kpis-output").text
    assert [c.split()[1] for c in lines] == ["move", "move", "reserve", "fulfil", "move",
                                                "history", "kpis"]  # fmt: skip
    srv = await make_server(clean_redis_url, ledger_in_process=1)
    for command in lines[:5]:
        rc, _, err = await sh(command, srv)
        assert rc == 0, (command, err)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await settled(c, 4, sku="SHOE-43", location_id="store-9")
        await settled(c, 2, reservation_id="web-1", types=["RESERVATION"])
    printed = ""
    for command in lines[5:]:
        rc, out, err = await sh(command, srv)
        assert rc == 0, (command, err)
        printed += out
    shown, got = rows(output), rows(printed)
    assert len(got) == len(shown) == 4 + 3
    assert [r[1:] for r in got[:4]] == [r[1:] for r in shown[:4]]  # history: all but the time
    assert got[4:] == shown[4:]  # kpis
    # The title says how far the ledger is written: its newest entry, here the count.
    count_at = got[3][0]
    title = printed.splitlines()[0].rstrip()
    assert title == f"SHOE-43@store-9: 4 entries (ledger written up to {count_at})", printed
