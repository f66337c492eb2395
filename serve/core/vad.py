"""Incremental Silero VAD: only new audio is scored, the model state is carried.

The model is the ONNX file the ``silero-vad`` package bundles, run on onnxruntime
(cheaper per 32 ms frame than its TorchScript twin here: see ``serve.bench.core``).
The recurrent state and the 64-sample context travel in ``VadState`` so that any
BufferManager replica can continue any stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serve.core.audio import SAMPLE_RATE

FRAME = 512
"""Samples per VAD frame at 16 kHz (32 ms), fixed by the model."""
CONTEXT = 64
"""Samples of the previous frame the model sees before each frame."""


class VadOptions(BaseModel):
    """How speech is told from silence and when a pause ends a turn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Speech probability at or above which a frame is speech.")
    neg_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Probability below which a frame counts as silence; default threshold - 0.15."
    )
    min_silence_ms: int = Field(
        1000, ge=100, le=10_000, description="Silence that ends a speech segment (endpointing): the final is committed then."
    )
    speech_pad_ms: int = Field(
        300, ge=0, le=2_000, description="Audio kept before speech starts and after it ends, so word edges are not cut."
    )
    min_speech_ms: int = Field(
        200, ge=0, le=5_000, description="Shorter bursts of 'speech' are treated as noise and not transcribed."
    )

    @property
    def silence_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    @property
    def min_silence_samples(self) -> int:
        return self.min_silence_ms * SAMPLE_RATE // 1000

    @property
    def pad_samples(self) -> int:
        return self.speech_pad_ms * SAMPLE_RATE // 1000

    @property
    def min_speech_samples(self) -> int:
        return self.min_speech_ms * SAMPLE_RATE // 1000


def _zeros_state() -> np.ndarray:
    return np.zeros((2, 1, 128), np.float32)


def _zeros_context() -> np.ndarray:
    return np.zeros(CONTEXT, np.float32)


@dataclass
class SpeechSegment:
    """A span of voiced audio in absolute samples; ``end`` is None while it is open."""

    start: int
    end: int | None = None


@dataclass
class VadState:
    lstm: np.ndarray = field(default_factory=_zeros_state)
    context: np.ndarray = field(default_factory=_zeros_context)
    remainder: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    frames: int = 0
    """Frames scored so far; frame i covers samples [i*FRAME, (i+1)*FRAME)."""
    open_segment: SpeechSegment | None = None
    last_voiced: int = 0
    """End sample of the last frame at or above the threshold."""
    pause_at: int = 0
    """The latest pause inside speech: its last voiced sample + ``speech_pad_ms``, set once the silence after that
    sample is ``speech_pad_ms`` long (so audio up to it holds no speech after the pause began)."""


class SileroVad:
    """Scores 32 ms frames with the bundled Silero model; holds no per-stream state.

    The model is the package's "sequence" export: one ONNX call scores all of a call's frames (its recurrent state
    carried inside the call), where the streaming export takes one call per frame. Both give the same probabilities
    (tests/core/test_vad.py checks them against the streaming model, frame by frame); one call for a second of
    audio costs here about 1.2 ms, where 31 streaming calls cost 3.0 ms for one stream alone and 1.5 ms a stream
    batched six at a time.
    """

    MAX_FRAMES = 512
    """Frames per model call at most (16 s of audio): a call that brings more is scored in blocks."""

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self._session = load_silero_vad(sequence=True).session

    def score(self, state: VadState, samples: np.ndarray) -> np.ndarray:
        """Probabilities for every whole frame in remainder + samples; updates state."""
        audio = np.concatenate([state.remainder, samples.astype(np.float32)])
        count = audio.size // FRAME
        probs = np.empty(count, np.float32)
        for first in range(0, count, self.MAX_FRAMES):
            frames = audio[first * FRAME : min(count, first + self.MAX_FRAMES) * FRAME].reshape(-1, FRAME)
            contexts = np.empty((frames.shape[0], CONTEXT), np.float32)
            contexts[0] = state.context
            contexts[1:] = frames[:-1, -CONTEXT:]
            out, h, c = self._session.run(
                ["speech_probs", "hn", "cn"],
                {"input": np.concatenate([contexts, frames], axis=1), "h": state.lstm[:1], "c": state.lstm[1:]},
            )
            probs[first : first + frames.shape[0]] = out.reshape(-1)
            state.lstm, state.context = np.concatenate([h, c]), frames[-1, -CONTEXT:].copy()
        state.remainder = audio[count * FRAME :].copy()
        return probs

    def score_batch(self, jobs: list[tuple[VadState, np.ndarray]]) -> list[np.ndarray]:
        """``score`` for several streams' calls, one after the other (a BufferManager hands the calls in flight to
        one worker thread together)."""
        return [self.score(state, samples) for state, samples in jobs]


def segment(state: VadState, probs: np.ndarray, options: VadOptions) -> list[SpeechSegment]:
    """Advance the speech/silence state machine over scored frames.

    Returns the segments that closed during these frames; an open segment stays in
    ``state.open_segment``. Segments shorter than ``min_speech_ms`` are dropped.
    """
    closed: list[SpeechSegment] = []
    for p in probs:
        start, end = state.frames * FRAME, (state.frames + 1) * FRAME
        state.frames += 1
        if p >= options.threshold:
            state.last_voiced = end
            if state.open_segment is None:
                state.open_segment = SpeechSegment(start)
        elif state.open_segment is not None and p < options.silence_threshold:
            if end - state.last_voiced >= max(options.pad_samples, FRAME):
                state.pause_at = state.last_voiced + options.pad_samples
            if end - state.last_voiced >= options.min_silence_samples:
                seg = state.open_segment
                seg.end = state.last_voiced
                state.open_segment = None
                if seg.end - seg.start >= options.min_speech_samples:
                    closed.append(seg)
    return closed
