"""A replica killed mid-call changes nothing, word for word.

Over the WebSocket the Ingress merges whatever audio arrived during a call into the next one, so two runs of one
file decode different windows and their texts differ by a few words (conftest.TIMING_SPREAD_ERRORS); the socket
tests in test_faults.py must allow that spread, which would hide a lost one- or two-word final. Here the chunking
is fixed: the same 1 s chunks go through the BufferManager's own Serve handle in order, by the Ingress's own
``StreamCalls``: the state carried from one call to the next as the Ingress carries it, its audio held by the
replica, and a call lost with a replica sent again as the Ingress sends it (with the audio, to a new replica). A retry repeats the exact call, so a disturbed run must give exactly the
messages of the undisturbed one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest
from ray import serve

from serve.core.audio import load_audio, to_int16
from serve.core.stream import StreamState
from serve.deploy.buffer_manager import StreamCalls
from tests.conftest import Service, check_finals, kill_when_busy, wait_for

pytestmark = pytest.mark.serve

APP = "asr"
"""The application name conftest's ``service`` deploys under."""
ITEM = "dagon-par1"
"""34 s of continuous read speech: partials, agreed finals and a final flush."""
KILL_FROM_CHUNK = 8


@dataclass
class Replay:
    messages: list[dict]
    attempts: list[int]
    """Calls made per chunk: 2 or more where a call was lost with a replica and sent again."""
    killed: list[str] = field(default_factory=list)
    resent_with_audio: int = 0
    """Calls a replica could not take light, not holding the stream's audio (a new replica), sent again with it."""


def chunks(audio: np.ndarray) -> list[np.ndarray]:
    pcm = to_int16(audio)
    return [pcm[i : i + 16_000] for i in range(0, pcm.size, 16_000)]


async def replay(pieces: list[np.ndarray], retry_s: float, kill: str | None = None, kills: int = 1) -> Replay:
    """Every chunk through ``BufferManager.process`` in order (the last one finalizes); with ``kill``, from chunk
    KILL_FROM_CHUNK on, that deployment's replica is killed ``kills`` times, each time while it has a call in flight."""
    calls = StreamCalls(serve.get_deployment_handle("BufferManager", app_name=APP), uuid.uuid4().hex, retry_s=retry_s)
    state = StreamState(language="en")
    run = Replay([], [])

    async def killer() -> None:
        for _ in range(kills):
            run.killed.append(await kill_when_busy(kill))  # type: ignore[arg-type]

    killing: asyncio.Task | None = None
    for i, pcm in enumerate(pieces):
        if kill and i == KILL_FROM_CHUNK:
            killing = asyncio.create_task(killer())
        sent = calls.sent
        processed = await calls.process(state, pcm, i == len(pieces) - 1)
        state = processed.state
        run.messages += [json.loads(m.to_json()) for m in processed.messages]
        run.attempts.append(calls.sent - sent)
    if killing is not None:
        await asyncio.wait_for(killing, 5)  # every kill landed on a call of this sequence
    run.resent_with_audio = calls.resent_with_audio
    return run


def healthy(service: Service) -> None:
    wait_for(lambda: service.health()[0] == 200, 180, "the service to be healthy again")


@pytest.fixture(scope="module")
def pieces(by_id) -> list[np.ndarray]:
    return chunks(load_audio(by_id[ITEM].path))


@pytest.fixture(scope="module")
def undisturbed(service, pieces) -> Replay:
    healthy(service)
    run = asyncio.run(replay(pieces, service.args["limits"]["retry_s"]))
    assert run.attempts == [1] * len(pieces)
    assert run.resent_with_audio == 0  # one replica held the stream's audio from call to call
    check_finals([m for m in run.messages if m["type"] == "final"], len(pieces))
    assert sum(len(m["words"]) for m in run.messages if m["type"] == "final") >= 60
    return run


def same_messages(disturbed: Replay, undisturbed: Replay) -> None:
    def text(run: Replay) -> str:
        return " ".join(m["text"] for m in run.messages if m["type"] == "final")

    assert text(disturbed) == text(undisturbed)
    for got, want in zip(disturbed.messages, undisturbed.messages):
        assert got == want
    assert len(disturbed.messages) == len(undisturbed.messages)


@pytest.mark.parametrize(
    "deployment,kills",
    [("BufferManager", 1), ("Whisper", 1), ("Whisper", 2)],
    ids=["BufferManager", "Whisper", "Whisper-again-under-the-retry"],
)
def test_a_replica_killed_mid_call_gives_the_same_messages_word_for_word(service, pieces, undisturbed, deployment, kills):
    """Whisper killed once: the BufferManager sends the decode again. Killed again under that second try: the
    BufferManager's call fails (a task error wrapping the ActorDiedError) and the caller sends the whole call again."""
    disturbed = asyncio.run(replay(pieces, service.args["limits"]["retry_s"], kill=deployment, kills=kills))
    healthy(service)
    resent = [i for i, n in enumerate(disturbed.attempts) if n > 1]
    print(f"{deployment} killed {kills}x ({disturbed.killed}); calls sent again at chunks {resent}")
    assert len(disturbed.killed) == kills
    if deployment == "BufferManager" or kills > 1:
        assert resent, disturbed.attempts  # the kill was mid-call and reached the caller, which sent the call again
    if deployment == "BufferManager":
        assert disturbed.resent_with_audio >= 1  # the new replica did not hold the stream's audio: it was sent
    same_messages(disturbed, undisturbed)
