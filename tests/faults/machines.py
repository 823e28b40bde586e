"""Plumbing shared by the hypothesis state machines that drive a real server on a real Redis:
one event loop for the whole test, a server (re)started on demand, an admin client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.fixtures.server import TOKENS, token_store
from unistock.client import UnistockClient
from unistock.devtools.services import RedisServer
from unistock.server.app.server import UnistockServer
from unistock.server.app.settings import Settings


async def collect(acks: Any) -> list[Any]:
    """Every message of a stream (an ApplyMovements call's acks)."""
    return [a async for a in acks]


def run_machine(
    machine: type[RealServer],
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    max_examples: int,
    steps: int,
) -> None:
    """Run a state machine on one event loop and one private redis-server (AOF, fsync always)
    for the whole test; its data dir (class attribute tmp, and data_dir) is fresh."""
    loop = asyncio.new_event_loop()
    with RedisServer(tmp_path_factory.mktemp(f"{name}-redis")) as server:
        machine.loop = loop
        machine.redis = server
        machine.tmp = machine.data_dir = tmp_path_factory.mktemp(f"{name}-var")
        try:
            run_state_machine_as_test(
                machine,  # type: ignore[arg-type]
                settings=settings(
                    max_examples=max_examples,
                    stateful_step_count=steps,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                ),
            )
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


class RealServer:
    """Mixin of a state machine: `run` a coroutine on the test's loop, `_start` / `_stop` the
    server (Settings overridden by `settings`), `c` its admin client."""

    loop: ClassVar[asyncio.AbstractEventLoop]
    redis: ClassVar[RedisServer]
    #: A directory of the test's own (see run_machine).
    tmp: ClassVar[Path]
    data_dir: Path
    #: Settings fields for every start of the server.
    server_settings: ClassVar[dict[str, Any]] = {}
    srv: UnistockServer | None = None
    client: UnistockClient | None = None

    def empty_redis(self) -> None:
        """Start an example on an empty Redis."""
        r = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            r.flushall()
        finally:
            r.close()

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
