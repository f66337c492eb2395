"""What one client may take: idle and trickling streams, message rate, audio speed, streams per address,
the turn a ``finalize`` ends, and the bookkeeping a long stream leaves behind (issue 19, "Hardening").

The service tests run against the real application (auth off, as by default) with small limits,
deployed live for this module and restored afterwards.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import json
import time

import numpy as np
import pytest
import websockets

from serve.bench.eval_set import load_items
from serve.core.audio import SAMPLE_RATE, load_audio, to_int16
from serve.core.protocol import ArrivalClock
from serve.core.settings import LimitOptions
from serve.core.stream import StreamState
from tests.conftest import replica_actors
from tests.service.test_reliability import Outcome, drain, f32, speech

LIMITS = {"idle_timeout_s": 2.0, "max_streams_per_client": 2, "speed_burst_s": 10.0}
"""Small enough to reach in seconds; max_speed (4x) and max_messages_per_s (200) keep their defaults."""


@pytest.fixture(scope="module")
def limited(service):
    original = service.args
    args = copy.deepcopy(original)
    args["limits"] = {**args.get("limits", {}), **LIMITS}
    service.redeploy(args)
    yield service
    service.redeploy(original)


async def opened(url: str, query: str = "", **kwargs):  # type: ignore[no-untyped-def]
    ws = await websockets.connect(f"{url}{query}", max_size=None, **kwargs)
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready", ready
    return ws


async def send_until_closed(ws, frames, every_s: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Send ``frames`` (paced ``every_s`` apart) and then stop, unless the server closes first."""
    try:
        for frame in frames:
            await ws.send(frame)
            if every_s:
                await asyncio.sleep(every_s)
        await ws.send(json.dumps({"type": "stop"}))
    except websockets.ConnectionClosed:
        pass


async def exchange(url: str, frames, every_s: float = 0.0, query: str = "") -> Outcome:  # type: ignore[no-untyped-def]
    ws = await opened(url, query)
    sender = asyncio.create_task(send_until_closed(ws, frames, every_s))
    try:
        return await drain(ws, timeout=120)
    finally:
        sender.cancel()


@functools.cache
def _clip(item_id: str) -> np.ndarray:
    (item,) = [i for i in load_items() if i.id == item_id]
    return load_audio(item.path)


# -- item 2: a slot is held by audio, not by frames -----------------------------------------------


@pytest.mark.serve
def test_empty_frames_are_not_audio_the_stream_goes_idle(limited):
    """An empty binary frame every 0.4 s does not keep a stream open past idle_timeout_s (2 s here)."""
    frames = [f32(speech(1.0))] + [b""] * 25  # 10 s of empty frames after 1 s of audio

    started = time.monotonic()
    outcome = asyncio.run(exchange(limited.ws, frames, every_s=0.4))
    took = time.monotonic() - started
    assert outcome.errors == ["idle_timeout"] and outcome.close_code == 1008, outcome.messages
    assert took < 8.0, took  # closed while the empty frames were still coming


@pytest.mark.serve
def test_a_trickle_of_audio_holds_a_slot_no_longer_than_max_stream_s(limited):
    """One sample every 0.5 s is audio (it resets the idle timer) but only 5 ms of it in 8 s: the stream is
    ended at max_stream_s of wall-clock time, not of audio."""
    args = copy.deepcopy(limited.args)
    args["limits"]["max_stream_s"] = 3.0
    original = limited.args
    limited.redeploy(args)
    try:
        started = time.monotonic()
        outcome = asyncio.run(exchange(limited.ws, [np.zeros(1, "<f4").tobytes()] * 16, every_s=0.5))
        took = time.monotonic() - started
    finally:
        limited.redeploy(original)
    assert outcome.errors == ["max_duration"] and outcome.close_code == 1008, outcome.messages
    assert took < 7.0, took


@pytest.mark.serve
def test_a_message_flood_is_cut_at_the_message_rate(limited):
    """Thousands of tiny frames as fast as the socket takes them: rate_limited + 1008, whatever audio they hold."""
    tiny = np.zeros(2, "<f4").tobytes()
    outcome = asyncio.run(exchange(limited.ws, [tiny] * 3000))
    assert outcome.errors == ["rate_limited"] and outcome.close_code == 1008, outcome.messages[-3:]
    assert "messages" in outcome.messages[-1]["message"]


