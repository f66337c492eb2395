"""The BufferManager deployment: stateless; stream state in, stream state and messages out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.engine import DecodeResult
from serve.core.messages import Final, Partial
from serve.core.stream import StreamingOptions, StreamProcessor, StreamState
from serve.whisper import DecodeFailure


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
        """Merge ``pcm`` into the stream, run the VAD and decode every window that is due."""
        # VAD on a chunk is milliseconds of CPU: run it in a thread so other streams' calls interleave.
        await asyncio.to_thread(self.processor.push, state, pcm)
        if finalize:
            self.processor.finalize(state)
        messages: list[Partial | Final] = []
        while (window := self.processor.next_window(state)) is not None:
            result = await self.whisper.transcribe.remote(self.processor.request(state, window))
            if isinstance(result, DecodeFailure):
                raise DecodeError(f"{result.kind}: {result.message}")
            assert isinstance(result, DecodeResult)
            messages.extend(self.processor.apply(state, window, result))
        return Processed(state, messages)
