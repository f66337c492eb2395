"""One run: N concurrent streams of evaluation audio against the service, each through ``serve.client``.

Each stream plays a different evaluation file (cycling when N exceeds the files, in an order
shuffled once by the seed), starts after a random offset of up to ``stagger_s`` seconds, and
sends ``chunk_s`` chunks at real time (``speed``) the way a microphone does: the chunk holding
audio [k, k+1) s leaves at ``started + (k+1) / speed``, where ``started`` is when ``ready`` came
in and stands for the moment sample 0 was recorded. So every lag includes the chunking the page
does too. After the last chunk: ``stop``, then wait for ``end``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.bench.cpu import CpuSampler, CpuUsage
from serve.bench.eval_set import EvalItem
from serve.bench.rest import fetch_summary
from serve.client import DEFAULT_URL, NotReady, Transcript, stream_file
from serve.core.audio import SAMPLE_RATE


def read_pcm16(path: Path) -> np.ndarray:
    """16 kHz mono int16 samples; anything but such a WAV goes through faster-whisper's decoder."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2):
                return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    except wave.Error:
        pass
    from faster_whisper import decode_audio

    audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options every benchmark shares: where the service is, which eval set, and how each stream is
    sent (``Options``)."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service WebSocket URL (default {DEFAULT_URL})")
    parser.add_argument("--http-url", help="service HTTP base for /metrics/summary (default: from --url)")
    parser.add_argument("--manifest", type=Path, help="eval manifest (default $ASR_EVAL_DIR/manifest.jsonl)")
    parser.add_argument("--chunk", type=float, default=1.0, help="seconds of audio per binary frame (default 1)")
    parser.add_argument("--language", default="en", help="language query parameter ('' to leave it out)")
    parser.add_argument("--token", default=os.environ.get("ASR_API_KEY"), help="API key (default $ASR_API_KEY)")
    parser.add_argument("--end-timeout", type=float, default=60.0, help="seconds to wait for end after the audio")


@dataclass(frozen=True)
class Options:
    """How every stream of a run is played (written to bench.json's ``config``)."""

    speed: float = 1.0
    """Replay speed: 1 is real time."""
    chunk_s: float = 1.0
    """Seconds of audio per binary frame."""
    encoding: str = "s16le"
    """``s16le`` or ``f32le`` on the wire."""
    language: str | None = "en"
    """The ``language`` query parameter; None leaves it out."""
    token: str | None = None
    """API key, sent as the ``token`` query parameter and to ``/metrics/summary``."""
    stagger_s: float = 1.0
    """Streams start at random offsets in [0, this) s."""
    end_timeout_s: float = 60.0
    """How long a stream waits for ``end`` after its audio."""
    seed: int = 0
    """Seeds the file order and the start offsets."""

    def params(self) -> dict[str, str]:
        """The query parameters of each stream, besides sample rate and encoding."""
        optional = {"language": self.language, "token": self.token}
        return {"interim_results": "true", **{k: v for k, v in optional.items() if v}}


@dataclass
class StreamRecord:
    """One stream of a run: its file, when it started and what the client saw."""

    item: EvalItem
    offset_s: float
    transcript: Transcript = field(default_factory=Transcript)

    @property
    def failed(self) -> bool:
        return not self.transcript.of_type("end") or self.transcript.close_code not in (1000, None)


@dataclass
class RunRecord:
    """One run of ``streams`` concurrent streams, and the service's figures before and after it."""

    service: str
    streams: int
    records: list[StreamRecord]
    wall_s: float
    server_before: dict[str, Any] | None
    server_after: dict[str, Any] | None
    server_cpu: CpuUsage | None


class Progress:
    """One status line on stderr: audio sent, finals received, streams finished."""

    def __init__(self, label: str, streams: int, total_audio_s: float) -> None:
        self.label, self.streams, self.total = label, streams, max(total_audio_s, 1e-9)
        self.sent = 0.0
        self.finals = self.errors = self.done = 0
        self.tty = sys.stderr.isatty()
        self._last_line = 0.0

    def on_sent(self, seconds: float) -> None:
        self.sent += seconds

    def on_message(self, message: dict, arrival: float) -> None:
        if message["type"] == "final":
            self.finals += 1

    def render(self, final: bool = False) -> None:
        width = 30
        filled = int(width * min(self.sent / self.total, 1.0))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.sent:6.1f}/{self.total:.1f} s audio  "
            f"finals {self.finals}  errors {self.errors}  done {self.done}/{self.streams}"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
            sys.stderr.flush()
        elif final or time.monotonic() - self._last_line >= 10:
            self._last_line = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    async def run(self) -> None:
        while True:
            self.render()
            await asyncio.sleep(0.5)


async def play_stream(url: str, record: StreamRecord, audio: np.ndarray, options: Options, progress: Progress) -> None:
    """Play one file after its offset; whatever goes wrong is recorded in ``record``, never raised."""
    await asyncio.sleep(record.offset_s)
    try:
        record.transcript = await stream_file(
            audio, url, speed=options.speed, chunk_s=options.chunk_s, encoding=options.encoding,
            params=options.params(), on_message=progress.on_message, on_sent=progress.on_sent,
            as_recorded=True, open_timeout_s=30, ready_timeout_s=30, end_timeout_s=options.end_timeout_s,
        )
    except NotReady as exc:
        record.transcript.errors.append(f"first message is not ready: {exc.message}")
        record.transcript.close_code = exc.close_code
    except Exception as exc:  # one stream's failure is a result, not a reason to stop the sweep
        record.transcript.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        progress.done += 1
        progress.errors += len(record.transcript.errors)


def plan_items(items: Sequence[EvalItem], seed: int) -> list[EvalItem]:
    """The order streams take files in: shuffled once, so N streams use the first N (cycling)."""
    ordered = list(items)
    random.Random(seed).shuffle(ordered)
    return ordered


async def run_load(
    service: str,
    url: str,
    http_url: str | None,
    n: int,
    items: Sequence[EvalItem],
    audio: dict[Path, np.ndarray],
    options: Options,
    server_pid: int | None,
) -> RunRecord:
    offsets = random.Random(options.seed * 1_000_003 + n)
    records = [StreamRecord(items[i % len(items)], offsets.uniform(0, options.stagger_s)) for i in range(n)]
    progress = Progress(f"{service} N={n}", n, sum(audio[r.item.path].size / SAMPLE_RATE for r in records))
    before = await fetch_summary(http_url, options.token)
    sampler = CpuSampler(server_pid) if server_pid else None
    began = time.monotonic()
    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(progress.run())
        cpu_task = group.create_task(sampler.run()) if sampler else None
        await asyncio.gather(*(play_stream(url, r, audio[r.item.path], options, progress) for r in records))
        ticker.cancel()
        if cpu_task:
            cpu_task.cancel()
    progress.render(final=True)
    wall = time.monotonic() - began
    after = await fetch_summary(http_url, options.token)
    return RunRecord(service, n, records, wall, before, after, sampler.usage() if sampler else None)
