"""What the `unistock` command line prints, and how it ends: exit codes, `error:` lines, Rich
tables, JSON.

Output modes, the same for every command that prints data:

- `--json`: the protobuf JSON mapping (lowerCamelCase names, 64-bit integers as strings) WITH
  every zero-valued field (`"onHand": "0"` is information): one object per line for single
  answers and streams, one JSON array for listings (`reservations`, `history`, `admin ...`).
- no `--json`, stdout a terminal: Rich tables (levels, network levels, FindStock answers,
  reservations, transfers, history, KPIs, master data); `watch` commands a live table.
- no `--json`, stdout not a terminal (a pipe, a file, a script): what the CLI printed before
  tables existed, unchanged, so scripts keep working: JSON lines as above, zero fields left out
  where they always were (`reserve`, `show`, `move`, `transfer`, ...: read a missing number as
  0), and the tables of the listing commands that always printed tables.

Notes (`note: ...`) and failures go to stderr, one line each: `error: ...` (exit 1),
`not found: ...` (exit 3), `duplicate: ...` (exit 4); usage errors (exit 2) name the argument.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from unistock.client._client import UnistockClientError

#: Exit codes, the same for every command.
DONE = 0
ERROR = 1
USAGE = 2
NOT_FOUND = 3
DUPLICATE = 4
INTERRUPTED = 130

EXIT_CODES = """\
exit codes (the same for every command):
  0    done
  1    error: refused by the server, a movement rejected, server unreachable, no token
  2    usage error: bad or out-of-range arguments (the message names the argument)
  3    not found: `get` of a SKU or position the server has no level for, `show` of an
       unknown reservation, an unknown transfer, network, ... (NOT_FOUND)
  4    duplicate: a `move` whose (source, seq) the server had already applied: nothing changed
  130  interrupted (Ctrl-C)
"""

_LABELS = {ERROR: "error", NOT_FOUND: "not found", DUPLICATE: "duplicate"}

#: Set (to anything but "" or "0") to have the CLI draw tables as on a terminal whatever its
#: stdout is (tests, `watch` recorded with `script`).
FORCE_TABLES_ENV = "UNISTOCK_FORCE_TERMINAL"


class CliError(Exception):
    """A failure reported as one `<label>: <message>` line on stderr, exit `code`: 1 error,
    3 not found, 4 duplicate."""

    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        self.code = code

    @property
    def line(self) -> str:
        """`error: ...`, `not found: ...` or `duplicate: ...`."""
        return f"{_LABELS.get(self.code, 'error')}: {self}"


def refused(exc: UnistockClientError) -> CliError:
    """The CliError of a call the server refused: exit 3 `not found: ...` for NOT_FOUND, else
    exit 1 `error: CODE: details`."""
    if exc.code == grpc.StatusCode.NOT_FOUND:
        return CliError(exc.details or str(exc), NOT_FOUND)
    return CliError(str(exc))


def count(n: int, noun: str) -> str:
    """ "1 location", "2 locations", "3 batches"."""
    plural = "es" if noun.endswith(("s", "ch")) else "s"
    return f"{n:,} {noun}{'' if n == 1 else plural}"


def note(text: str) -> None:
    """`note: text` on stderr (something the reader should know; not an error)."""
    print(f"note: {text}", file=sys.stderr)


def terminal() -> bool:
    """Whether stdout is a terminal (or UNISTOCK_FORCE_TERMINAL says to act as on one)."""
    if os.environ.get(FORCE_TABLES_ENV, "") not in ("", "0"):
        return True
    return sys.stdout.isatty()


def console() -> Console:
    """A Console on stdout, a terminal one when terminal() says so."""
    return Console(highlight=False, force_terminal=True if terminal() else None)


def print_json(message: Message, *, zeros: bool = True) -> None:
    """message as one JSON line on stdout (protobuf JSON mapping); zeros: zero-valued fields
    too (False: the output of the CLI's first versions, for pipes without --json)."""
    print(
        json_format.MessageToJson(message, indent=None, always_print_fields_with_no_presence=zeros),
        flush=True,
    )


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
    out = console()
    if not out.is_terminal:
        width = Console(width=1_000_000).measure(table).maximum
        out = Console(highlight=False, width=max(80, width))
    out.print(table)
