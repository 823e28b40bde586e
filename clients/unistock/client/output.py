"""What the `unistock` command line prints: Rich tables, JSON arrays, notes on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table


def count(n: int, noun: str) -> str:
    """ "1 location", "2 locations", "3 batches"."""
    plural = "es" if noun.endswith(("s", "ch")) else "s"
    return f"{n:,} {noun}{'' if n == 1 else plural}"


def note(text: str) -> None:
    """`note: text` on stderr (something the reader should know; not an error)."""
    print(f"note: {text}", file=sys.stderr)


def print_json_array(messages: Sequence[Message]) -> None:
    """Messages as one JSON array on stdout (protobuf JSON mapping, zero fields included)."""
    print(
        json.dumps(
            [
                json_format.MessageToDict(m, always_print_fields_with_no_presence=True)
                for m in messages
            ]
        )
    )


def show(table: Table) -> None:
    """table on stdout; as wide as it needs when stdout is no terminal (no wrapped cells)."""
    console = Console(highlight=False)
    if not console.is_terminal:
        width = Console(width=1_000_000).measure(table).maximum
        console = Console(highlight=False, width=max(80, width))
    console.print(table)
