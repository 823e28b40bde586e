"""Plumbing shared by the hypothesis state machines that drive a real server on a real Redis:
one event loop for the whole test, a server (re)started on demand, an admin client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from tests.fixtures.server import TOKENS, token_store
from unistock.client import UnistockClient
from unistock.devtools.services import RedisServer
from unistock.server.app.server import UnistockServer
from unistock.server.app.settings import Settings


class RealServer:
    """Mixin of a state machine: `run` a coroutine on the test's loop, `_start` / `_stop` the
    server (Settings overridden by `settings`), `c` its admin client."""

    loop: ClassVar[asyncio.AbstractEventLoop]
    redis: ClassVar[RedisServer]
    data_dir: Path
    #: Settings fields for every start of the server.
    server_settings: ClassVar[dict[str, Any]] = {}
    srv: UnistockServer | None = None
    client: UnistockClient | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        s = Settings(
            redis_url=self.redis.url,
            grpc_port=0,
            metrics_port=0,
            data_dir=self.data_dir,
            shutdown_grace_s=1.0,
            redis_timeout_s=2.0,
            **self.server_settings,
        )
        self.srv = UnistockServer(s, token_store())
        await self.srv.start()
        self.client = UnistockClient(f"127.0.0.1:{self.srv.grpc_port}", TOKENS["admin"], timeout=10)

    async def _stop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.srv is not None:
            await self.srv.stop()
            assert not self.srv.failed
            self.srv = None

    def teardown(self) -> None:
        self.run(self._stop())

    @property
    def c(self) -> UnistockClient:
        assert self.client is not None
        return self.client
