"""Replay an audio file through the streaming core as if it were live.

    python -m serve.simulate FILE [--json] [--speed X] [--chunk 1.0]

Partials are shown in place on a terminal, finals as timestamped lines; ``--json``
prints one protocol message per line (partial/final/end) instead. No Ray involved.
"""

from __future__ import annotations

import argparse
import sys
import time

from serve.core.audio import SAMPLE_RATE, load_audio, to_int16
from serve.core.engine import BatchedWhisper, EngineOptions
from serve.core.messages import End, Final, Partial
from serve.core.stream import StreamProcessor, StreamState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.simulate", description=__doc__.split("\n")[1])
    parser.add_argument("file", help="audio file (WAV, or anything PyAV reads)")
    parser.add_argument("--json", action="store_true", help="print protocol messages, one JSON per line")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed; 0 = as fast as possible")
    parser.add_argument("--chunk", type=float, default=1.0, help="seconds of audio per chunk")
    parser.add_argument("--model", default=EngineOptions().model, help="model spec (default: bundled tiny.en)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--language", default=None)
    args = parser.parse_args(argv)

    audio = to_int16(load_audio(args.file))
    engine = BatchedWhisper(EngineOptions(model=args.model, device=args.device))
    processor = StreamProcessor()
    state = StreamState(language=args.language)
    step = max(1, int(args.chunk * SAMPLE_RATE))
    show = _Printer(json_lines=args.json, tty=sys.stdout.isatty())
    started = time.monotonic()
    for offset in range(0, max(audio.size, 1), step):
        if args.speed > 0:
            delay = started + (offset + step) / SAMPLE_RATE / args.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        show(processor.process(state, audio[offset : offset + step], engine.transcribe))
    show(processor.close(state, engine.transcribe))
    show([End(duration=round(state.duration, 3))])
    return 0


class _Printer:
    def __init__(self, json_lines: bool, tty: bool) -> None:
        self.json_lines, self.tty = json_lines, tty

    def __call__(self, messages: list[Partial | Final | End]) -> None:
        for message in messages:
            if self.json_lines:
                print(message.to_json(), flush=True)
            elif isinstance(message, Final):
                self._clear()
                print(f"[{message.start:7.2f} → {message.end:7.2f}] {message.text}", flush=True)
            elif isinstance(message, Partial) and self.tty:
                self._clear()
                print(f"  … {message.text}"[:200], end="\r", flush=True)
            elif isinstance(message, End):
                self._clear()
                print(f"-- end: {message.duration:.2f} s of audio", flush=True)

    def _clear(self) -> None:
        if self.tty:
            print("\x1b[2K", end="\r")


if __name__ == "__main__":
    raise SystemExit(main())
