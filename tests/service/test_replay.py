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

from serve.bench.room import looped
from serve.core.audio import load_audio, to_int16
from serve.core.stream import StreamState
from serve.deploy.app import actor_options
from serve.deploy.buffer_manager import SharedCalls, StreamCalls
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


QUIET_ITEMS = ("noise-white-10s", "noise-pink-15s", "noise-brown-15s", "hum-50hz-10s")
"""Non-speech the VAD hears as no speech: their calls decode nothing (no model noise in the comparison)."""


# Replica options as the application's own replicas have them: the driver's call carries 8 x 61 s of audio
# (31 MB), more than a replica's gRPC server takes by default.
@serve.deployment(ray_actor_options=actor_options(num_cpus=0))
class QuietStreams:
    """Quiet streams calling the BufferManager as an Ingress replica's do, their calls sharing trips (``SharedCalls``
    is a ``@serve.batch``: it runs in a replica)."""

    def __init__(self) -> None:
        self.handle = serve.get_deployment_handle("BufferManager", app_name=APP)

    async def run(self, audio: list[np.ndarray]) -> tuple[list[tuple], int]:
        """A 1 s call each, then one long call each, together in one trip. Returns each stream's end (audio start,
        VAD frames and recurrent state) and the calls sent."""
        shared = SharedCalls(self.handle)
        calls = [StreamCalls(self.handle, uuid.uuid4().hex, retry_s=60.0, shared=shared) for _ in audio]
        states = [StreamState(language="en") for _ in audio]
        for first in (True, False):
            pcm = [to_int16(a)[:16_000] if first else to_int16(a)[16_000:] for a in audio]
            assert all(s.quiet for s in states)  # these calls go in a shared trip
            answers = await asyncio.gather(*(c.process(s, p) for c, s, p in zip(calls, states, pcm)))
            assert not any(answer.messages for answer in answers)
            states = [answer.state for answer in answers]
        assert sum(shared.trips.values()) < len(calls) * 2  # calls shared trips
        return [(s.audio_start, s.vad.frames, s.vad.lstm) for s in states], sum(c.sent for c in calls)


def test_a_shared_trip_lost_with_its_replica_is_sent_again_call_by_call(service, by_id):
    """A trip carries the calls of several quiet streams: when its BufferManager replica dies under it, every one
    of those calls fails, and each stream sends its own call again (to the new replica, with the audio it does not
    hold), ending exactly where it would have."""
    healthy(service)
    # The long calls' trip takes about half a second of VAD (8 streams x 60 s at 1.2 ms a second of audio), so the
    # kill finds it in flight.
    audio = [looped(load_audio(by_id[item].path), 61.0) for item in QUIET_ITEMS for _ in range(2)]
    driver = serve.run(QuietStreams.bind(), name="quiet-streams", route_prefix=None)
    try:
        undisturbed, sent = driver.run.remote(audio).result(timeout_s=120)
        assert sent == 2 * len(audio)

        async def disturbed_run():  # type: ignore[no-untyped-def]
            running = driver.run.remote(audio)
            killed = await kill_when_busy("BufferManager")  # under the long trip (or the short one: as good)
            return killed, await running

        killed, (disturbed, sent_again) = asyncio.run(disturbed_run())
    finally:
        serve.delete("quiet-streams")
    healthy(service)
    print(f"BufferManager {killed} killed under a shared trip: {sent_again} calls for {2 * len(audio)}")
    assert sent_again > sent  # the trip was lost: its calls were sent again
    for (start, frames, lstm), (want_start, want_frames, want_lstm) in zip(disturbed, undisturbed):
        assert (start, frames) == (want_start, want_frames)
        np.testing.assert_allclose(lstm, want_lstm, atol=1e-6)
