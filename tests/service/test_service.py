"""The application under Ray Serve, driven over real WebSockets with real speech."""

import asyncio
import copy
import json

import numpy as np
import pytest
import websockets

from serve.bench.offline import OfflineTranscriber
from serve.bench.scoring import normalize_text, pooled_wer
from serve.client import stream_file
from serve.core.audio import load_audio
from tests.conftest import check_errors, check_finals, ray_log_lines

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def offline():
    return OfflineTranscriber()


def test_healthz_and_page(service):
    import urllib.request

    with urllib.request.urlopen(f"{service.http}/healthz") as response:
        body = json.loads(response.read())
    assert body["status"] == "ok" and body["model"] == "tiny.en"
    with urllib.request.urlopen(f"{service.http}/") as response:
        assert b"<html" in response.read().lower()


def test_a_long_file_end_to_end(long_run, offline):
    item, audio, result = long_run.item, long_run.audio, long_run.result
    assert [m["type"] for m in result.messages][-1] == "end"
    assert result.of_type("end")[0]["duration"] == pytest.approx(audio.size / 16_000, abs=0.01)
    assert result.close_code == 1000
    check_finals(result.finals, audio.size / 16_000)
    # One 232-word file: 1.10x offline is held pooled over the eval set, with fixed 1 s chunks, in test_wer.
    check_errors(item.text, result.text, offline.transcribe(item.path), "streamed vs offline")


def test_calls_carry_the_new_audio_not_the_streams_pending_audio(long_run):
    """The stream's pending audio (up to 15 s) stays with the Ingress and the replica that holds it: a call carries
    the audio that arrived since the last one, and an answer carries text."""
    payload, pcm_bytes = long_run.payload, long_run.audio.size * 2
    calls = payload["calls"]
    print(f"{calls} calls: {payload['to_buffer_manager'] / calls / 1e3:.1f} KB per call, "
          f"{payload.get('from_buffer_manager', 0) / calls / 1e3:.1f} KB per answer; the audio: {pcm_bytes / 1e3:.0f} KB")
    assert calls >= long_run.audio.size / 16_000 / long_run.speed / 2  # about a call per chunk sent
    assert payload["to_buffer_manager"] <= pcm_bytes + calls * 8_000
    assert payload["from_buffer_manager"] <= calls * 8_000


def test_the_internal_calls_of_a_stream_write_no_access_log_line(long_run):
    """A stream makes a BufferManager call a second and about one Whisper call: an access line for each would be
    written, tailed by Ray's log monitor and sent to the driver, for every stream of a room. Those two deployments
    log what goes wrong (a failed call's traceback), not each call."""
    for deployment, method in (("BufferManager", "process"), ("Whisper", "transcribe")):
        component = f" asr_{deployment} "
        # The replicas' own lines are still written (and these are their logs).
        assert [line for line in ray_log_lines("Finished initializing replica") if component in line], deployment
        calls = [line for line in ray_log_lines(f"-- CALL {method} ") if component in line]
        assert not calls, f"{len(calls)} access lines of {deployment}, e.g. {calls[0]}"


