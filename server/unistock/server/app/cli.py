"""`unistock-server`: run the inventory server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from unistock.server.app.server import UnistockServer, load_tokens
from unistock.server.app.settings import Settings

log = logging.getLogger("unistock.server")


async def serve(settings: Settings) -> int:
    """Run until a signal or a fatal failure; returns the exit code."""
    tokens, dev_token = load_tokens(settings, os.environ.get("UNISTOCK_TOKENS", ""))
    server = UnistockServer(settings, tokens)
    await server.start()
    if dev_token:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path = settings.data_dir / "dev-token"
        path.write_text(dev_token + "\n")
        path.chmod(0o600)
        print(
            f"\nNo tokens configured: generated a dev admin token (also in {path}):\n"
            f"  authorization: Bearer {dev_token}\n",
            flush=True,
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server._done.set)
    print(f"unistock-server ready: gRPC on port {server.grpc_port}", flush=True)
    await server.wait()
    failed = server.failed
    await server.stop()
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    settings = Settings.parse(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
