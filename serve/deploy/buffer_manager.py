"""The BufferManager deployment: stream state in, stream state and messages out.

Stateless as far as a stream's record goes: the Ingress keeps every stream's state. To keep calls light, a replica
holds each stream's pending audio between its calls (serve.core.held), and a replica that does not hold it answers
``MissingAudio`` so that the caller (``StreamCalls``) sends the call again with the audio. (Serve routes calls by
load, not by stream: with one BufferManager replica, a node's usual count, every light call finds its audio; with k,
about one in k does. Serve's multiplexed-model routing would keep a stream on one replica, but it dispatched the
calls one at a time here: 30 concurrent calls were 30 VAD batches of one.)

The calls of streams with no speech pending share trips (``SharedCalls`` on the Ingress, ``process_many`` here): one
Ray call carries many, since a call's own cost is more than a silent stream's work.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.engine import DecodeFailure, DecodeRequest, DecodeResult, Features, MelFrames, ModelFacts, Shed
from serve.core.held import HeldAudio, rebuild, without_audio
from serve.core.messages import Final, Partial
from serve.core.stream import ScoreJob, StreamingOptions, StreamProcessor, StreamState, advance
from serve.deploy.metrics import PayloadBytes
from serve.deploy.retry import answer_within, retry_dead_replica

WHISPER_RETRY_S = 30.0
"""How long a decode waits for a dead Whisper replica to be replaced (it is retried once)."""
VAD_BATCH = 64
"""Calls whose new audio goes to the VAD's worker thread in one hand-off."""
VAD_WAIT_S = 0.005
"""How long a call's audio waits for others to share that hand-off (Serve's batch wait)."""
MAX_HELD_STREAMS = 4096
"""Streams whose pending audio one replica holds (at most ``max_buffer_s`` + a call's audio each, about 0.5 MB, and
as much again in the live window's feature frames while the stream has speech pending; a stream that has ended holds
its pre-roll pad, about 10 KB). Past this, the least recently called stream's audio is let go and its next call
carries its audio again."""


class DecodeError(RuntimeError):
    """Whisper could not decode this stream's window."""


class Unavailable(RuntimeError):
    """Whisper did not answer a health check."""


@dataclass
class Processed:
    state: StreamState
    """Without its pending audio (``rebuild`` puts it back)."""
    messages: list[Partial | Final]


@dataclass(frozen=True)
class MissingAudio:
    """The answer of a replica that does not hold the stream's audio: send the call again with it."""


