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
    resets the backoff. An ``aiomqtt.MqttError`` out of it (alone or from a task group) is logged
    and the session started again after the backoff.
    """
    backoff = first

    def connected() -> None:
        nonlocal backoff
        backoff = first

    while True:
        try:
            await session(connected)
        except* aiomqtt.MqttError as group:
            log.warning("%s: broker connection lost (%s)", what, group.exceptions[0])
        # aiomqtt (asyncio.wait_for on 3.11) can turn our cancellation into an MqttError:
        # a cancelled task must stop, not reconnect.
        reraise_if_cancelling()
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, cap)
