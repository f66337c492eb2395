"""The service's WebSocket client: stream audio as a live client would, record every reply and when it came.

    python -m serve.client FILE [--url ws://127.0.0.1:8000/v1/listen] [--json] [--speed X]

Sends 1 s chunks at real time (or X times faster), shows partials in place and finals
as lines; ``--json`` prints every server message with its arrival time instead.
``stream_file`` is the one client: this command, the load benchmark (``serve.bench``) and the tests call it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import websockets

from serve.core.audio import SAMPLE_RATE, load_audio, to_int16

DEFAULT_URL = "ws://127.0.0.1:8000/v1/listen"


FATAL_CLOSE_CODES = {1000, 1003, 1008, 1009}
"""Closes after which reconnecting would not help: a normal end, or the server refused what was sent."""


class NotReady(RuntimeError):
    """The server's first message was not ``ready``: it refused the stream (overloaded, unauthorized, a bad query)."""

    def __init__(self, message: object, close_code: int | None) -> None:
        super().__init__(f"expected ready, got {message}")
        self.message, self.close_code = message, close_code


@dataclass
class Transcript:
    """What one streamed file came back as (times on the file's timeline, across reconnects)."""

    messages: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """Seconds since ``started``, per message."""
    close_code: int | None = None
    reconnects: int = 0
    started: float | None = None
    """``time.monotonic()`` when the first ``ready`` came in: the moment sample 0 counts as sent (or recorded)."""
    connect_s: float | None = None
    """From opening the first connection to its ``ready``."""
    sent_s: float = 0.0
    """Seconds of audio sent (audio sent again after a reconnect counts again)."""
    max_send_late_s: float = 0.0
    """How far behind its schedule the client itself sent a chunk: large values mean the client, not the server, lagged."""
    errors: list[str] = field(default_factory=list)
    """What went wrong as the client saw it, in order: the server's ``error`` messages (``code: message``), frames
    that are not protocol messages, connections closed abnormally, no ``end`` in time."""

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


