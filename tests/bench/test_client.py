"""serve.client against a stand-in server on port 0: pacing, arrival times, refusals, unreadable frames, no end."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import numpy as np
import pytest
from websockets.asyncio.server import serve

from serve.client import NotReady, stream_file

CHUNK = 1600  # 0.1 s


def run_against(handler, **kwargs):  # type: ignore[no-untyped-def]
    """``stream_file`` of 0.3 s of int16 audio against ``handler``; returns the transcript."""

    async def go():  # type: ignore[no-untyped-def]
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            audio = np.zeros(3 * CHUNK, dtype=np.int16)
            return await stream_file(audio, f"ws://127.0.0.1:{port}/v1/listen", chunk_s=0.1, **kwargs)

    return asyncio.run(go())


class Recognizer:
    """Says ``ready``, answers each chunk with a final over its audio, and ``stop`` with ``end``."""

    def __init__(self) -> None:
        self.query: dict[str, str] = {}
        self.chunks: list[float] = []  # seconds after ready

    async def __call__(self, ws) -> None:  # type: ignore[no-untyped-def]
        self.query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(ws.request.path).query))
        await ws.send(json.dumps({"type": "ready"}))
        began, heard = time.monotonic(), 0.0
        async for frame in ws:
            if isinstance(frame, bytes):
                self.chunks.append(time.monotonic() - began)
                end = heard + len(frame) / 2 / 16000
                await ws.send(json.dumps({"type": "final", "text": "w", "start": heard, "end": end}))
                heard = end
            elif json.loads(frame)["type"] == "stop":
                await ws.send(json.dumps({"type": "end", "duration": heard}))
                return


@pytest.mark.parametrize("as_recorded", [False, True])
def test_chunks_leave_on_schedule_and_every_reply_is_kept(as_recorded):
    server = Recognizer()
    result = run_against(server, speed=1.0, as_recorded=as_recorded, params={"language": "en"})
    # A chunk leaves when its first sample would have been recorded, or (as a microphone) its last one.
    due = [0.1, 0.2, 0.3] if as_recorded else [0.0, 0.1, 0.2]
    assert all(d - 0.01 <= at <= d + 0.08 for d, at in zip(due, server.chunks)), server.chunks
    assert server.query == {"sample_rate": "16000", "encoding": "s16le", "language": "en"}
    assert [m["type"] for m in result.messages] == ["final", "final", "final", "end"]
    assert result.arrivals == sorted(result.arrivals) and result.arrivals[0] >= due[0]
    assert result.text == "w w w" and result.close_code == 1000 and result.errors == []
    assert result.sent_s == pytest.approx(0.3) and result.started is not None and result.connect_s is not None


def test_a_refused_stream_raises_not_ready_with_the_servers_message():
    async def refuse(ws) -> None:  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"type": "error", "code": "overloaded", "message": "busy"}))
        await ws.close(1013)

    with pytest.raises(NotReady) as refused:
        run_against(refuse)
    assert refused.value.message["code"] == "overloaded"


def test_frames_that_are_not_protocol_messages_are_noted_and_skipped():
    async def garble(ws) -> None:  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"type": "ready"}))
        for frame in (b"\x00", "not json", '{"no": "type"}', json.dumps({"type": "error", "code": "x", "message": "y"})):
            await ws.send(frame)
        async for frame in ws:
            if isinstance(frame, str):
                await ws.send(json.dumps({"type": "end", "duration": 0.3}))
                return

    result = run_against(garble, speed=0)
    assert [m["type"] for m in result.messages] == ["error", "end"]
    assert result.errors == ["binary frame from the server", "not a protocol message: 'not json'",
                             "not a protocol message: '{\"no\": \"type\"}'", "x: y"]


def test_a_stream_without_end_is_given_up_after_end_timeout():
    async def mute(ws) -> None:  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"type": "ready"}))
        async for _ in ws:
            pass

    result = run_against(mute, speed=0, end_timeout_s=0.2)
    assert result.errors == ["no end within 0.2 s after the audio"] and not result.of_type("end")
