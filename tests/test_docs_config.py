"""docs/configuration.md and docs/cli.md cannot drift from the programs: their reference tables
are what scripts/config_reference.py generates from the programs' own argument parsers, and
every UNISTOCK_* variable the code reads is named in docs/configuration.md."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

import pytest

from tests.docs import ROOT


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", ["docs/configuration.md", "docs/cli.md"])
def test_the_reference_is_what_the_parsers_say(doc: str) -> None:
    gen = generator()
    text = (ROOT / doc).read_text()
    assert gen.replaced(text, gen.TARGETS[doc]()) == text, (
        f"{doc} differs from the programs' flags: run .venv/bin/python scripts/config_reference.py"
    )


def test_the_reference_has_every_flag_of_every_program() -> None:
    """The generator itself: each program's parser is found, with its flags and variables."""
    gen = generator()
    names = [name for name, _ in gen.programs()]
    assert names == ["unistock-server", "unistock-ledger", "unistock-edge-agent",
                     "unistock-edge-agent rejections", "unistock-sim",
                     "unistock"]  # fmt: skip
    text = gen.configuration()
    for row in ("| `--grpc-port` | `UNISTOCK_GRPC_PORT` | `50051` |",
                "| `--store-id` | `UNISTOCK_AGENT_STORE_ID` | required |",
                "| `--ledger-batch` | `UNISTOCK_LEDGER_BATCH` | `200` |"):  # fmt: skip
        assert row in text
    assert "| `unistock admin import` |" in gen.cli_commands()


def test_every_variable_the_code_reads_is_documented() -> None:
    code = [
        p
        for d in ("server/unistock", "clients/unistock", "edge_agents/unistock")
        for p in (ROOT / d).rglob("*.py")
    ]
    read = {v for p in code for v in re.findall(r"UNISTOCK_[A-Z][A-Z_]*[A-Z]", p.read_text())}
    assert len(read) > 20, "the pattern is wrong"
    documented = set(
        re.findall(r"UNISTOCK_[A-Z][A-Z_]*[A-Z]", (ROOT / "docs/configuration.md").read_text())
    )
    assert sorted(read - documented) == []
