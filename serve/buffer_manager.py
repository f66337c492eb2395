"""The BufferManager deployment: stateless; stream state in, stream state and messages out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.engine import DecodeRequest, DecodeResult
from serve.core.messages import Final, Partial
from serve.core.stream import StreamingOptions, StreamProcessor, StreamState, WindowKind
from serve.faults import retry_dead_replica
from serve.whisper import DecodeFailure, Shed

WHISPER_RETRY_S = 30.0
"""How long a decode waits for a dead Whisper replica to be replaced (it is retried once)."""


class DecodeError(RuntimeError):
    """Whisper could not decode this stream's window."""


@dataclass
class Processed:
    state: StreamState
    messages: list[Partial | Final]


@serve.deployment(name="BufferManager", max_ongoing_requests=256)
class BufferManager:
    def __init__(self, whisper: DeploymentHandle) -> None:
        self.whisper = whisper
        self.processor = StreamProcessor()

    def reconfigure(self, config: dict) -> None:
        """Live VAD/policy options from ``user_config``; the VAD model itself is kept."""
        if config:
            self.processor.options = StreamingOptions.model_validate(config)

    async def process(self, state: StreamState, pcm: np.ndarray, finalize: bool = False) -> Processed:
        """Merge ``pcm`` into the stream, run the VAD and decode every window that is due.

        Partial decodes are skipped when the stream is behind (this call brings a lot of
        audio at once) or when Whisper is (it sheds them): finals keep coming under overload.
        """
        # VAD on a chunk is milliseconds of CPU: run it in a thread so other streams' calls interleave.
        await asyncio.to_thread(self.processor.push, state, pcm)
        if finalize:
            self.processor.finalize(state)
        partials = not self.processor.behind(pcm)
        messages: list[Partial | Final] = self.processor.settle(state)
        while (window := self.processor.next_window(state, partials=partials)) is not None:
            result = await self.decode(self.processor.request(state, window), optional=window.kind is WindowKind.PARTIAL)
            if result is None:  # Whisper is behind and shed this partial decode: finals only for now
                partials = False
                continue
            messages.extend(self.processor.apply(state, window, result))
        return Processed(state, messages)

    async def decode(self, request: DecodeRequest, optional: bool) -> DecodeResult | None:
        """One window through Whisper; a request lost with a dead replica is sent once more.

        None: an ``optional`` (partial) decode that Whisper refused because it is behind.
        """
        result = await retry_dead_replica(
            lambda: self.whisper.transcribe.remote(request, optional),
            budget_s=WHISPER_RETRY_S, what="Whisper", max_attempts=2,
        )
        if isinstance(result, Shed):
            return None
        if isinstance(result, DecodeFailure):
            raise DecodeError(f"{result.kind}: {result.message}")
        assert isinstance(result, DecodeResult)
        return result
