"""`unistock-edge-agent`: one store's edge agent (local intake, durable outbox, MQTT uplink)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from unistock.client.config import DEFAULT_MQTT_URL, ClientConfig, ConfigError, redact_url
from unistock.client.mqtt import broker_args
from unistock.edge import rejections_cli
from unistock.edge.agent import AgentSettings, AgentStartError, StoreAgent
from unistock.edge.datalock import AgentAlreadyRunning
from unistock.edge.readers import DEFAULT_READER_TOPIC
from unistock.edge.sender import DEFAULT_MAX_PAYLOAD
from unistock.server.domain import InvalidArgument, check_id

log = logging.getLogger("unistock.edge.cli")

_REQUIRED = object()  # a flag's default when it (or its variable) must be given

#: Exit status when the agent could not start: a port taken, an unreadable catalogue or data
#: directory, an outbox of another source (one line on stderr names the flag).
EXIT_START_FAILED = 1
#: Exit status of a bad command line or variable (argparse's usage error).
EXIT_BAD_USAGE = 2
#: Exit status when another agent holds the store's data directory (EX_TEMPFAIL: it may be
#: free later; a supervisor can list it in systemd's RestartPreventExitStatus).
EXIT_ALREADY_RUNNING = 75

_EPILOG = f"""\
store staff: `unistock-edge-agent rejections --help` lists, watches and resolves the movements
the server rejected after the till got its receipt.

exit status:
  0   stopped by SIGTERM or SIGINT
  {EXIT_START_FAILED}   could not start: a port taken, an unreadable --catalogue or --data-dir, an
      outbox of another --source-id (one line on stderr names the flag)
  {EXIT_BAD_USAGE}   bad flag or UNISTOCK_* variable (an id, a port, an MQTT URL)
  {EXIT_ALREADY_RUNNING}  another agent runs on this --data-dir for this store

