"""Bad input, limits and auth against the running service, with a healthy stream alongside.

Every case of the table opens its own connection to the real service and checks the
error code and close code PROTOCOL.md gives it; meanwhile one well-behaved stream
transcribes a long file and must come out as well as it does alone.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import websockets

from serve.bench.eval_set import load_items
from serve.client import stream_file
from serve.core.audio import load_audio
from serve.core.auth import key_digest
from tests.conftest import check_errors, check_finals

pytestmark = pytest.mark.serve

KEY = "test-key-7f3c9a1e5b"
"""Written to serve.yaml's args only as its digest: the test also checks Ray's logs never hold it."""
ORIGIN = "http://captions.example"
LIMITS = {"max_streams": 4, "idle_timeout_s": 3.0, "max_pending_seconds": 20.0, "max_streams_per_client": 1}
"""With API keys there is no cap per client address: the streams of this module all come from 127.0.0.1."""


@pytest.fixture(scope="module")
def guarded(service):
    """The service with an API key, an origin list and small limits; restored afterwards (live, no restart)."""
    original = service.args
    args = copy.deepcopy(original)
    args["auth"] = {"api_keys": [key_digest(KEY)], "allowed_origins": [ORIGIN]}
    args["limits"] = {**args.get("limits", {}), **LIMITS}
    service.redeploy(args)
    yield service
    service.redeploy(original)


@dataclass
class Outcome:
    messages: list[dict]
    close_code: int | None

    @property
    def errors(self) -> list[str]:
        return [m["code"] for m in self.messages if m["type"] == "error"]

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]


async def drain(ws, timeout: float = 60) -> Outcome:  # type: ignore[no-untyped-def]
    """Every message until the server closes."""
    messages = []

    async def read() -> None:
        try:
            async for raw in ws:
                messages.append(json.loads(raw))
        except websockets.ConnectionClosedError:
            pass

    await asyncio.wait_for(read(), timeout)
    return Outcome(messages, ws.close_code)


@functools.cache
def _stew() -> np.ndarray:
    """A 10.4 s LibriSpeech clip ("he hoped there would be stew for dinner ...")."""
    (item,) = [i for i in load_items(subsets=["short"]) if i.id == "ls-1089-134686-0000"]
    return load_audio(item.path)


def speech(seconds: float) -> np.ndarray:
    audio = _stew()
    reps = int(np.ceil(seconds * 16_000 / audio.size))
    return np.tile(audio, reps)[: int(seconds * 16_000)]


def f32(audio: np.ndarray) -> bytes:
    return audio.astype("<f4").tobytes()


Case = Callable[[str], Awaitable[Outcome]]


async def connect(url: str, query: str = "", token: str | None = KEY, **kwargs):  # type: ignore[no-untyped-def]
    sep = "&" if "?" in query else "?"
    full = f"{url}{query}" + (f"{sep}token={token}" if token else "")
    return await websockets.connect(full, max_size=None, **kwargs)


async def opened(url: str, query: str = "", **kwargs):  # type: ignore[no-untyped-def]
    ws = await connect(url, query, **kwargs)
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws


def sends(*frames: bytes | str, query: str = "", then_stop: bool = False) -> Case:
    """Open a stream, send ``frames``, optionally stop, and read until the server closes."""

    async def case(url: str) -> Outcome:
        ws = await opened(url, query)
        for frame in frames:
            await ws.send(frame)
        if then_stop:
            await ws.send(json.dumps({"type": "stop"}))
        return await drain(ws)

    return case


def refused(query: str = "", token: str | None = KEY, **kwargs) -> Case:  # type: ignore[no-untyped-def]
    """Open a connection that should be refused before ``ready``."""

    async def case(url: str) -> Outcome:
        return await drain(await connect(url, query, token, **kwargs))

    return case


async def audio_after_stop(url: str) -> Outcome:
    ws = await opened(url)
    await ws.send(f32(speech(3.0)))
    await ws.send(json.dumps({"type": "stop"}))
    await ws.send(f32(speech(0.5)))
    return await drain(ws)


async def flood(url: str) -> Outcome:
    """80 s of speech as fast as the socket takes it, against a 20 s bound on waiting audio."""
    ws = await opened(url)
    chunk = f32(speech(1.0))
    try:
        for _ in range(80):
            await ws.send(chunk)
    except websockets.ConnectionClosed:
        pass
    return await drain(ws)


async def goes_idle(url: str) -> Outcome:
    """Speech, then nothing: the words heard are flushed as finals, then idle_timeout."""
    ws = await opened(url)
    await ws.send(f32(speech(4.0)))
    return await drain(ws)


async def one_too_many(url: str) -> Outcome:
    """With the healthy stream open, fill the replica to max_streams; the next one is refused."""
    held = [await opened(url) for _ in range(LIMITS["max_streams"] - 1)]
    try:
        return await drain(await connect(url))
    finally:
        for ws in held:
            await ws.close()


def bearer(value: str) -> Case:
    async def case(url: str) -> Outcome:
        ws = await connect(url, token=None, additional_headers={"Authorization": value})
        return await drain(ws)

    return case


async def bearer_accepted(url: str) -> Outcome:
    ws = await connect(url, token=None, additional_headers={"Authorization": f"Bearer {KEY}", "Origin": ORIGIN})
    await ws.send(json.dumps({"type": "stop"}))
    return await drain(ws)


# name -> (case, expected error codes in order, expected close code)
TABLE: dict[str, tuple[Case, list[str], int]] = {
    "text not JSON (non-fatal)": (sends("{not json", then_stop=True), ["bad_message"], 1000),
    "JSON that is not an object (non-fatal)": (sends("[1, 2]", then_stop=True), ["bad_message"], 1000),
    "unknown message type (non-fatal)": (sends('{"type": "rewind"}', then_stop=True), ["bad_message"], 1000),
    "f32le frame of 3 bytes": (sends(b"\x00\x00\x80"), ["bad_audio"], 1003),
    "s16le frame of 5 bytes": (sends(b"\x01" * 5, query="?encoding=s16le"), ["bad_audio"], 1003),
    "NaN sample": (sends(np.array([0.0, np.nan], "<f4").tobytes()), ["bad_audio"], 1003),
    "Inf sample": (sends(np.array([np.inf, 0.0], "<f4").tobytes()), ["bad_audio"], 1003),
    "binary frame over 1 MiB": (sends(b"\x00" * ((1 << 20) + 4)), ["too_large"], 1009),
    "text frame over 1 MiB": (sends(" " * ((1 << 20) + 1)), ["too_large"], 1009),
    "text frame over 1 MiB in UTF-8, not in characters": (sends("\u20ac" * ((1 << 20) // 3 + 1)), ["too_large"], 1009),
    "sample_rate not a number": (refused("?sample_rate=abc"), ["bad_audio"], 1003),
    "sample_rate out of range": (refused("?sample_rate=5"), ["bad_audio"], 1003),
    "unknown encoding": (refused("?encoding=mp3"), ["bad_audio"], 1003),
    "unknown query parameter": (refused("?colour=blue"), ["bad_message"], 1008),
    "language the model lacks": (refused("?language=de"), ["bad_message"], 1008),
    "empty language": (refused("?language="), ["bad_message"], 1008),
    "interim_results not a boolean": (refused("?interim_results=maybe"), ["bad_message"], 1008),
    "audio after stop": (audio_after_stop, ["bad_message"], 1000),
    "no API key": (refused(token=None), ["unauthorized"], 1008),
    "wrong API key": (refused(token=KEY + "x"), ["unauthorized"], 1008),
    "wrong Bearer key": (bearer(f"Bearer {KEY[:-1]}"), ["unauthorized"], 1008),
    "Basic instead of Bearer": (bearer(f"Basic {KEY}"), ["unauthorized"], 1008),
    "right Bearer key, allowed origin": (bearer_accepted, [], 1000),
    "origin not allowed": (refused(origin="http://evil.example"), ["unauthorized"], 1008),
    "flood far faster than real time": (flood, ["overloaded"], 1013),
    "no audio for idle_timeout_s": (goes_idle, ["idle_timeout"], 1008),
    "one stream over max_streams": (one_too_many, ["overloaded"], 1013),
}


def test_every_bad_input_gets_its_error_while_a_healthy_stream_is_untouched(guarded, long_run):
    async def run_all() -> tuple[dict[str, Outcome | BaseException], object]:
        healthy = asyncio.create_task(
            stream_file(long_run.audio, guarded.ws, speed=long_run.speed, params={"token": KEY})
        )
        await asyncio.sleep(1.0)
        outcomes: dict[str, Outcome | BaseException] = {}
        for name, (case, _, _) in TABLE.items():
            try:
                outcomes[name] = await case(guarded.ws)
            except Exception as exc:  # reported per case below
                outcomes[name] = exc
            assert not healthy.done(), f"the healthy stream ended during {name!r}"
        return outcomes, await healthy

    outcomes, healthy = asyncio.run(run_all())

    problems = []
    for name, (_, codes, close) in TABLE.items():
        got = outcomes[name]
        if isinstance(got, BaseException):
            problems.append(f"{name}: raised {got!r}")
        elif got.errors != codes or got.close_code != close:
            problems.append(f"{name}: got errors {got.errors} close {got.close_code}, expected {codes} close {close}")
    assert not problems, "\n".join(problems)

    # Refusals come before any audio is accepted: the error is the first message, no `ready`.
    for name in ("no API key", "wrong API key", "origin not allowed", "one stream over max_streams", "unknown encoding", "empty language"):
        assert outcomes[name].types == ["error"], (name, outcomes[name].messages)  # type: ignore[union-attr]
    # Non-fatal errors leave the stream running to a normal end.
    for name in ("text not JSON (non-fatal)", "unknown message type (non-fatal)", "audio after stop"):
        assert outcomes[name].types[-1] == "end", outcomes[name].messages  # type: ignore[union-attr]
    # An idle stream's words are flushed as finals before it is closed.
    idle = outcomes["no audio for idle_timeout_s"]
    assert isinstance(idle, Outcome) and any(m["type"] == "final" and "stew" in m["text"].lower() for m in idle.messages)
    assert idle.types[-1] == "error"

    # The healthy stream, the same file and speed as the undisturbed run, came out as well as it did alone.
    assert healthy.of_type("end") and healthy.close_code == 1000  # type: ignore[attr-defined]
    assert not healthy.of_type("error")  # type: ignore[attr-defined]
    check_finals(healthy.finals, long_run.audio.size / 16_000)  # type: ignore[attr-defined]
    check_errors(long_run.item.text, healthy.text, long_run.result.text, "healthy stream alongside the bad inputs vs alone")  # type: ignore[attr-defined]


def test_a_stream_is_flushed_and_closed_at_max_stream_s(guarded, by_id):
    item = by_id["ls-1089-134686-0000"]  # 10.4 s
    args = copy.deepcopy(guarded.args)
    args["limits"]["max_stream_s"] = 6.0
    original = guarded.args
    guarded.redeploy(args)
    # The client's own stop crosses the server's ending: all 10.4 s and the stop are sent before
    # the server can have flushed the first 6 s. The stop is no error of the client's.
    crossing = sends(*[f32(c) for c in np.array_split(load_audio(item.path), 11)], then_stop=True)
    try:
        result = asyncio.run(stream_file(load_audio(item.path), guarded.ws, speed=3.0, params={"token": KEY}))
        crossed = asyncio.run(crossing(guarded.ws))
    finally:
        guarded.redeploy(original)
    errors = result.of_type("error")
    assert [e["code"] for e in errors] == ["max_duration"] and result.close_code == 1008
    assert result.messages[-1]["type"] == "error"
    # What was sent up to the limit is transcribed ("he hoped there would be stew for dinner" is in the first 6 s).
    assert "stew for dinner" in result.text.lower()
    assert all(f["end"] <= 6.0 + 1e-3 for f in result.finals)
    assert crossed.errors == ["max_duration"] and crossed.close_code == 1008, crossed.messages
    finals = [m for m in crossed.messages if m["type"] == "final"]
    assert "stew for dinner" in " ".join(f["text"] for f in finals).lower()


def test_keys_never_reach_the_logs(guarded):
    """After every auth case above ran (module order), no file Ray wrote holds the key."""
    import ray

    async def once() -> None:
        await drain(await connect(guarded.ws))
        await drain(await connect(guarded.ws, token=KEY + "y"))

    asyncio.run(once())
    logs = ray._private.worker._global_node.get_logs_dir_path()
    hits = []
    for path in Path(logs).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if KEY.encode() in data:
                hits.append(str(path))
    assert not hits, hits
