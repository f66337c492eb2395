"""Calls between deployments: which failures mean "the replica died", how long to retry one, and timeouts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentResponse

log = logging.getLogger("ray.serve")

T = TypeVar("T")

RETRYABLE: tuple[type[BaseException], ...] = (RayActorError,)
"""A replica that died or became unreachable mid-call (ActorDiedError, ActorUnavailableError).
The calls are pure (the stream state travels with them), so the same call can go to another replica."""


def dead_replica(exc: BaseException) -> bool:
    """Whether ``exc`` means a replica died somewhere down the call, so that the same call may be sent again.

    A replica that died under a deployment this call went through (Whisper under the BufferManager, after the
    BufferManager's own retry) comes back as a task error of that deployment wrapping the ActorDiedError. Ray
    usually makes it an instance of both (``RayTaskError(ActorDiedError)``); when it cannot build that class it
    raises the plain RayTaskError, with the death only in its ``cause``. Both count; a failure of the code itself
    (a DecodeError, a bug), wrapped or not, does not.
    """
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, RETRYABLE):
            return True
        if not isinstance(exc, RayTaskError):
            return False
        exc, seen = exc.cause, seen + 1  # type: ignore[assignment]
    return False


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
        except Exception as exc:
            if not dead_replica(exc):
                raise
            out_of_time = time.monotonic() + delay > deadline
            if out_of_time or (max_attempts is not None and attempt >= max_attempts):
                raise
            log.warning("%s: replica unavailable (%s); retry %d in %.2f s", what, type(exc).__name__, attempt, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 4.0)


async def answer_within(response: DeploymentResponse, timeout_s: float) -> Any:
    """A handle call's result; TimeoutError (and the call cancelled) when it takes longer than ``timeout_s``."""

    async def result() -> Any:
        return await response

    try:
        return await asyncio.wait_for(result(), timeout_s)
    except TimeoutError:
        response.cancel()
        raise
