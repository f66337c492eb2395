"""The Deepgram- and OpenAI-compatible endpoints, driven by the vendors' own SDKs (PyPI ``deepgram-sdk``, ``openai``)
against the running application on 127.0.0.1, with real speech.

The SDKs are imported inside the tests: deepgram-sdk 7.16 imports websockets' deprecated legacy client, which this
suite's warnings-as-errors would otherwise fail on at collection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest
import soxr
import websockets

from serve.bench.offline import OfflineTranscriber
from serve.core.audio import load_audio
from tests.conftest import check_errors, with_api_key

pytestmark = [
    pytest.mark.serve,
    pytest.mark.filterwarnings("ignore:websockets.*deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler:DeprecationWarning"),
]

CLIPS = ("ls-1089-134691-0001", "ls-1995-1837-0001")
"""Two utterances (5.4 s and 8.7 s, two speakers) with GAP_S of silence between: two turns."""
GAP_S = 2.0
SPEED = 2.0
"""Faster than real time, as the service allows (limits.max_speed is 4): the two streams take about 8 s each."""
VOCAB_CLIP, VOCAB = "ls-1221-135766-0002", "Hester Prynne"
"""tiny.en hears "Hester print" here without the name (tests/core/test_dialects.py shows both)."""
KEY = "compat-key-7f3a91"


@dataclass
class TwoTurns:
    audio: np.ndarray
    """16 kHz float32: the clips with GAP_S of silence after each."""
    reference: str
    baseline: str
    """The same model's offline transcripts of the same clips."""
    first_end: float
    """Where the first clip's audio ends."""


@pytest.fixture(scope="module")
def two_turns(by_id) -> TwoTurns:
    offline = OfflineTranscriber()
    parts, refs, baseline = [], [], []
    for clip in CLIPS:
        item = by_id[clip]
        parts += [load_audio(item.path), np.zeros(int(GAP_S * 16_000), np.float32)]
        refs.append(item.text)
        baseline.append(offline.transcribe(item.path))
    return TwoTurns(np.concatenate(parts), " ".join(refs), " ".join(baseline), parts[0].size / 16_000)


def s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()


def ws_base(service) -> str:
    return service.http.replace("http://", "ws://")


async def paced(chunks: list, speed: float, chunk_s: float):
    """Yield ``chunks`` at ``speed`` times real time."""
    started = time.monotonic()
    for n, chunk in enumerate(chunks):
        yield chunk
        await asyncio.sleep(max(0.0, started + (n + 1) * chunk_s / speed - time.monotonic()))


# -- Deepgram ----------------------------------------------------------------------------------------


def deepgram_client(service, api_key: str = "unused"):
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    # What a user sets: the SDK's environment with this server's base URLs; it appends /v1/listen itself.
    environment = DeepgramClientEnvironment(
        base=service.http, production=f"{ws_base(service)}/deepgram", agent=ws_base(service), agent_rest=service.http
    )
    return AsyncDeepgramClient(api_key=api_key, environment=environment)


async def deepgram_stream(client, audio: np.ndarray, *, speed: float = SPEED, trailing: list[str] = (), **query):
    """Stream ``audio`` through the SDK's live client in 0.25 s messages, then send ``trailing`` control messages
    (``KeepAlive``, ``Finalize``), then ``CloseStream``; returns every message received (typed) and the close code."""
    received: list = []
    chunk_s, step = 0.25, 4_000
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000, channels=1, **query) as socket:

        async def listen():
            async for message in socket:
                received.append(message)

        listening = asyncio.create_task(listen())
        async for chunk in paced([audio[i : i + step] for i in range(0, audio.size, step)], speed, chunk_s):
            await socket.send_media(s16(chunk))
        for control in trailing:
            await {"KeepAlive": socket.send_keep_alive, "Finalize": socket.send_finalize}[control]()
        if trailing:
            await asyncio.sleep(1.0)
        await socket.send_close_stream()
        await asyncio.wait_for(listening, 60)
        close_code = socket._websocket.close_code
    return received, close_code