@pytest.mark.serve
def test_streams_per_client_address_with_auth_off(limited):
    """max_streams_per_client (2 here) streams from one address, then overloaded + 1013 before ready. The
    Ingress sees the address Serve's proxy (uvicorn) gives it: the TCP peer, or X-Forwarded-For when the peer
    is a proxy uvicorn trusts (FORWARDED_ALLOW_IPS, by default 127.0.0.1), as a proxy on the same host sends it."""
    cap = LIMITS["max_streams_per_client"]
    forwarded = {"X-Forwarded-For": "203.0.113.7"}

    async def go() -> tuple[Outcome, Outcome]:
        held = [await opened(limited.ws) for _ in range(cap)]
        try:
            refused = await drain(await websockets.connect(limited.ws), timeout=30)
            # The same TCP peer (127.0.0.1), forwarding for another address: another client, with its own cap.
            held += [await opened(limited.ws, additional_headers=forwarded) for _ in range(cap)]
            refused_forwarded = await drain(await websockets.connect(limited.ws, additional_headers=forwarded), timeout=30)
            return refused, refused_forwarded
        finally:
            for ws in held:
                await ws.close()

    refused, refused_forwarded = asyncio.run(go())
    for outcome, address in ((refused, "127.0.0.1"), (refused_forwarded, "203.0.113.7")):
        assert outcome.errors == ["overloaded"] and outcome.close_code == 1013, outcome.messages
        assert outcome.types == ["error"], outcome.messages  # before ready
        message = outcome.messages[0]["message"]
        assert address in message and "max_streams_per_client" in message, message


# -- item 3: a stream's audio is bounded by wall-clock time ----------------------------------------


@pytest.mark.serve
def test_a_sender_far_faster_than_real_time_is_cut_at_the_speed_limit(limited):
    """40 s of speech at 10x real time against 4x plus a 10 s burst: rate_limited + 1008 after about 17 s."""
    audio = speech(40.0)
    frames = [f32(c) for c in np.array_split(audio, 80)]  # 0.5 s each, one every 0.05 s
    outcome = asyncio.run(exchange(limited.ws, frames, every_s=0.05))
    assert outcome.errors == ["rate_limited"] and outcome.close_code == 1008, outcome.messages[-3:]
    assert "real time" in outcome.messages[-1]["message"]


@pytest.mark.serve
def test_a_sender_within_the_speed_limit_is_untouched(limited):
    """The 10.4 s clip at 3x real time (under 4x, and past the 10 s burst) ends normally, transcribed."""
    audio = _clip("ls-1089-134686-0000")
    frames = [f32(c) for c in np.array_split(audio, 21)]  # about 0.5 s each
    outcome = asyncio.run(exchange(limited.ws, frames, every_s=0.5 / 3))
    assert outcome.errors == [] and outcome.types[-1] == "end" and outcome.close_code == 1000, outcome.messages
    assert "stew for dinner" in " ".join(m["text"] for m in outcome.messages if m["type"] == "final").lower()


# -- item 4: finalize ends the turn where it arrived -----------------------------------------------


