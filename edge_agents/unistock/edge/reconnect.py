"""Reconnect-for-ever loop shared by the agent's MQTT clients (uplink, reader broker)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

__all__ = ["reconnecting", "reraise_if_cancelling"]

log = logging.getLogger(__name__)


def reraise_if_cancelling() -> None:
    """Raise ``CancelledError`` if this task was cancelled during an aiomqtt call that returned.

    aiomqtt awaits every publish/subscribe through ``asyncio.wait_for``, which on Python 3.11
    returns the result and drops the cancellation when both happen in the same loop pass
    (CPython gh-86296, fixed in 3.12), or turns it into an ``MqttError``. A task that carries
    on would never stop, and the task group waiting for it (the agent's shutdown on SIGTERM)
    would hang: call this after every such await in a loop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def reconnecting(
    session: Callable[[Callable[[], None]], Awaitable[None]],
    what: str,
    *,
    first: float = 0.2,
    cap: float = 10.0,
) -> None:
    """Run ``session`` again and again, with jittered exponential backoff, until cancelled.

    ``session`` is one connection's life; it gets a callback to call once connected, which
    resets the backoff. An ``aiomqtt.MqttError`` out of it (alone or from a task group) ends
    the session; it is started again after the backoff.

    Logged: the first failure of an outage at WARNING, each later failed attempt at DEBUG, and
    once connected again ``broker connection restored after N s`` at INFO.
    """
    loop = asyncio.get_running_loop()
    backoff = first
    down_since: float | None = None  # loop time of the first failure of the current outage
    ever_connected = False

    def connected() -> None:
        nonlocal backoff, down_since, ever_connected
        backoff = first
        if down_since is not None:
            log.info(
                "%s: broker connection %s after %.0f s",
                what,
                "restored" if ever_connected else "established",
                loop.time() - down_since,
            )
        down_since = None
        ever_connected = True

    while True:
        try:
            await session(connected)
        except* aiomqtt.MqttError as group:
            error = group.exceptions[0]
            if down_since is None:
                down_since = loop.time()
                log.warning(
                    "%s: broker connection %s (%s); retrying with backoff up to %.0f s "
                    "(each attempt at debug)",
                    what,
                    "lost" if ever_connected else "failed",
                    error,
                    cap,
                )
            else:
                log.debug(
                    "%s: still no broker connection after %.0f s (%s)",
                    what,
                    loop.time() - down_since,
                    error,
                )
        # aiomqtt (asyncio.wait_for on 3.11) can turn our cancellation into an MqttError:
        # a cancelled task must stop, not reconnect.
        reraise_if_cancelling()
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, cap)
