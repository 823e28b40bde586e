"""The README's master-data import example runs as written: its CSV blocks saved as they are
under the names the paragraph before each gives, then each `.venv/bin/unistock` line of the block after
them, from the checkout, against a real server, with what the comments promise."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.client.test_readme_cli_examples import ROOT, sh
from unistock.server.app.server import UnistockServer


def example() -> tuple[dict[str, str], list[str]]:
    text = (ROOT / "README.md").read_text()
    # Each block as it is, saved under the name the paragraph before it starts with.
    files = dict(
        re.findall(r"`([\w.-]+\.csv)`(?:(?!```|\.csv`).)*?:\n\n```csv\n(.*?)```", text, flags=re.S)
    )
    [commands] = [
        b for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S) if "--safety-stock" in b
    ]
    return files, [ln.split("  #")[0].strip() for ln in commands.splitlines() if ln.strip()]


async def test_the_readme_admin_import_runs_as_written(
    server: UnistockServer, tmp_path: Path
) -> None:
    files, commands = example()
    assert set(files) == {"locations.csv", "networks.csv", "products.csv", "safety.csv"}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    outputs = []
    for command in commands:
        assert command.startswith(".venv/bin/unistock "), command
        rc, out, err = await sh(
            command.replace(".venv/bin/", f"{ROOT}/.venv/bin/"), server, tmp_path
        )
        assert rc == 0, (command, err)
        outputs.append(out)
    assert "store-7" in outputs[1]
    assert "Central DC" in outputs[1]
    assert json.loads(outputs[2])["safetyStock"] == "2"
    assert server.master.networks["web"].location_ids == ("dc-1", "store-7")
    assert server.master.networks["web"].low_stock_threshold == 5
    assert server.master.products["SHOE-42"].gtin == "04006381333931"


async def test_the_readme_network_example_runs_as_written(
    server: UnistockServer, tmp_path: Path
) -> None:
    files, _ = example()
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    text = (ROOT / "README.md").read_text()
    [block] = [
        b for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S) if "unistock network" in b
    ]
    commands = [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands[-1].endswith("--watch")
    for command in commands[:-1]:
        rc, out, err = await sh(
            command.replace(".venv/bin/", f"{ROOT}/.venv/bin/"), server, tmp_path
        )
        assert rc == 0, (command, err)
    level = json.loads(out)
    # store-7's default safety stock is 1 in locations.csv: 10 + (3 - 1)
    assert (level["network"], level["available"], level["locations"]) == ("web", "12", 2)
    assert level["staleLocations"] == 0  # every number printed, zeros too