@pytest.mark.serve
def test_finalize_commits_only_the_audio_before_it(limited):
    """Turn A (2.9 s), then finalize and turn B right behind it, while A's call is still in flight: the final that
    finalize commits ends with A, and B's words come in finals after it."""
    turn_a = _clip("ls-1089-134686-0000")[: int(2.9 * SAMPLE_RATE)]  # "he hoped there would be stew for dinner"
    turn_b = _clip("ls-1089-134686-0001")  # "stuff it into you his belly counselled him"
    boundary = turn_a.size / SAMPLE_RATE

    async def go() -> Outcome:
        ws = await opened(limited.ws)
        await ws.send(f32(turn_a))
        await asyncio.sleep(0.05)  # A's call (VAD and a partial decode) is under way
        await ws.send(json.dumps({"type": "finalize"}))
        await ws.send(f32(turn_b))
        await ws.send(json.dumps({"type": "stop"}))
        return await drain(ws)

    outcome = asyncio.run(go())
    finals = [m for m in outcome.messages if m["type"] == "final"]
    assert outcome.types[-1] == "end" and finals, outcome.messages
    # No final spans the moment finalize arrived.
    for final in finals:
        assert final["end"] <= boundary + 0.05 or final["start"] >= boundary - 0.05, (boundary, finals)
    before = " ".join(f["text"] for f in finals if f["end"] <= boundary + 0.05).lower()
    after = " ".join(f["text"] for f in finals if f["start"] >= boundary - 0.05).lower()
    assert "hoped" in before and "stuff" not in before and "belly" not in before, (before, after)
    assert "belly" in after, (before, after)


# -- item 5: bookkeeping that does not grow with the stream -----------------------------------------


def test_arrival_clock_stays_small_over_30_minutes_of_non_speech(processor):
    """30 min of noise in 20 ms frames through the real VAD, as the Ingress feeds it (one call per second of
    audio, the clock told after each call where the stream's window starts): the clock holds a handful of
    entries at every point, and still answers for the newest audio."""
    noise = to_int16(_clip("noise-brown-15s"))
    frame = SAMPLE_RATE // 50
    now = [0.0]
    clock = ArrivalClock()
    state = StreamState()
    sizes = []
    for second in range(30 * 60):
        start = (second * SAMPLE_RATE) % (noise.size - SAMPLE_RATE)
        pcm = noise[start : start + SAMPLE_RATE]
        for _ in range(0, SAMPLE_RATE, frame):
            now[0] += 0.02
            clock.received(frame, now[0])
        processor.push(state, pcm)
        assert processor.next_window(state) is None  # nothing to decode: the VAD hears no speech
        clock.forget(state.audio_start)
        sizes.append(len(clock))
    assert max(sizes) <= 20, max(sizes)
    assert sizes[-1] <= sizes[60] + 2, (sizes[60], sizes[-1])  # flat, not growing
    # The newest audio's arrival is still known: a final ending now has a lag of (about) nothing.
    assert clock.lag(state.received / SAMPLE_RATE, now[0]) <= 0.2


def _clock_sizes() -> list[int]:
    """The entry counts of the ArrivalClocks alive in the Ingress replica (one per open stream)."""
    import ray

    def sizes(replica) -> list[int]:  # type: ignore[no-untyped-def]
        from serve.core.protocol import ArrivalClock

        return [len(o._arrivals) for o in gc.get_objects() if isinstance(o, ArrivalClock)]

    (ingress,) = replica_actors("Ingress")
    return ray.get(ingress.__ray_call__.remote(sizes), timeout=60)


@pytest.mark.serve
def test_a_long_non_speech_stream_keeps_its_arrival_clock_small(limited):
    """60 s of noise in 20 ms frames at 3x real time through the service (within every limit): the stream's
    arrival clock stays a few entries long instead of one entry per frame."""
    noise = _clip("noise-brown-15s")
    audio = np.tile(noise, 4)[: 60 * SAMPLE_RATE]
    frames = [f32(c) for c in np.split(audio, audio.size // (SAMPLE_RATE // 50))]

    async def go() -> tuple[Outcome, list[int]]:
        ws = await opened(limited.ws)
        sender = asyncio.create_task(send_until_closed(ws, frames, every_s=0.02 / 3))
        seen: list[int] = []
        while not sender.done():
            await asyncio.sleep(4.0)
            seen.append(max(await asyncio.to_thread(_clock_sizes), default=0))
        return await drain(ws), seen

    outcome, seen = asyncio.run(go())
    assert outcome.errors == [] and outcome.types[-1] == "end", outcome.messages
    assert seen and max(seen) <= 200, seen


def test_limits_have_their_documented_defaults():
    limits = LimitOptions()
    assert (limits.max_messages_per_s, limits.max_speed, limits.speed_burst_s, limits.max_streams_per_client) == (
        200.0, 4.0, 60.0, 16,
    )
