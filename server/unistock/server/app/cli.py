"""`unistock-server`: run the inventory server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

from unistock.server.app.server import StartupError, UnistockServer, load_tokens
from unistock.server.app.settings import Settings, run_console

log = logging.getLogger("unistock.server")


def write_dev_token(data_dir: pathlib.Path, token: str) -> pathlib.Path:
    """Write data_dir/dev-token readable by its owner only from its first byte: created with
    mode 0600 under a temporary name (never an existing file), then renamed over the old one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev-token"
    tmp = data_dir / f".dev-token.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


async def serve(settings: Settings) -> int:
    """Run until a signal or a fatal failure; returns the exit code (0 stopped by a signal, 1 a
    fatal failure while running or a failed start, 2 a bad configuration)."""
    try:
        tokens, dev_token = load_tokens(settings, os.environ.get("UNISTOCK_TOKENS", ""))
    except (OSError, ValueError) as exc:
        print(
            f"unistock-server: bad tokens (--tokens-file / UNISTOCK_TOKENS): {exc}", file=sys.stderr
        )
        return 2
    server = UnistockServer(settings, tokens)
    try:
        await server.start()
    except StartupError as exc:
        print(f"unistock-server: cannot start: {exc}", file=sys.stderr)
        return 1
    stale = settings.data_dir / "dev-token"
    if not dev_token and stale.exists():
        # Tokens are configured: a dev token left by an earlier run no longer works, and the
        # CLI would pick it up before anything else.
        stale.unlink(missing_ok=True)
        log.info("removed %s: tokens are configured, the dev token is no more", stale)
    if dev_token:
        path = settings.data_dir / "dev-token"
        kept = path.exists() and path.read_text().strip() == dev_token
        path = write_dev_token(settings.data_dir, dev_token)
        how = (
            f"the dev admin token kept in {path} since an earlier start (delete it for a new one)"
            if kept
            else f"generated a dev admin token (also in {path}, kept across restarts)"
        )
        print(
            f"\nNo tokens configured: {how}:\n  authorization: Bearer {dev_token}\n",
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
    run_console(settings.log_level, serve(settings))


if __name__ == "__main__":
    main()
