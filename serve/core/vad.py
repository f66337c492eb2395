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
    """Scores 32 ms frames with the bundled Silero model; holds no per-stream state."""

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self._session = load_silero_vad(onnx=True).session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def score(self, state: VadState, samples: np.ndarray) -> np.ndarray:
        """Probabilities for every whole frame in remainder + samples; updates state."""
        return self.score_batch([(state, samples)])[0]

    def score_batch(self, jobs: list[tuple[VadState, np.ndarray]]) -> list[np.ndarray]:
        """``score`` for several streams at once: the model runs once per frame step on every stream that has a
        frame at that step (a stream's frames are sequential: its recurrent state carries from one to the next).
        A model call costs about the same for a few streams as for one, so concurrent calls share them."""
        audios = [np.concatenate([state.remainder, samples.astype(np.float32)]) for state, samples in jobs]
        counts = [audio.size // FRAME for audio in audios]
        order = sorted(range(len(jobs)), key=lambda j: -counts[j])  # the streams with a frame at step i lead
        lstm = np.concatenate([jobs[j][0].lstm for j in order], axis=1)
        context = np.stack([jobs[j][0].context for j in order])
        frames = np.zeros((len(jobs), max(counts, default=0), FRAME), np.float32)
        for row, j in enumerate(order):
            frames[row, : counts[j]] = audios[j][: counts[j] * FRAME].reshape(-1, FRAME)
        probs = np.empty(frames.shape[:2], np.float32)
        active = len(jobs)
        for i in range(frames.shape[1]):
            while counts[order[active - 1]] <= i:
                active -= 1
            x = np.concatenate([context[:active], frames[:active, i]], axis=1)
            out, lstm[:, :active] = self._session.run(None, {"input": x, "state": lstm[:, :active], "sr": self._sr})
            probs[:active, i] = out[:, 0]
            context[:active] = frames[:active, i, -CONTEXT:]
        results: list[np.ndarray] = [np.empty(0, np.float32)] * len(jobs)
        for row, j in enumerate(order):
            state, n = jobs[j][0], counts[j]
            state.lstm, state.context = lstm[:, row : row + 1].copy(), context[row].copy()
            state.remainder = audios[j][n * FRAME :].copy()
            results[j] = probs[row, :n].copy()
        return results


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