def test_four_speakers_and_eight_quiet_streams_at_once_stay_apart_and_are_batched(service, manifest):
    """Four speakers' decodes share Whisper's batches; the calls of streams with no speech pending share trips to
    the BufferManager, and the quiet streams get no words."""
    seen, clips = set(), []
    for item in manifest:
        if item.subset == "short" and item.id.startswith("ls-") and item.speaker not in seen and 5 < item.duration_s < 16:
            seen.add(item.speaker)
            clips.append(item)
    clips = clips[:4]
    assert len(clips) == 4
    quiet = [item for item in manifest if item.subset == "nonspeech"][:8]
    assert len(quiet) == 8
    before = service.summary()
    batches_before, trips_before = before["whisper"]["batch_sizes"], before["ingress"]["shared_trips"]

    async def all_at_once():
        return await asyncio.gather(
            *(stream_file(load_audio(c.path), service.ws, speed=1.0) for c in clips),
            *(stream_file(load_audio(q.path)[: 16_000 * 8], service.ws, speed=1.0) for q in quiet),
        )

    results = list(asyncio.run(all_at_once()))
    results, quiet_results = results[: len(clips)], results[len(clips) :]
    summary = service.summary()
    after, trips_after = summary["whisper"]["batch_sizes"], summary["ingress"]["shared_trips"]
    for item, result in zip(quiet, quiet_results):
        assert result.close_code == 1000 and not result.errors and not result.text.strip(), (item.id, result.text)
    trips = {int(size): count - trips_before.get(size, 0) for size, count in trips_after.items()}
    calls = sum(size * count for size, count in trips.items())
    assert calls >= 8 * 6, trips  # the quiet streams' calls (of about 8 each), and the speakers' before they spoke
    assert sum(trips.values()) <= calls / 2, trips  # trips carried two calls or more on average
    for clip, result in zip(clips, results):
        own = set(normalize_text(clip.text).split())
        words = normalize_text(result.text).split()
        assert pooled_wer([(clip.text, result.text)]) <= 0.35, (clip.id, result.text)
        for other in clips:
            if other is clip:
                continue
            foreign = set(normalize_text(other.text).split()) - own
            # Words only the other speaker said: at most one by coincidence (a misrecognition).
            assert len([w for w in words if w in foreign and len(w) > 3]) <= 1, (clip.id, other.id, result.text)
    formed = {int(size): count - batches_before.get(size, 0) for size, count in after.items()}
    assert any(size > 1 and count > 0 for size, count in formed.items()), formed


async def _open(service, query=""):
    ws = await websockets.connect(f"{service.ws}{query}")
    ready = json.loads(await ws.recv())
    return ws, ready


async def _until_closed(ws):
    messages = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except websockets.ConnectionClosedError:
        pass
    return messages


@pytest.mark.parametrize(
    "query,code,close",
    [
        ("?sample_rate=abc", "bad_audio", 1003),
        ("?sample_rate=5", "bad_audio", 1003),
        ("?encoding=mp3", "bad_audio", 1003),
        ("?language=klingon", "bad_message", 1008),
        ("?interim_results=maybe", "bad_message", 1008),
        ("?colour=blue", "bad_message", 1008),
        ("?task=summarize", "bad_message", 1008),
    ],
)
def test_bad_query_params_are_refused(service, query, code, close):
    async def go():
        ws = await websockets.connect(f"{service.ws}{query}")
        messages = await _until_closed(ws)
        return messages, ws.close_code

    messages, close_code = asyncio.run(go())
    assert messages and messages[0]["type"] == "error" and messages[0]["code"] == code
    assert close_code == close


def test_bad_control_messages_do_not_end_the_stream(service, by_id):
    audio = load_audio(by_id["ls-1089-134691-0000"].path)

    async def go():
        ws, ready = await _open(service, "?encoding=s16le")
        assert ready["type"] == "ready" and ready["sample_rate"] == 16000 and ready["session"]
        await ws.send("this is not json")
        first = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "rewind"}))
        second = json.loads(await ws.recv())
        await ws.send((audio * 32767).astype("<i2").tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        rest = await _until_closed(ws)
        return first, second, rest, ws.close_code

    first, second, rest, close = asyncio.run(go())
    assert first["type"] == "error" and first["code"] == "bad_message"
    assert second["type"] == "error" and second["code"] == "bad_message" and "rewind" in second["message"]
    assert "could wait no longer" in normalize_text(" ".join(m["text"] for m in rest if m["type"] == "final"))
    assert rest[-1]["type"] == "end" and close == 1000


@pytest.mark.parametrize(
    "frame,code,close",
    [
        (b"\x00\x00\x80", "bad_audio", 1003),  # 3 bytes of f32le
        (np.array([0.0, np.nan], "<f4").tobytes(), "bad_audio", 1003),
        (b"\x00" * (1 << 20 | 4), "too_large", 1009),
    ],
)
def test_bad_audio_frames_close_the_stream(service, frame, code, close):
    async def go():
        ws, _ = await _open(service)
        await ws.send(frame)
        return await _until_closed(ws), ws.close_code

    messages, close_code = asyncio.run(go())
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == code
    assert close_code == close


def test_finalize_commits_mid_stream(service, by_id):
    audio = load_audio(by_id["ls-1089-134686-0000"].path)[: 16_000 * 4]

    async def go():
        ws, _ = await _open(service)
        for i in range(0, audio.size, 16_000):
            await ws.send(audio[i : i + 16_000].astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "finalize"}))
        got = []
        while not got or got[-1]["type"] != "final" or "carrots" not in got[-1]["text"].lower():
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        await ws.send(json.dumps({"type": "stop"}))
        return got + await _until_closed(ws)

    messages = asyncio.run(go())
    assert messages[-1]["type"] == "end"