def listen_url(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query; a parameter the URL already has keeps the URL's value."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    for key, value in params.items():
        query.setdefault(key, value)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def encode(chunk: np.ndarray, encoding: str) -> bytes:
    """int16 samples as the wire's ``s16le`` or ``f32le`` bytes."""
    if encoding == "s16le":
        return chunk.astype("<i2").tobytes()
    return (chunk.astype(np.float32) / 32768.0).astype("<f4").tobytes()


def _read(raw: str | bytes, errors: list[str]) -> dict | None:
    """One frame as a protocol message, or None with the reason appended to ``errors``."""
    if isinstance(raw, bytes):
        errors.append("binary frame from the server")
        return None
    try:
        message = json.loads(raw)
        str(message["type"])
    except (ValueError, TypeError, KeyError):
        errors.append(f"not a protocol message: {raw[:200]!r}")
        return None
    return message


async def stream_file(
    audio: np.ndarray,
    url: str | Sequence[str] = DEFAULT_URL,
    *,
    speed: float = 1.0,
    chunk_s: float = 1.0,
    encoding: str = "s16le",
    params: dict[str, str] | None = None,
    on_message: Callable[[dict, float], object] | None = None,
    on_sent: Callable[[float], object] | None = None,
    reconnects: int = 0,
    as_recorded: bool = False,
    open_timeout_s: float = 10.0,
    ready_timeout_s: float | None = None,
    end_timeout_s: float | None = None,
) -> Transcript:
    """Send ``audio`` (16 kHz float32 in [-1, 1], or int16) in ``chunk_s`` chunks paced at ``speed`` x real time
    (0: as fast as the socket takes them), then ``stop``; collect every reply with its arrival time until the close.

    A chunk leaves when its first sample would have been recorded (``started + start / speed``: one chunk ahead of a
    microphone), or with ``as_recorded`` when its last one would have been, as a microphone sends it: then every lag
    measured from ``started`` includes the chunking. ``on_message(message, arrival)`` and ``on_sent(audio_seconds)``
    see each reply and chunk as it happens. The first message must be ``ready`` (else ``NotReady``), within
    ``ready_timeout_s``; with ``end_timeout_s``, a connection that has no ``end`` that long after its last chunk was
    due is given up (recorded in ``errors``).

    With ``reconnects`` > 0, a connection lost before ``end`` (a replica or node died: close 1006,
    1011, 1012, 1013, or no close at all) is opened again, up to that many times, and the audio is
    sent again from the end of the last final received: nothing committed is repeated, nothing
    uncommitted is lost. ``url`` may list several servers (each node's proxy): reconnects go to
    the next one in turn.
    """
    urls = [url] if isinstance(url, str) else list(url)
    query = {"sample_rate": str(SAMPLE_RATE), "encoding": encoding, **(params or {})}
    pcm = audio if audio.dtype == np.int16 else to_int16(audio)
    step = max(1, int(chunk_s * SAMPLE_RATE))
    result = Transcript()
    resume = 0  # sample the current connection starts at
    heard = 0.0  # end of the last final, on the file's timeline
    while True:
        offset = resume / SAMPLE_RATE
        try:
            target = listen_url(urls[result.reconnects % len(urls)], query)
            opened = time.monotonic()
            async with websockets.connect(
                target, proxy=None, compression=None, max_size=None, open_timeout=open_timeout_s
            ) as ws:
                ready = json.loads(await asyncio.wait_for(ws.recv(), ready_timeout_s))
                if ready.get("type") != "ready":
                    result.close_code = ws.close_code
                    raise NotReady(ready, ws.close_code)
                if result.started is None:
                    result.started = time.monotonic()
                    result.connect_s = result.started - opened
                t0 = result.started

                async def sender(ws=ws, first=resume, t0=t0) -> None:  # type: ignore[no-untyped-def]
                    try:
                        for at in range(first, pcm.size, step):
                            chunk = pcm[at : at + step]
                            if speed > 0:  # on the file's timeline: audio resent after a reconnect goes at once
                                due = t0 + (at + (chunk.size if as_recorded else 0)) / SAMPLE_RATE / speed
                                await asyncio.sleep(max(0.0, due - time.monotonic()))
                                result.max_send_late_s = max(result.max_send_late_s, time.monotonic() - due)
                            await ws.send(encode(chunk, encoding))
                            result.sent_s += chunk.size / SAMPLE_RATE
                            if on_sent:
                                on_sent(chunk.size / SAMPLE_RATE)
                        await ws.send(json.dumps({"type": "stop"}))
                    except websockets.ConnectionClosed:
                        pass  # the receiver records why the server closed

                audio_left = (pcm.size - resume) / SAMPLE_RATE / speed if speed > 0 else 0.0
                send_task = asyncio.create_task(sender())
                try:
                    async with asyncio.timeout(None if end_timeout_s is None else audio_left + end_timeout_s):
                        async for raw in ws:
                            at = time.monotonic() - t0
                            message = _read(raw, result.errors)
                            if message is None:
                                continue
                            message = shifted(message, offset)
                            result.messages.append(message)
                            result.arrivals.append(at)
                            if message["type"] == "final" and isinstance(message.get("end"), int | float):
                                heard = message["end"]
                            elif message["type"] == "error":
                                result.errors.append(f"{message.get('code')}: {message.get('message')}")
                            if on_message:
                                on_message(message, at)
                except websockets.ConnectionClosedError as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    result.errors.append(f"closed with {code}: {exc.rcvd.reason if exc.rcvd else exc}")
                except TimeoutError:
                    if not result.of_type("end"):
                        result.errors.append(f"no end within {end_timeout_s:g} s after the audio")
                    result.close_code = ws.close_code
                    return result
                finally:
                    send_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await send_task  # a sender's own failure is raised here
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
    parser = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__.split("\n")[0])
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

    try:
        result = asyncio.run(
            stream_file(
                load_audio(args.file), args.url, speed=args.speed, params=params, on_message=show, reconnects=args.reconnects
            )
        )
    except NotReady as refused:
        print(f"refused: {refused.message}", file=sys.stderr)
        return 1
    return 0 if result.of_type("end") else 1


if __name__ == "__main__":
    raise SystemExit(main())