def kind(message) -> str:
    return type(message).__name__.removeprefix("ListenV1")


def test_deepgram_sdk_live_client(service, two_turns):
    audio = two_turns.audio
    began = time.monotonic()
    messages, close_code = asyncio.run(deepgram_stream(
        deepgram_client(service), audio, trailing=["KeepAlive"], interim_results="true", vad_events="true",
        utterance_end_ms="1000", punctuate="true", smart_format="true", endpointing="300", language="en-US",
    ))
    print(f"deepgram stream: {time.monotonic() - began:.1f} s for {audio.size / 16_000:.1f} s of audio")
    kinds = [kind(m) for m in messages]
    assert close_code == 1000 and kinds[-1] == "Metadata", kinds
    assert messages[-1].duration == pytest.approx(audio.size / 16_000, abs=0.01) and messages[-1].channels == 1
    results = [m for m in messages if kind(m) == "Results"]
    finals = [r for r in results if r.is_final]
    assert finals and any(not r.is_final for r in results), kinds
    # Results tile the audio: each starts where the last final ended. An interim covers the unfinalized range (our
    # partial, replaced by the next Results); a final commits it. Final words' times increase inside the audio.
    cursor, last_word_end = 0.0, 0.0
    for r in results:
        alternative = r.channel.alternatives[0]
        assert r.start == pytest.approx(cursor, abs=1e-3) and r.duration >= 0 and r.channel_index == [0, 1]
        if r.is_final:
            assert not r.from_finalize
            for w in alternative.words:
                assert last_word_end - 1e-3 <= w.start <= w.end <= audio.size / 16_000 + 1e-3, w
                assert w.word == w.word.lower() and w.punctuated_word and 0 <= w.confidence <= 1
                last_word_end = w.end
            assert alternative.transcript == " ".join(w.punctuated_word for w in alternative.words)
            cursor = r.start + r.duration
    # Two turns: the first ends in the gap (a speech_final, then UtteranceEnd); speech starts twice.
    speech_finals = [r for r in finals if r.speech_final]
    assert speech_finals and speech_finals[0].start + speech_finals[0].duration <= two_turns.first_end + 0.5
    utterance_ends = [m for m in messages if kind(m) == "UtteranceEnd"]
    assert utterance_ends and utterance_ends[0].last_word_end <= two_turns.first_end + 0.5, utterance_ends
    started = [m for m in messages if kind(m) == "SpeechStarted"]
    assert len(started) >= 2 and kinds.index("SpeechStarted") < kinds.index("Results"), kinds
    assert started[0].timestamp < 1.0 and started[1].timestamp >= two_turns.first_end, started
    text = " ".join(r.channel.alternatives[0].transcript for r in finals)
    check_errors(two_turns.reference, text, two_turns.baseline, "deepgram SDK vs offline")


def test_deepgram_keyterm_and_finalize(service, by_id):
    """The keyterm seeds Whisper's prompt: the name comes out right. Finalize commits mid-stream (from_finalize)."""
    audio = load_audio(by_id[VOCAB_CLIP].path)
    messages, close_code = asyncio.run(deepgram_stream(
        deepgram_client(service), audio, speed=4.0, trailing=["Finalize"], keyterm=VOCAB,
    ))
    finals = [m for m in messages if kind(m) == "Results" and m.is_final]
    assert not any(kind(m) == "Results" and not m.is_final for m in messages)  # interim_results defaults to false
    text = " ".join(r.channel.alternatives[0].transcript for r in finals)
    assert "prynne" in text, text  # punctuate is off: bare lower-case words
    assert any(r.from_finalize for r in finals) and close_code == 1000