@serve.deployment(name="BufferManager", max_ongoing_requests=256)
class BufferManager:
    def __init__(self, whisper: DeploymentHandle) -> None:
        self.whisper = whisper
        self.processor = StreamProcessor()
        self._features: Features | None = None
        self.shed_until = {True: 0.0, False: 0.0}
        """By eagerness: until when Whisper expects to refuse optional decodes (its last refusal's retry_after_s)."""
        self.held: OrderedDict[str, HeldAudio] = OrderedDict()
        """Streams' pending audio as their last call here left it (serve.core.held), least recently called first."""
        self.vad_batches: Counter[int] = Counter()
        """VAD hand-offs by size: the calls whose audio went to the VAD's thread together."""
        self.shed_here = {True: 0, False: 0}
        """Optional decodes this replica shed without sending them, by eagerness."""

    def reconfigure(self, config: dict) -> None:
        """Live VAD/policy options from ``user_config``; the VAD model itself is kept."""
        if config:
            self.processor.options = StreamingOptions.model_validate(config)

    async def ping(self, timeout_s: float) -> ModelFacts:
        """``/healthz`` through this replica: the model's facts once Whisper answers, so the path of a stream's call
        is checked; a clear ``Unavailable`` when Whisper does not answer within ``timeout_s``."""
        try:
            return await answer_within(self.whisper.ping.remote(), timeout_s)
        except TimeoutError:
            raise Unavailable(f"Whisper: no answer within {timeout_s:g} s") from None
        except Exception as exc:
            raise Unavailable(f"Whisper: {type(exc).__name__}") from None

    def info(self) -> dict:
        """What this replica did on its own (``/metrics/summary``)."""
        return {
            "shed_here": {"eager": self.shed_here[True], "partial": self.shed_here[False]},
            "vad_batches": dict(sorted(self.vad_batches.items())),
        }

    async def whisper_info(self) -> dict:
        """What the Whisper replica answering this call has done (``/metrics/summary``)."""
        return await self.whisper.info.remote()

    def held_audio(self, stream_id: str) -> HeldAudio:
        """A stream's held audio (new: none), most recently called last; past MAX_HELD_STREAMS the least recently
        called stream's audio is let go."""
        held = self.held.pop(stream_id, None) or HeldAudio()
        self.held[stream_id] = held
        while len(self.held) > MAX_HELD_STREAMS:
            self.held.popitem(last=False)
        return held

    async def process(
        self, state: StreamState, pcm: np.ndarray, finalize: bool = False, received: int | None = None,
        stream_id: str | None = None,
    ) -> Processed | MissingAudio:
        """Merge ``pcm`` into the stream, run the VAD and decode every window the core asks for.

        ``received``: the state was sent without its pending audio, which ended at this sample; a replica holding
        the audio of ``stream_id`` as its last call left it puts it back, any other answers ``MissingAudio``. None:
        the state carries its audio. With a ``stream_id`` the replica holds the audio after the call. The answer's
        state never carries it.

        The core's ``steps`` owns the loop and decides what may be skipped; this only moves its decode jobs to
        Whisper and their results back (``None`` when Whisper shed a partial decode because it is behind).
        """
        held = self.held_audio(stream_id) if stream_id else None
        if received is not None and (held is None or not held.fill(state, received)):
            return MissingAudio()
        call = self.processor.steps(state, pcm, finalize)
        step = advance(call, None)
        while not isinstance(step, list):
            if isinstance(step, ScoreJob):
                step = advance(call, await self.score(step))
            elif step.optional and time.monotonic() < self.shed_until[step.eager]:
                self.shed_here[step.eager] += 1  # Whisper said it has no room for this kind yet: not even sent
                step = advance(call, None)
            else:
                reuse = (held.mel, step.window.start) if held is not None else None
                step = advance(call, await self.decode(step.request, optional=step.optional, eager=step.eager, reuse=reuse))
        if held is not None:
            held.keep(state)
        return Processed(without_audio(state), step)

    async def process_many(self, calls: list[tuple]) -> list[Processed | MissingAudio | Exception]:
        """Several streams' calls in one trip (``SharedCalls``): each answer, or the exception its call raised, in
        order, so that one stream's failure is that stream's alone. Their VAD jobs go to the VAD's thread together."""
        return await asyncio.gather(*(self.process(*call) for call in calls), return_exceptions=True)

    @serve.batch(max_batch_size=VAD_BATCH, batch_wait_timeout_s=VAD_WAIT_S)
    async def score(self, jobs: list[ScoreJob]) -> list[np.ndarray]:
        """The VAD on the new audio of the calls in flight, in one hand-off to a thread (so that calls keep arriving
        meanwhile): one model call per call's audio (serve.core.vad.SileroVad)."""
        self.vad_batches[len(jobs)] += 1
        return await asyncio.to_thread(self.processor.vad.score_batch, [(job.state, job.samples) for job in jobs])

    async def features(self) -> Features:
        """How the served model wants its features (asked of Whisper once)."""
        if self._features is None:
            facts = await retry_dead_replica(
                lambda: self.whisper.ping.remote(), budget_s=WHISPER_RETRY_S, what="Whisper", max_attempts=2
            )
            self._features = Features(facts)
        return self._features

    async def decode(
        self, request: DecodeRequest, optional: bool, eager: bool = False, reuse: tuple[MelFrames, int] | None = None
    ) -> DecodeResult | None:
        """One window through Whisper; a request lost with a dead replica is sent once more.

        None: an ``optional`` (partial) decode that Whisper refused because it is behind. The window's log-mel
        features are computed here, in a thread, and travel instead of its audio: Whisper's replica only stacks them
        for the device, and this CPU work scales with the BufferManager replicas. ``reuse``: the stream's kept
        frames and the window's start sample; only the frames its new audio could change are computed.
        """
        features = await self.features()
        request = await asyncio.to_thread(features.request, request, *(reuse or ()))
        result = await retry_dead_replica(
            lambda: self.whisper.transcribe.remote(request, optional, eager),
            budget_s=WHISPER_RETRY_S, what="Whisper", max_attempts=2,
        )
        if isinstance(result, Shed):
            # Until Whisper expects room again, this replica sheds such decodes itself: no features computed for
            # them, no bytes sent. A partial refused means no room for an eager one either.
            until = time.monotonic() + result.retry_after_s
            for kind in (True, False) if not eager else (True,):
                self.shed_until[kind] = max(self.shed_until[kind], until)
            return None
        if isinstance(result, DecodeFailure):
            raise DecodeError(f"{result.kind}: {result.message}")
        assert isinstance(result, DecodeResult)
        return result


