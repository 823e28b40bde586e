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

from unistock.edge.agent import AgentSettings, StoreAgent
from unistock.edge.datalock import AgentAlreadyRunning
from unistock.edge.readers import DEFAULT_READER_TOPIC
from unistock.edge.sender import DEFAULT_MAX_PAYLOAD

_REQUIRED = object()  # a flag's default when it (or its variable) must be given

#: Exit status when another agent holds the store's data directory (EX_TEMPFAIL: it may be
#: free later; a supervisor can list it in systemd's RestartPreventExitStatus).
EXIT_ALREADY_RUNNING = 75


def parse(argv: Sequence[str] | None = None) -> AgentSettings:
    """Settings from flags, each defaulting to its UNISTOCK_* variable."""
    env = os.environ
    p = argparse.ArgumentParser(
        prog="unistock-edge-agent",
        description="Unistock store edge agent: tills and RFID readers in, MQTT to the server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def flag(name: str, var: str, default: object, help: str, type_: type = str) -> None:
        # One place ties a flag to its environment variable and says so in --help.
        raw = env.get(var)
        required = default is _REQUIRED
        p.add_argument(
            name,
            type=type_,
            default=type_(raw) if raw is not None else (None if required else default),
            required=required and raw is None,
            help=f"{help} [env {var}]",
        )

    flag("--store-id", "UNISTOCK_AGENT_STORE_ID", _REQUIRED, "this store's id")
    flag("--mqtt-url", "UNISTOCK_MQTT_URL", "mqtt://127.0.0.1:1883",
         "broker, mqtt[s]://user:pass@host:port")  # fmt: skip
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
    p.add_argument("--log-level", default=env.get("UNISTOCK_LOG_LEVEL", "INFO"))
    a = p.parse_args(argv)
    reader_locations: dict[str, str] = {}
    for item in a.reader_location:
        reader, sep, location = item.partition("=")
        if not (sep and reader and location):
            p.error(f"--reader-location: expected READER=LOCATION, got {item!r}")
        reader_locations[reader] = location
    topics = a.reader_topic or [env.get("UNISTOCK_READER_TOPIC") or DEFAULT_READER_TOPIC]
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
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
            f"unistock-edge-agent {settings.store_id}: intake on port {agent.intake_port}",
            flush=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    try:
        asyncio.run(_main(parse(argv)))
    except AgentAlreadyRunning as e:
        print(f"unistock-edge-agent: refusing to start: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ALREADY_RUNNING)
    sys.exit(0)


if __name__ == "__main__":
    main()