ids (--store-id, --source-id, --location-id, READER=LOCATION): 1-128 printable ASCII
characters, no whitespace, no '|'; --store-id and READER go into MQTT topics, so no '+', '#'
or '/' either.
"""

#: An id of the agent that is a level of an MQTT topic (its store id, a reader id).
_TOPIC_ID_RULE = (
    "must be 1-128 printable ASCII characters, no whitespace, no '|', and not contain '+', '#' "
    "or '/' (it is a level of MQTT topics)"
)
_ID_RULE = "must be 1-128 printable ASCII characters, no whitespace, no '|'"
#: Longest --source-id: the outbox adds '.' and 8 hex digits of its incarnation.
_MAX_SOURCE_ID = 128 - 9


def _id_problem(value: str, *, topic: bool = False) -> str | None:
    """Why ``value`` is not a valid id (the server's rule: check_id), or ``None``."""
    try:
        check_id("id", value)
    except InvalidArgument:
        return _TOPIC_ID_RULE if topic else _ID_RULE
    if topic and any(c in value for c in "+#/"):
        return _TOPIC_ID_RULE
    return None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown when there is one (not for an empty or absent value), epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", []) or action.default is argparse.SUPPRESS:
            return action.help
        if "(default:" in (action.help or ""):  # the help says where its default comes from
            return action.help
        return super()._get_help_string(action)


def parse(argv: Sequence[str] | None = None) -> AgentSettings:
    """Settings from flags, each defaulting to its UNISTOCK_* variable."""
    env = os.environ
    p = argparse.ArgumentParser(
        prog="unistock-edge-agent",
        description="Unistock store edge agent: tills and RFID readers in, MQTT to the server.",
        formatter_class=_HelpFormatter,
        epilog=_EPILOG,
    )

    def flag(name: str, var: str, default: object, help: str, type_: type = str) -> None:
        # One place ties a flag to its environment variable and says so in --help.
        raw = env.get(var)
        required = default is _REQUIRED
        p.add_argument(
            name,
            type=type_,
            # A variable's string is converted (and refused) by argparse like the flag's.
            default=raw if raw is not None else (None if required else default),
            required=required and raw is None,
            help=f"{help} [env {var}]",
        )

    flag("--store-id", "UNISTOCK_AGENT_STORE_ID", _REQUIRED, "this store's id")
    try:  # the broker `make run` started, when the user config file says it
        mqtt_default = ClientConfig.load(env).mqtt_url()
    except ConfigError as e:
        p.error(str(e))
    flag("--mqtt-url", "UNISTOCK_MQTT_URL", mqtt_default.value,
         "broker, mqtt[s]://user:pass@host:port (default: mqtt_url of the user config file "
         f"`make run` writes, else {DEFAULT_MQTT_URL}; now: {redact_url(mqtt_default.value)} "
         f"from {mqtt_default.source})")  # fmt: skip
    flag("--source-id", "UNISTOCK_AGENT_SOURCE_ID", "",
         "movement source id (default: agent-<store id>; the outbox adds its incarnation)")  # fmt: skip
    flag("--data-dir", "UNISTOCK_AGENT_DATA_DIR", "var/agent", "outbox directory")
    flag("--location-id", "UNISTOCK_AGENT_LOCATION_ID", "", "default location (the store id)")
    flag("--intake-port", "UNISTOCK_AGENT_INTAKE_PORT", 50061,
         "local gRPC intake port for tills/readers", int)  # fmt: skip
    flag("--intake-host", "UNISTOCK_AGENT_INTAKE_HOST", "127.0.0.1", "local intake address")
    flag("--metrics-port", "UNISTOCK_AGENT_METRICS_PORT", 9465, "/metrics port, 0: off", int)
    flag("--catalogue", "UNISTOCK_AGENT_CATALOGUE", None, "GTIN->SKU CSV for RFID counts")
    flag("--reader-mqtt-url", "UNISTOCK_READER_MQTT_URL", "",
         "the store's reader broker, where fixed RFID readers publish tag reads (may be the "
         "--mqtt-url broker); empty: no MQTT readers")  # fmt: skip
    p.add_argument(
        "--reader-topic",
        action="append",
        metavar="FILTER",
        help="topic filter of reader tag reads, repeatable; '{store_id}' is replaced, the level "
        "of the first '+' is the reader id (e.g. zebra/+/data) "
        f"[default: {DEFAULT_READER_TOPIC}; env UNISTOCK_READER_TOPIC]",
    )
    p.add_argument(
        "--reader-location",
        action="append",
        default=[],
        metavar="READER=LOCATION",
        help="the location a reader counts, repeatable (default: the store's location)",
    )
    flag("--batch-size", "UNISTOCK_AGENT_BATCH_SIZE", 100,
         "movements per MQTT message (at most 10,000, or fewer if the server says so)", int)  # fmt: skip
    flag("--window", "UNISTOCK_AGENT_WINDOW", 8, "unacked batches in flight", int)
    flag("--max-payload-bytes", "UNISTOCK_AGENT_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD,
         "largest MovementBatch payload; keep it under the broker's message_size_limit "
         "(a smaller Maximum Packet Size announced by the broker wins, and so does the "
         "server's limit once it refuses a batch as too large)", int)  # fmt: skip
    p.add_argument(
        "--log-level",
        default=env.get("UNISTOCK_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR [env UNISTOCK_LOG_LEVEL]",
    )
    a = p.parse_args(argv)
    if a.log_level.upper() not in logging.getLevelNamesMapping():
        p.error(f"--log-level {a.log_level!r}: must be DEBUG, INFO, WARNING or ERROR")
    if problem := _id_problem(a.store_id, topic=True):
        p.error(f"--store-id {a.store_id!r}: {problem}")
    source = a.source_id or f"agent-{a.store_id}"
    if problem := _id_problem(source):
        p.error(f"--source-id {source!r}: {problem}")
    if len(source) > _MAX_SOURCE_ID:
        p.error(
            f"--source-id {source[:20]!r}...: at most {_MAX_SOURCE_ID} characters (the outbox "
            f"adds '.' and 8 hex digits), got {len(source)}"
            + ("" if a.source_id else "; the default agent-<store id> is too long: give one")
        )
    if a.location_id and (problem := _id_problem(a.location_id)):
        p.error(f"--location-id {a.location_id!r}: {problem}")
    for name in ("--intake-port", "--metrics-port"):
        port = getattr(a, name[2:].replace("-", "_"))
        if not 0 <= port <= 65535:
            p.error(f"{name} {port}: must be 0-65535")
    for name, url in (("--mqtt-url", a.mqtt_url), ("--reader-mqtt-url", a.reader_mqtt_url)):
        if url or name == "--mqtt-url":
            try:
                broker_args(url)
            except ValueError as e:  # a scheme, or a port (e.g. not a number)
                detail = f" ({e})" if url.partition("://")[0] in ("mqtt", "mqtts") else ""
                p.error(f"{name} {url!r}: must be mqtt[s]://[user:password@]host[:port]{detail}")
    reader_locations: dict[str, str] = {}
    for item in a.reader_location:
        reader, sep, location = item.partition("=")
        if not (sep and reader and location):
            p.error(f"--reader-location: expected READER=LOCATION, got {item!r}")
        if problem := _id_problem(reader, topic=True):
            p.error(f"--reader-location {item!r}: the reader id {problem}")
        if problem := _id_problem(location):
            p.error(f"--reader-location {item!r}: the location {problem}")
        reader_locations[reader] = location
    topics = a.reader_topic or [env.get("UNISTOCK_READER_TOPIC") or DEFAULT_READER_TOPIC]
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    words = sys.argv[1:] if argv is None else argv
    given = any(w == "--mqtt-url" or w.startswith("--mqtt-url=") for w in words)
    log.info(
        "broker %s (from %s)",
        redact_url(a.mqtt_url),
        "--mqtt-url" if given else mqtt_default.source,
    )
    return AgentSettings(
        store_id=a.store_id,
        mqtt_url=a.mqtt_url,
        source_id=a.source_id,
        data_dir=Path(a.data_dir),
        location_id=a.location_id,
        intake_host=a.intake_host,
        intake_port=a.intake_port,
        metrics_port=a.metrics_port,
        catalogue=Path(a.catalogue) if a.catalogue else None,
        batch_size=a.batch_size,
        window=a.window,
        max_payload_bytes=a.max_payload_bytes,
        reader_mqtt_url=a.reader_mqtt_url,
        reader_topics=tuple(topics),
        reader_locations=reader_locations,
    )


async def _main(settings: AgentSettings) -> None:
    async with StoreAgent(settings) as agent:
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        print(
            f"unistock-edge-agent {settings.store_id}: intake on port {agent.intake_port}, "
            f"broker {redact_url(settings.mqtt_url)}, outbox {agent.outbox.path.resolve()} "
            f"(source {agent.outbox.source_id}, {agent.outbox.depth()} unacknowledged)",
            flush=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; exit statuses in ``--help`` (EXIT_*).

    ``unistock-edge-agent rejections ...`` (``rejections`` first) is the store staff's command
    (:mod:`unistock.edge.rejections_cli`); anything else runs the agent with its flags.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["rejections"]:
        sys.exit(rejections_cli.main(args[1:]))
    try:
        asyncio.run(_main(parse(args)))
    except AgentAlreadyRunning as e:
        print(f"unistock-edge-agent: refusing to start: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ALREADY_RUNNING)
    except AgentStartError as e:
        flag = "--" + e.setting.replace("_", "-")
        print(f"unistock-edge-agent: {flag} {e.value}: {e.problem}", file=sys.stderr, flush=True)
        sys.exit(EXIT_START_FAILED)
    sys.exit(0)


if __name__ == "__main__":
    main()
