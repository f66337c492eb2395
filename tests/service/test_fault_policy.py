"""Which failures a stream's call is sent again for (serve.deploy.retry), on Ray's own exception objects; no cluster.

The real kills are in test_faults.py and test_replay.py; this pins the classification those rely on, including
the form Ray falls back to when it cannot make a task error an instance of its cause.
"""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from serve.deploy.buffer_manager import DecodeError
from serve.deploy.retry import dead_replica, retry_dead_replica


def task_error(cause: BaseException) -> RayTaskError:
    """What a caller gets when the deployment it called raised ``cause`` (plain: Ray's fallback form)."""
    return RayTaskError("ServeReplica:asr:BufferManager.handle_request_with_rejection", "Traceback ...", cause)


def run(failures: list[BaseException], budget_s: float = 5.0) -> tuple[str | BaseException, int]:
    """retry_dead_replica over a call that raises ``failures`` in turn, then answers; (outcome, attempts)."""
    attempts = 0

    async def call() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= len(failures):
            raise failures[attempts - 1]
        return "answered"

    async def go() -> str | BaseException:
        try:
            return await retry_dead_replica(call, budget_s=budget_s, what="test")
        except Exception as exc:
            return exc

    return asyncio.run(go()), attempts


@pytest.mark.parametrize(
    "failure",
    [
        ActorDiedError(),  # the BufferManager replica itself died
        ActorUnavailableError("unreachable", None),
        task_error(ActorDiedError()).as_instanceof_cause(),  # Whisper died under it: RayTaskError(ActorDiedError)
        task_error(ActorDiedError()),  # the same, when Ray cannot build the dual class
        task_error(task_error(ActorDiedError())),  # two deployments down
    ],
    ids=["dead", "unavailable", "task-error-dual", "task-error-plain", "task-error-nested"],
)
def test_a_dead_replica_anywhere_down_the_call_is_retried(failure):
    assert dead_replica(failure)
    outcome, attempts = run([failure, failure])
    assert outcome == "answered" and attempts == 3


@pytest.mark.parametrize(
    "failure",
    [
        ValueError("a bug"),
        DecodeError("ValueError: window of 31.0 s exceeds Whisper's 30 s"),
        task_error(DecodeError("ValueError: model is English-only")).as_instanceof_cause(),
        task_error(DecodeError("ValueError: model is English-only")),
        task_error(ValueError("a bug")),
    ],
    ids=["bug", "decode-error", "task-decode-error-dual", "task-decode-error-plain", "task-bug"],
)
def test_a_failure_of_the_code_itself_is_not_retried(failure):
    """The same call would fail the same way: it reaches the stream at once (``internal``, 1011)."""
    assert not dead_replica(failure)
    outcome, attempts = run([failure])
    assert outcome is failure and attempts == 1


def test_a_replica_that_stays_dead_past_the_budget_ends_the_retries():
    failure = task_error(ActorDiedError())
    outcome, attempts = run([failure] * 20, budget_s=0.5)
    assert outcome is failure and 2 <= attempts <= 3
