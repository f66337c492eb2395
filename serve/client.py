"""Stream an audio file to the service over WebSocket, as a live client would.

    python -m serve.client FILE [--url ws://127.0.0.1:8000/v1/listen] [--json] [--speed X]

Sends 1 s chunks at real time (or X times faster), shows partials in place and finals
as lines; ``--json`` prints every server message with its arrival time instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

import numpy as np
import websockets

from serve.core.audio import SAMPLE_RATE, load_audio, to_int16

DEFAULT_URL = "ws://127.0.0.1:8000/v1/listen"


FATAL_CLOSE_CODES = {1000, 1003, 1008, 1009}
"""Closes after which reconnecting would not help: a normal end, or the server refused what was sent."""


@dataclass
class Transcript:
    """What one streamed file came back as (times on the file's timeline, across reconnects)."""

    messages: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """Seconds since the first audio was sent, per message."""
    close_code: int | None = None
    reconnects: int = 0

    @property
    def finals(self) -> list[dict]:
        return [m for m in self.messages if m["type"] == "final"]

    @property
    def text(self) -> str:
        return " ".join(m["text"] for m in self.finals)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


def shifted(message: dict, seconds: float) -> dict:
    """``message`` with its times moved ``seconds`` later (a stream reopened part-way through the file)."""
    if not seconds or "start" not in message:
        return message
    out = {**message, "start": round(message["start"] + seconds, 3), "end": round(message["end"] + seconds, 3)}
    if "words" in message:
        out["words"] = [{**w, "start": round(w["start"] + seconds, 3), "end": round(w["end"] + seconds, 3)} for w in message["words"]]
    return out


async def stream_file(
    audio: np.ndarray,
    url: str | Sequence[str] = DEFAULT_URL,
    *,
    speed: float = 1.0,
    chunk_s: float = 1.0,
    params: dict[str, str] | None = None,
    on_message=None,  # type: ignore[no-untyped-def]
    reconnects: int = 0,
) -> Transcript:
    """Send 16 kHz float32 ``audio`` as s16le chunks paced at ``speed`` x real time; collect replies.

    With ``reconnects`` > 0, a connection lost before ``end`` (a replica or node died: close 1006,
    1011, 1012, 1013, or no close at all) is opened again, up to that many times, and the audio is
    sent again from the end of the last final received: nothing committed is repeated, nothing
    uncommitted is lost. ``url`` may list several servers (each node's proxy): reconnects go to
    the next one in turn.
    """
    urls = [url] if isinstance(url, str) else list(url)
    query = {"sample_rate": str(SAMPLE_RATE), "encoding": "s16le", **(params or {})}
    pcm = to_int16(audio).astype("<i2").tobytes()
    step = int(chunk_s * SAMPLE_RATE) * 2
    result = Transcript()
    started: float | None = None
    resume = 0  # sample the current connection starts at
    heard = 0.0  # end of the last final, on the file's timeline
    while True:
        offset = resume / SAMPLE_RATE
        try:
            target = urls[result.reconnects % len(urls)]
            async with websockets.connect(f"{target}?{urlencode(query)}", max_size=None) as ws:
                ready = json.loads(await ws.recv())
                if ready["type"] != "ready":
                    raise RuntimeError(f"expected ready, got {ready}")
                if started is None:
                    started = time.monotonic()
                t0 = started

                async def sender(ws=ws, first=resume * 2, t0=t0) -> None:  # type: ignore[no-untyped-def]
                    for at in range(first, len(pcm), step):
                        if speed > 0:  # on the file's timeline: audio resent after a reconnect goes at once
                            await asyncio.sleep(max(0.0, t0 + at / 2 / SAMPLE_RATE / speed - time.monotonic()))
                        await ws.send(pcm[at : at + step])
                    await ws.send(json.dumps({"type": "stop"}))

                send_task = asyncio.create_task(sender())
                try:
                    async for raw in ws:
                        message = shifted(json.loads(raw), offset)
                        result.messages.append(message)
                        result.arrivals.append(time.monotonic() - t0)
                        if message["type"] == "final":
                            heard = message["end"]
                        if on_message:
                            on_message(message, result.arrivals[-1])
                except websockets.ConnectionClosedError:
                    pass
                finally:
                    send_task.cancel()
                result.close_code = ws.close_code
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):  # gone before or while opening
            if result.reconnects >= reconnects:
                raise
            result.close_code = None
        if result.of_type("end") or result.close_code in FATAL_CLOSE_CODES or result.reconnects >= reconnects:
            return result
        result.reconnects += 1
        resume = int(heard * SAMPLE_RATE)
        await asyncio.sleep(min(0.5 * 2 ** (result.reconnects - 1), 5.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__.split("\n")[1])
    parser.add_argument("file")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--json", action="store_true", help="print server messages with arrival times")
    parser.add_argument("--speed", type=float, default=1.0, help="x real time; 0 sends as fast as the socket takes it. The server lets a stream run at most "
        "limits.max_pending_seconds (60 s) of audio ahead of the recognizer (README: fast senders)")
    parser.add_argument("--language", default=None)
    parser.add_argument("--token", default=None, help="API key, when the service requires one")
    parser.add_argument("--reconnects", type=int, default=5, help="times to reopen a lost connection (0: none)")
    args = parser.parse_args(argv)
    params = {k: v for k, v in {"language": args.language, "token": args.token}.items() if v}
    tty = sys.stdout.isatty()

    def show(message: dict, at: float) -> None:
        if args.json:
            print(json.dumps({"t": round(at, 3), **message}), flush=True)
        elif message["type"] == "final":
            print(("\x1b[2K\r" if tty else "") + f"[{message['start']:7.2f} → {message['end']:7.2f}] {message['text']}")
        elif message["type"] == "partial" and tty:
            print(f"\x1b[2K\r  … {message['text']}"[:200], end="", flush=True)
        elif message["type"] == "error":
            print(f"error {message['code']}: {message['message']}", file=sys.stderr)
        elif message["type"] == "end":
            print(("\x1b[2K\r" if tty else "") + f"-- end: {message['duration']:.2f} s of audio")

    result = asyncio.run(
        stream_file(
            load_audio(args.file), args.url, speed=args.speed, params=params, on_message=show, reconnects=args.reconnects
        )
    )
    return 0 if result.of_type("end") else 1


if __name__ == "__main__":
    raise SystemExit(main())
