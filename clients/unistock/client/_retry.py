"""Retrying idempotent calls across UNAVAILABLE: jittered exponential back-off up to a deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from unistock.client._errors import UnistockClientError

__all__ = ["RetryPolicy"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How UnistockClient retries a call that is idempotent on the wire.

    A call failing with a retryable error (:class:`UnavailableError`: UNAVAILABLE or
    DEADLINE_EXCEEDED) is sent again after a pause drawn uniformly from ``[0, b]`` ("full
    jitter"), where ``b`` is ``initial_backoff`` seconds, multiplied by ``multiplier`` after
    each attempt up to ``max_backoff``, for at most ``attempts`` attempts in all (``None``:
    no count limit); no attempt starts later than ``deadline`` seconds after the first one
    began (each attempt may then take up to the client's ``timeout``): the last error is
    raised instead. ``attempts=1`` disables retries. Calls that are not idempotent
    (ApplyMovements, a partial fulfilment without request_id) are never retried.
    """

    deadline: float = 30.0
    attempts: int | None = None
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts: at least 1 (1 disables retries)")
        if self.deadline < 0 or self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("deadline and back-offs: seconds, not negative")
        if self.multiplier < 1:
            raise ValueError("multiplier: at least 1")

    async def call(
        self,
        attempt: Callable[[], Awaitable[_T]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> _T:
        """The result of ``attempt()``, retried as described; raises its last error."""
        started = time.monotonic()
        bound = self.initial_backoff
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except UnistockClientError as exc:
                if not exc.retryable or (self.attempts is not None and tries >= self.attempts):
                    raise
                pause = random.uniform(0, bound)  # jitter, not a secret
                if time.monotonic() - started + pause > self.deadline:
                    raise
                await sleep(pause)
                bound = min(bound * self.multiplier, self.max_backoff)