def raw_refusal(service, query: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    """The HTTP answer to an upgrade the endpoint refuses: status, JSON body, headers."""

    async def go():
        try:
            async with websockets.connect(f"{ws_base(service)}/deepgram/v1/listen?{query}", additional_headers=headers):
                pass
        except websockets.InvalidStatus as exc:
            return exc.response.status_code, json.loads(exc.response.body), dict(exc.response.headers)
        raise AssertionError("the upgrade was accepted")

    return asyncio.run(go())


@pytest.mark.parametrize(
    "query,fragment",
    [
        ("encoding=mulaw&sample_rate=8000", "encoding 'mulaw' is not supported"),
        ("encoding=linear16", "sample_rate is required"),
        ("encoding=linear16&sample_rate=16000&channels=2", "channels=2"),
        ("encoding=linear16&sample_rate=16000&diarize=true", "diarize is not supported"),
        ("encoding=linear16&sample_rate=16000&language=fr", "English-only"),
        ("encoding=linear16&sample_rate=16000&colour=blue", "unknown query parameter 'colour'"),
    ],
)
def test_deepgram_bad_parameters_get_http_400(service, query, fragment):
    status, body, headers = raw_refusal(service, query)
    assert status == 400 and body["err_code"] == "Bad Request" and fragment in body["err_msg"], body
    assert headers["dg-error"] == body["err_msg"] and body["request_id"] == headers["dg-request-id"]


def test_deepgram_sdk_sees_a_bad_encoding_as_api_error_400(service):
    from deepgram.core.api_error import ApiError

    async def go():
        async with deepgram_client(service).listen.v1.connect(model="nova-3", encoding="opus", sample_rate=48000):
            pass

    with pytest.raises(ApiError) as refused:
        asyncio.run(go())
    assert refused.value.status_code == 400


def test_deepgram_bad_json_and_too_large_frames(service):
    async def go():
        url = f"{ws_base(service)}/deepgram/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send("{not json")
            schema = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "Rewind"}))
            unknown = json.loads(await ws.recv())
            await ws.send(b"\x00" * (1 << 20 | 2))
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await ws.recv()
            return schema, unknown, closed.value.rcvd

    schema, unknown, close = asyncio.run(go())
    assert schema["type"] == "Error" and schema["variant"] == "SchemaError" and schema["message"] == "{not json"
    assert unknown["variant"] == "SchemaError" and "Rewind" in unknown["description"]
    assert close.code == 1009 and close.reason.startswith("too_large"), close


def test_deepgram_empty_binary_message_closes_the_stream(service, by_id):
    """Deepgram's own rule: an empty binary message is a CloseStream (in protocol v1 it is no audio)."""
    audio = load_audio(by_id["ls-1089-134691-0000"].path)

    async def go():
        url = f"{ws_base(service)}/deepgram/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url) as ws:
            await ws.send(s16(audio))
            await ws.send(b"")
            messages = [json.loads(m) async for m in ws]
            return messages, ws.close_code

    messages, close_code = asyncio.run(go())
    assert close_code == 1000 and messages[-1]["type"] == "Metadata", messages
    assert "wait no longer" in " ".join(m["channel"]["alternatives"][0]["transcript"] for m in messages[:-1])


def test_deepgram_odd_bytes_close_with_data_0000(service):
    async def go():
        url = f"{ws_base(service)}/deepgram/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url) as ws:
            await ws.send(b"\x00\x00\x00")  # not whole 16-bit samples
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await ws.recv()
            return closed.value.rcvd

    close = asyncio.run(go())
    assert close.code == 1008 and close.reason.startswith("DATA-0000"), close


# -- OpenAI ------------------------------------------------------------------------------------------


def openai_client(service, api_key: str = "unused"):
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key=api_key, base_url=f"{service.http}/v1")  # what a user sets: the base URL


TRANSCRIPTION = {"model": "gpt-4o-transcribe", "language": "en"}


