"""The docs' master-data import example runs as written: its CSV blocks saved as they are
under the names the paragraph before each gives, then each `.venv/bin/unistock` line of the block after
them, from the checkout, against a real server, with what the comments promise; and the network
availability example on those files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.client.test_readme_cli_examples import sh
from tests.docs import ROOT, Block, commands, example
from unistock.server.app.server import UnistockServer


def csv_files() -> dict[str, str]:
    """Each CSV block as it is, under the name the paragraph before it starts with."""
    blocks = [example("locations-csv"), example("networks-csv"), example("products-csv"),
              example("safety-csv")]  # fmt: skip
    return {file_named_before(b): b.text for b in blocks}


def file_named_before(block: Block) -> str:
    """The first `name.csv` the paragraph before the block names."""
    before = block.path.read_text().splitlines()[: block.line - 2]  # up to the marker
    paragraph = "\n".join(before).rstrip().rsplit("\n\n", 1)[-1]
    [name, *_] = re.findall(r"`([\w.-]+\.csv)`", paragraph)
    return str(name)


async def test_the_admin_import_example_runs_as_written(
    server: UnistockServer, tmp_path: Path
) -> None:
    files = csv_files()
    assert set(files) == {"locations.csv", "networks.csv", "products.csv", "safety.csv"}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    outputs = []
    for command in commands(example("admin-import")):
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


async def test_the_network_example_runs_as_written(server: UnistockServer, tmp_path: Path) -> None:
    for name, content in csv_files().items():
        (tmp_path / name).write_text(content)
    lines = commands(example("network"))
    assert lines[-1].endswith("--watch")
    for command in lines[:-1]:
        rc, out, err = await sh(
            command.replace(".venv/bin/", f"{ROOT}/.venv/bin/"), server, tmp_path
        )
        assert rc == 0, (command, err)
    level = json.loads(out)
    # store-7's default safety stock is 1 in locations.csv: 10 + (3 - 1)
    assert (level["network"], level["available"], level["locations"]) == ("web", "12", 2)
    assert level["staleLocations"] == 0  # every number printed, zeros too


async def test_the_find_stock_example_runs_as_written(
    server: UnistockServer, tmp_path: Path
) -> None:
    """FindStock from the shell, on the master data of the import example (store-7 offers e-
    reservations; the DC is 28 km from the coordinates, beyond --max-km 10)."""
    for name, content in csv_files().items():
        (tmp_path / name).write_text(content)
    setup = [
        ".venv/bin/unistock admin import --locations locations.csv --networks networks.csv",
        ".venv/bin/unistock move docs 1 RECEIPT SHOE-42@store-7:5",
        ".venv/bin/unistock move docs 2 RECEIPT BAG-1@store-7:2",
        ".venv/bin/unistock move docs 3 RECEIPT SHOE-42@dc-1:9",
    ]
    lines = commands(example("find"))
    assert len(lines) == 2, lines
    answers = []
    for command in setup + lines:
        rc, out, err = await sh(
            command.replace(".venv/bin/", f"{ROOT}/.venv/bin/"), server, tmp_path
        )
        assert rc == 0, (command, err)
        answers.append(out)
    near, split = answers[-2:]
    assert "store-7" in near
    assert "store-7" in split
    assert "dc-1" not in split
