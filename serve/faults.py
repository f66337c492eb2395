"""Which failures of a call mean "the replica died", and how long to keep retrying one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import RayActorError

log = logging.getLogger("ray.serve")

T = TypeVar("T")

RETRYABLE: tuple[type[BaseException], ...] = (RayActorError,)
"""A replica that died or became unreachable mid-call (ActorDiedError, ActorUnavailableError).
The calls are pure (the stream state travels with them), so the same call can go to another replica."""


async def retry_dead_replica(
    call: Callable[[], Awaitable[T]], *, budget_s: float, what: str, max_attempts: int | None = None
) -> T:
    """Run ``call``; while it fails because its replica died, back off and call again.

    Stops after ``budget_s`` seconds or ``max_attempts`` calls, re-raising the last failure.
    Any other exception propagates at once.
    """
    deadline = time.monotonic() + budget_s
    delay, attempt = 0.25, 0
    while True:
        attempt += 1
        try:
            return await call()
        except RETRYABLE as exc:
            out_of_time = time.monotonic() + delay > deadline
            if out_of_time or (max_attempts is not None and attempt >= max_attempts):
                raise
            log.warning("%s: replica unavailable (%s); retry %d in %.2f s", what, type(exc).__name__, attempt, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 4.0)