async def realtime_stream(client, audio: np.ndarray, *, speed: float = SPEED, transcription: dict | None = None) -> list:
    """Stream ``audio`` (resampled to 24 kHz, as OpenAI sends it) through the SDK's realtime client in 0.25 s appends,
    commit, and collect events until that commit's item is completed."""
    pcm = soxr.resample(audio, 16_000, 24_000).astype(np.float32)
    events: list = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as connection:
        await connection.session.update(session={
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": transcription or TRANSCRIPTION,
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }},
        })

        def ids(kind: str) -> set[str]:
            return {e.item_id for e in events if e.type == kind}

        def done() -> bool:
            """The commit was answered and every committed item (the server VAD's, the commit's) is completed: the
            server VAD may commit an utterance just before the client's commit arrives, and the commit's item may
            complete before the test notes the answer."""
            answered = sum(e.type == "input_audio_buffer.committed" for e in events) > before
            return answered and ids("input_audio_buffer.committed") <= ids(
                "conversation.item.input_audio_transcription.completed"
            )

        async def listen():
            async for event in connection:
                events.append(event)

        listening = asyncio.create_task(listen())
        step = 6_000
        async for chunk in paced([pcm[i : i + step] for i in range(0, pcm.size, step)], speed, 0.25):
            await connection.input_audio_buffer.append(audio=base64.b64encode(s16(chunk)).decode())
        before = sum(e.type == "input_audio_buffer.committed" for e in events)
        await connection.input_audio_buffer.commit()

        async def finished() -> None:
            while not done():
                if listening.done():
                    listening.result()  # the connection ended first: its error
                    raise AssertionError(f"the events ended before every committed item completed: {events}")
                await asyncio.sleep(0.05)

        await asyncio.wait_for(finished(), 60)
        listening.cancel()
    return events


def items_of(events: list) -> dict[str, tuple[str, str]]:
    """item id -> (its deltas joined, its completed transcript)."""
    deltas: dict[str, str] = {}
    done: dict[str, str] = {}
    for e in events:
        if e.type == "conversation.item.input_audio_transcription.delta":
            assert e.item_id not in done, "a delta after its item completed"
            deltas[e.item_id] = deltas.get(e.item_id, "") + e.delta
        elif e.type == "conversation.item.input_audio_transcription.completed":
            done[e.item_id] = e.transcript
    return {item: (deltas.get(item, ""), text) for item, text in done.items()}


def test_openai_sdk_realtime_transcription(service, two_turns):
    began = time.monotonic()
    events = asyncio.run(realtime_stream(openai_client(service), two_turns.audio))
    print(f"realtime stream: {time.monotonic() - began:.1f} s for {two_turns.audio.size / 16_000:.1f} s of audio")
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"], types
    updated = events[1].session
    assert updated.audio.input.format.rate == 24000 and updated.audio.input.turn_detection.type == "server_vad"
    assert updated.audio.input.transcription.model == "tiny.en"  # what runs, not what was asked
    # Append-only: an item's deltas, joined, are exactly its completed transcript (nothing revised).
    items = items_of(events)
    assert items and all(deltas == text for deltas, text in items.values()), items
    # The first turn ends at the gap: speech_started, speech_stopped, committed, completed, in that order.
    first = types.index("input_audio_buffer.speech_stopped")
    assert types.index("input_audio_buffer.speech_started") < first < types.index("input_audio_buffer.committed")
    stopped = events[first]
    assert two_turns.first_end - 0.5 <= stopped.audio_end_ms / 1000 <= two_turns.first_end + 1.5, stopped
    completed = [e for e in events if e.type == "conversation.item.input_audio_transcription.completed"]
    assert completed[0].item_id == stopped.item_id and len(completed) >= 2
    text = " ".join(e.transcript for e in completed)
    check_errors(two_turns.reference, text, two_turns.baseline, "openai SDK vs offline")