def test_max_batch_size_changes_live_without_dropping_a_stream(service, by_id):
    item = by_id["ls-1089-134686-0000"]
    audio = load_audio(item.path)
    original = service.args
    changed = copy.deepcopy(original)
    changed["batching"]["max_batch_size"] = 3

    async def go():
        streaming = asyncio.create_task(stream_file(audio, service.ws, speed=1.0))
        await asyncio.sleep(3)
        await asyncio.to_thread(service.redeploy, changed)
        return await streaming

    try:
        result = asyncio.run(go())
        assert result.of_type("end") and result.close_code == 1000
        assert pooled_wer([(item.text, result.text)]) <= 0.35
        assert service.summary()["whisper"]["max_batch_size"] == 3
    finally:
        service.redeploy(original)


def test_finals_at_pauses_through_the_service(service, long_run, offline):
    """commit_on_agreement off, deployed: the BufferManager settles finals from pause decodes (the stream state
    carries them between calls); the long file comes back whole, in fewer, longer finals than with agreement."""
    item, audio = long_run.item, long_run.audio
    original = service.args
    changed = copy.deepcopy(original)
    changed["streaming"]["commit_on_agreement"] = False
    changed["streaming"]["vad"]["min_silence_ms"] = 700
    try:
        service.redeploy(changed)
        result = asyncio.run(stream_file(audio, service.ws, speed=long_run.speed))
    finally:
        service.redeploy(original)
    assert result.of_type("end") and result.close_code == 1000 and not result.of_type("error")
    check_finals(result.finals, audio.size / 16_000)
    agreement = len(long_run.result.finals)
    assert len(result.finals) < agreement / 2, (len(result.finals), agreement)
    check_errors(item.text, result.text, offline.transcribe(item.path), "at pauses, streamed vs offline")


def test_a_trip_of_quiet_streams_larger_than_grpcs_default_message_size_is_served(service):
    """Quiet streams' calls share trips to the BufferManager, and calls between the replicas go over gRPC, whose
    default message size is 4 MiB. Sixteen streams that each send 30 s of low noise at once (960 kB a call, a
    client that caught up after a stall) make trips of several MB: every stream still ends cleanly, without error."""
    noise = np.random.default_rng(4).normal(0, 30, 16_000 * 30).astype("<i2").tobytes()
    trips_before = service.summary()["ingress"]["shared_trips"]

    async def collect(ws) -> tuple[list[dict], int | None]:  # type: ignore[no-untyped-def]
        messages = [json.loads(m) async for m in ws]
        return messages, ws.close_code

    async def go() -> list[tuple[list[dict], int | None]]:
        sockets = [await websockets.connect(f"{service.ws}?encoding=s16le", max_size=None) for _ in range(16)]
        assert [json.loads(await ws.recv())["type"] for ws in sockets] == ["ready"] * len(sockets)
        await asyncio.gather(*(ws.send(noise) for ws in sockets))
        await asyncio.gather(*(ws.send(json.dumps({"type": "stop"})) for ws in sockets))
        return await asyncio.wait_for(asyncio.gather(*(collect(ws) for ws in sockets)), 120)

    outcomes = asyncio.run(go())
    trips_after = service.summary()["ingress"]["shared_trips"]
    grown = {int(size) for size, n in trips_after.items() if n > trips_before.get(size, 0)}
    assert max(grown) * len(noise) > 4 * 2**20, trips_after  # at least one trip past 4 MiB
    for messages, code in outcomes:
        assert [m for m in messages if m["type"] == "error"] == [] and messages[-1]["type"] == "end", messages[-3:]
        assert code == 1000
