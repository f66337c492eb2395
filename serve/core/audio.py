"""PCM in: decode client frames, validate them, resample to the model's 16 kHz."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
import soxr

from serve.core.errors import AudioError

SAMPLE_RATE = 16_000
"""The rate everything after the edge works at (Whisper's and Silero's)."""

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000


class Encoding(str, Enum):
    F32LE = "f32le"
    S16LE = "s16le"

    @property
    def sample_width(self) -> int:
        return 4 if self is Encoding.F32LE else 2


def check_sample_rate(rate: int) -> int:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample_rate {rate} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    return rate


def decode_pcm(data: bytes, encoding: Encoding) -> np.ndarray:
    """Raw little-endian mono PCM to float32 in [-1, 1]; raises AudioError on bad input."""
    width = encoding.sample_width
    if len(data) % width:
        raise AudioError(
            f"{len(data)} bytes is not a whole number of {encoding.value} samples"
            f" ({width} bytes each)"
        )
    if encoding is Encoding.S16LE:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise AudioError("f32le audio contains NaN or Inf samples")
    # Browsers can overshoot [-1, 1] slightly; clipping keeps int16 conversion exact.
    return np.clip(samples, -1.0, 1.0)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16)


def to_float32(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


class Resampler:
    """Streaming resampler to 16 kHz that keeps its filter state across chunks."""

    def __init__(self, input_rate: int) -> None:
        self.input_rate = check_sample_rate(input_rate)
        self._stream = (
            None
            if input_rate == SAMPLE_RATE
            else soxr.ResampleStream(input_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=last)


class PcmDecoder:
    """A session's audio edge: client bytes in, 16 kHz int16 out."""

    def __init__(self, encoding: Encoding, sample_rate: int) -> None:
        self.encoding = encoding
        self.resampler = Resampler(sample_rate)
        self.samples_in = 0

    def decode(self, data: bytes) -> np.ndarray:
        samples = decode_pcm(data, self.encoding)
        self.samples_in += samples.size
        return to_int16(self.resampler.process(samples))

    def flush(self) -> np.ndarray:
        return to_int16(self.resampler.process(np.zeros(0, np.float32), last=True))

    @property
    def seconds_in(self) -> float:
        return self.samples_in / self.resampler.input_rate


def load_audio(path: str | Path) -> np.ndarray:
    """Any file PyAV can read, as 16 kHz mono float32."""
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=SAMPLE_RATE)