SHARED_BATCH = 64
"""Quiet streams' calls one trip to the BufferManager carries at most."""
SHARED_WAIT_S = 0.05
"""How long a quiet stream's call waits for others to share its trip (Serve's batch wait). It delays only the calls
of streams with no speech pending; the first words of a speaker starting to talk come at most this much later."""
SHARED_TRIPS = 64
"""Trips in flight at once: one waiting for a decode never holds back the next."""


class SharedCalls:
    """The calls of an Ingress replica's quiet streams (``StreamState.quiet``), many in one trip to the
    BufferManager (``process_many``). A Ray Serve call costs about 4 ms of CPU between the two replicas whatever it
    carries, more than all the rest of a silent stream's call; a trip shared by k calls costs about 1/k of that per
    call, and their audio goes to the VAD's thread together. Streams with speech pending keep calls of their own: their
    decodes take long, and a shared trip answers when its last call is done."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.trips: Counter[int] = Counter()
        """Trips by the number of calls they carried."""

    @serve.batch(max_batch_size=SHARED_BATCH, batch_wait_timeout_s=SHARED_WAIT_S, max_concurrent_batches=SHARED_TRIPS)
    async def send(self, calls: list[tuple]) -> list[Processed | MissingAudio | Exception]:
        self.trips[len(calls)] += 1
        return await self.handle.process_many.remote(calls)


class StreamCalls:
    """A stream's calls to the BufferManager, as its Ingress makes them: light (without the pending audio the
    answering replica holds), sent again with the audio when that replica does not hold it, and sent again whole
    when a replica died (``retry_dead_replica``). The caller's state is its record; the answer's state comes back
    with its audio rebuilt."""

    def __init__(
        self, handle: DeploymentHandle, stream_id: str, *, retry_s: float, payload: PayloadBytes | None = None,
        shared: SharedCalls | None = None,
    ) -> None:
        self.handle, self.shared = handle, shared
        """``shared``: the trips a quiet stream's calls share with other streams' (else each call is its own)."""
        self.stream_id, self.retry_s, self.payload = stream_id, retry_s, payload
        self.sent = 0
        """Calls sent, including each one sent again."""
        self.resent_with_audio = 0
        """Calls a replica answered MissingAudio (and were sent again with the audio)."""

    async def process(self, state: StreamState, pcm: np.ndarray, finalize: bool = False) -> Processed:
        shared = self.shared if state.quiet else None
        light = (without_audio(state), pcm, finalize, state.received, self.stream_id)
        answer = await self._send(light, shared)
        if isinstance(answer, MissingAudio):
            self.resent_with_audio += 1
            answer = await self._send((state, pcm, finalize, None, self.stream_id), shared)
        if not isinstance(answer, Processed):
            raise TypeError(f"the BufferManager answered {type(answer).__name__} to a call with the audio")
        return Processed(rebuild(state, pcm, answer.state), answer.messages)

    async def _send(self, arguments: tuple, shared: SharedCalls | None) -> Processed | MissingAudio:
        async def counted() -> Processed | MissingAudio:
            self.sent += 1
            if self.payload is not None:
                self.payload.call(arguments)
            if shared is None:
                return await self.handle.process.remote(*arguments)
            answer = await shared.send(arguments)
            if isinstance(answer, Exception):
                raise answer  # this call's own failure (a dead replica under it is retried like any)
            return answer

        answer = await retry_dead_replica(counted, budget_s=self.retry_s, what=f"stream {self.stream_id}: BufferManager")
        if self.payload is not None:
            self.payload.answer(answer)
        return answer
