"""The `unistock` Typer application every `cli_*` module adds its commands to.

A command's function only checks its arguments (a usage error, exit 2, is
`typer.BadParameter` or `usage(...)`) and `schedule`s what it does: an async function of a
connected UnistockClient. `unistock.client.cli.main` runs it after parsing, under its Ctrl-C
handling (exit 130) and with its exit codes (unistock.client.output.EXIT_CODES).

Typer (on Click) instead of argparse: typed parameters, shell completion
(`--install-completion`), help rendered with Rich, and one way to declare a command in each
module of the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import typer

from unistock.client._client import UnistockClient
from unistock.client.output import EXIT_CODES

Job = Callable[[UnistockClient], Awaitable[None]]

#: Help options of every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}


@dataclass
class State:
    """The global options, then what the chosen command will do."""

    target: str | None = None
    token: str | None = None
    job: Job | None = None
    #: The job's per-call deadline, seconds (None: a stream, no deadline).
    timeout: float | None = 10
    #: Run first, without a server (e.g. `config`, `admin import` reading its files): the exit
    #: code, or None to go on with the job.
    local: Callable[[], int | None] | None = None
    #: The server the job talks to, as resolved (flag, variable, config file or default).
    resolved_target: str = ""


def state(ctx: typer.Context) -> State:
    """The State of this invocation (set by the root callback)."""
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def schedule(ctx: typer.Context, job: Job, *, timeout: float | None = 10) -> None:
    """Have main() run job(client) once parsing is done."""
    s = state(ctx)
    s.job, s.timeout = job, timeout


def usage(message: str) -> typer.BadParameter:
    """A usage error (exit 2) found after parsing; message names the argument, e.g.
    "argument --max-km: needs --near or --at"."""
    return _Usage(message)


def verbatim(text: str) -> str:
    """text with each paragraph marked for Click's help to print as written (not rewrapped)."""
    return "\n\n".join("\b\n" + p for p in text.strip("\n").split("\n\n"))


class _Usage(typer.BadParameter):
    def format_message(self) -> str:
        return self.message


app = typer.Typer(
    name="unistock",
    help="A command line for the Unistock inventory API: levels, reservations, movements, "
    "transfers, networks, events, the ledger and master data. A table on a terminal, JSON in a "
    "pipe or with --json (every zero-valued field included).",
    epilog=verbatim(EXIT_CODES),
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT,
    pretty_exceptions_enable=False,
)
admin_app = typer.Typer(
    help="Master data (role admin): import CSV files, list locations and networks.",
    epilog=verbatim(EXIT_CODES),
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)
app.add_typer(admin_app, name="admin")


def command(
    app_: typer.Typer | None = None,
    *,
    name: str | None = None,
    short_help: str,
    help: str,
    as_written: bool = False,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """app_.command (default: the root app) with the exit codes in its help; short_help for
    the list of commands, help for the command's own (as_written: its line breaks kept)."""
    return (app_ or app).command(
        name=name,
        short_help=short_help,
        help=verbatim(help) if as_written else help,
        epilog=verbatim(EXIT_CODES),
        context_settings=CONTEXT,
    )


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="print the protobuf JSON mapping with every zero-valued field (default: a table "
        "on a terminal, JSON in a pipe)",
    ),
]
