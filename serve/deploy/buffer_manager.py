"""The BufferManager deployment: stateless; stream state in, stream state and messages out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.engine import DecodeFailure, DecodeRequest, DecodeResult, Features, ModelFacts, Shed
from serve.core.messages import Final, Partial
from serve.core.stream import DecodeJob, StreamingOptions, StreamProcessor, StreamState, advance
from serve.deploy.retry import answer_within, retry_dead_replica

WHISPER_RETRY_S = 30.0
"""How long a decode waits for a dead Whisper replica to be replaced (it is retried once)."""


class DecodeError(RuntimeError):
    """Whisper could not decode this stream's window."""


class Unavailable(RuntimeError):
    """Whisper did not answer a health check."""


@dataclass
class Processed:
    state: StreamState
    messages: list[Partial | Final]


@serve.deployment(name="BufferManager", max_ongoing_requests=256)
class BufferManager:
    def __init__(self, whisper: DeploymentHandle) -> None:
        self.whisper = whisper
        self.processor = StreamProcessor()
        self._features: Features | None = None

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

    async def whisper_info(self) -> dict:
        """What the Whisper replica answering this call has done (``/metrics/summary``)."""
        return await self.whisper.info.remote()

    async def process(self, state: StreamState, pcm: np.ndarray, finalize: bool = False) -> Processed:
        """Merge ``pcm`` into the stream, run the VAD and decode every window the core asks for.

        The core's ``steps`` owns the loop and decides what may be skipped; this only moves its decode jobs to
        Whisper and their results back (``None`` when Whisper shed a partial decode because it is behind).
        """
        call = self.processor.steps(state, pcm, finalize)
        # The VAD on a chunk is milliseconds of CPU: the first step runs in a thread so other calls interleave.
        # (A StopIteration cannot cross into an asyncio future, so it is caught in the thread.)
        step = await asyncio.to_thread(advance, call, None)
        while isinstance(step, DecodeJob):
            step = advance(call, await self.decode(step.request, optional=step.optional, eager=step.eager))
        return Processed(state, step)

    async def features(self) -> Features:
        """How the served model wants its features (asked of Whisper once)."""
        if self._features is None:
            facts = await retry_dead_replica(
                lambda: self.whisper.ping.remote(), budget_s=WHISPER_RETRY_S, what="Whisper", max_attempts=2
            )
            self._features = Features(facts)
        return self._features

    async def decode(self, request: DecodeRequest, optional: bool, eager: bool = False) -> DecodeResult | None:
        """One window through Whisper; a request lost with a dead replica is sent once more.

        None: an ``optional`` (partial) decode that Whisper refused because it is behind. The window's log-mel
        features are computed here, in a thread, and travel instead of its audio: Whisper's replica only stacks them
        for the device, and this CPU work scales with the BufferManager replicas.
        """
        features = await self.features()
        request = await asyncio.to_thread(features.request, request)
        result = await retry_dead_replica(
            lambda: self.whisper.transcribe.remote(request, optional, eager),
            budget_s=WHISPER_RETRY_S, what="Whisper", max_attempts=2,
        )
        if isinstance(result, Shed):
            return None
        if isinstance(result, DecodeFailure):
            raise DecodeError(f"{result.kind}: {result.message}")
        assert isinstance(result, DecodeResult)
        return result