def test_openai_prompt_seeds_the_vocabulary(service, by_id):
    audio = load_audio(by_id[VOCAB_CLIP].path)
    events = asyncio.run(realtime_stream(
        openai_client(service), audio, speed=4.0, transcription={**TRANSCRIPTION, "prompt": VOCAB},
    ))
    text = " ".join(e.transcript for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert "Prynne" in text, text
    assert events[1].session.audio.input.transcription.prompt == VOCAB


def test_openai_errors_are_error_events(service):
    async def go():
        async with openai_client(service).realtime.connect(extra_query={"intent": "transcription"}) as connection:
            created = await connection.recv()
            await connection.send_raw("{not json")
            bad_json = await connection.recv()
            await connection.session.update(session={
                "type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}
            })
            bad_format = await connection.recv()
            await connection.input_audio_buffer.commit()
            empty = await connection.recv()
            await connection.send_raw(json.dumps({"type": "response.create", "event_id": "mine"}))
            unsupported = await connection.recv()
            await connection.input_audio_buffer.append(audio=base64.b64encode(b"\x00" * (1 << 20)).decode())
            too_large = await connection.recv()
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await connection._connection.recv()
            return created, bad_json, bad_format, empty, unsupported, too_large, closed.value.rcvd

    created, bad_json, bad_format, empty, unsupported, too_large, close = asyncio.run(go())
    assert created.type == "session.created"
    assert bad_json.type == "error" and bad_json.error.type == "invalid_request_error" and bad_json.error.code == "invalid_json"
    assert bad_format.error.code == "invalid_value" and bad_format.error.param == "session.audio.input.format.type"
    assert empty.error.code == "input_audio_buffer_commit_empty"
    assert unsupported.error.param == "type" and unsupported.error.event_id == "mine"
    assert too_large.error.code == "too_large" and close.code == 1009 and close.reason == "invalid_request_error.too_large"


def test_openai_conversation_sessions_are_refused(service):
    async def go():
        async with openai_client(service).realtime.connect(model="gpt-realtime") as connection:
            error = await connection.recv()
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await connection._connection.recv()
            return error, closed.value.rcvd

    error, close = asyncio.run(go())
    assert error.error.param == "intent" and close.code == 1008


# -- API keys ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(service):
    """The service with one API key (the Ingress reconfigures; nothing restarts); restored afterwards."""
    yield from with_api_key(service, KEY)


def test_keys_each_api_its_own_way(keyed, by_id):
    from deepgram.core.api_error import ApiError

    audio = load_audio(by_id["ls-1089-134691-0000"].path)
    # Deepgram: HTTP 401 at the upgrade, its error body; the right key in its header form (Token) works.
    status, body, _ = raw_refusal(keyed, "encoding=linear16&sample_rate=16000", {"Authorization": "Token wrong"})
    assert status == 401 and body["err_code"] == "INVALID_AUTH", body

    async def refused():
        async with deepgram_client(keyed, api_key="wrong").listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000):
            pass

    with pytest.raises(ApiError) as denied:
        asyncio.run(refused())
    assert denied.value.status_code == 401

    async def browser_form():  # a browser cannot set headers: Sec-WebSocket-Protocol: token, KEY
        url = f"{ws_base(keyed)}/deepgram/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url, subprotocols=["token", KEY]) as ws:
            await ws.send(json.dumps({"type": "CloseStream"}))
            return ws.subprotocol, [json.loads(m) async for m in ws]

    subprotocol, closing = asyncio.run(browser_form())
    assert subprotocol == "token" and closing[-1]["type"] == "Metadata"
    messages, close = asyncio.run(deepgram_stream(deepgram_client(keyed, api_key=KEY), audio, speed=4.0))
    assert close == 1000 and "wait no longer" in " ".join(
        m.channel.alternatives[0].transcript for m in messages if kind(m) == "Results")
    # OpenAI: an error event invalid_api_key, then close 3000; the right key (Bearer) works.

    async def wrong_key():
        async with openai_client(keyed, api_key="wrong").realtime.connect(extra_query={"intent": "transcription"}) as c:
            error = await c.recv()
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                await c._connection.recv()
            return error, closed.value.rcvd

    error, close = asyncio.run(wrong_key())
    assert error.error.code == "invalid_api_key" and close.code == 3000, (error, close)
    events = asyncio.run(realtime_stream(openai_client(keyed, api_key=KEY), audio, speed=4.0))
    assert any("wait no longer" in getattr(e, "transcript", "").lower() for e in events), events
