"""The Deepgram and OpenAI Realtime translators and the vocabulary prompt, in-process: no socket, no Ray, a clock
passed by hand; and the vocabulary on real speech through the real engine."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest

from serve.core.dialects import deepgram, realtime
from serve.core.dialects.protocol import Activity, Control, DialectProtocol, bare_word, primary_language
from serve.core.errors import ProtocolError
from serve.core.messages import Final, Partial
from serve.core.protocol import StreamProtocol
from serve.core.session import MAX_PROMPT_CHARS, Session, StreamParams
from serve.core.settings import LimitOptions
from serve.core.stream import StreamState, Window, WindowKind
from serve.core.words import Word
from tests.conftest import pcm16

SECOND = 16_000


def s16(seconds: float) -> bytes:
    return np.full(round(seconds * SECOND), 1000, "<i2").tobytes()


def final(*words: tuple[str, float, float]) -> Final:
    return Final.from_words([Word(w, s, e, 0.9) for w, s, e in words])


def caught(call) -> ProtocolError:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as exc:
        call()
    return exc.value


# -- the shared rules ------------------------------------------------------------------------------


def pair(**limits) -> tuple[StreamProtocol, DialectProtocol]:  # type: ignore[no-untyped-def]
    def session() -> Session:
        return Session(StreamParams(language="en", encoding="s16le"))

    return StreamProtocol(session(), LimitOptions(**limits), 0.0), DialectProtocol(session(), LimitOptions(**limits), 0.0)


def test_a_dialect_meets_the_v1_limits_with_the_same_errors():
    """Side by side, the same messages: the same audio, turn ends and errors, so the rules cannot drift apart."""
    v1, dialect = pair(max_frame_bytes=4096, max_messages_per_s=1.0)
    big = s16(0.2)  # 6400 bytes
    a, b = caught(lambda: v1.receive(big, None, 0.0)), caught(lambda: dialect.receive_event(len(big), 0.0, audio=big))
    assert (a.code, a.message, a.close_code) == (b.code, b.message, b.close_code) == (a.code, a.message, 1009)
    for _ in range(3):  # the 5 s burst of 1 message per second, minus the one above
        v1.receive(s16(0.1), None, 0.0)
        dialect.receive_event(3200, 0.0, audio=s16(0.1))
    v1.receive(None, json.dumps({"type": "finalize"}), 0.0)
    dialect.receive_event(20, 0.0, control=Control.FINALIZE)
    assert v1.turn_ends == dialect.turn_ends == [3 * 1600]
    a, b = caught(lambda: v1.receive(s16(0.1), None, 0.0)), caught(lambda: dialect.receive_event(3200, 0.0, audio=s16(0.1)))
    assert (a.code, a.message, a.close_code) == (b.code, b.message, b.close_code) and a.code == "rate_limited"


def test_a_dialect_stream_stops_flushes_and_times_out_like_v1():
    v1, dialect = pair()
    v1.receive(s16(1), None, 0.0)
    dialect.receive_event(32000, 0.0, audio=s16(1))
    v1.receive(None, json.dumps({"type": "stop"}), 0.5)
    dialect.receive_event(25, 0.5, control=Control.STOP)
    a, b = v1.next_call(), dialect.next_call()
    assert a is not None and b is not None and a.finalize and b.finalize and np.array_equal(a.pcm, b.pcm)
    assert v1.done and dialect.done
    a_err = caught(lambda: v1.receive(s16(0.1), None, 1.0))
    b_err = caught(lambda: dialect.receive_event(3200, 1.0, audio=s16(0.1)))
    assert (a_err.code, a_err.message) == (b_err.code, b_err.message) == ("bad_message", "audio after stop is ignored")
    assert caught(lambda: dialect.receive_event(20, 1.0, control=Control.FINALIZE)).code == "bad_message"
    idle = DialectProtocol(Session(StreamParams(language="en", encoding="s16le")), LimitOptions(idle_timeout_s=5), 0.0)
    idle.receive_event(20, 1.0)  # a keep-alive is no audio: the stream stays idle
    assert idle.deadline() == 5.0
    idle.expire(5.0)
    assert idle.ending is not None and idle.ending.code == "idle_timeout"


def test_shared_helpers():
    assert primary_language("en-US") == "en" and primary_language("pt_BR") == "pt" and primary_language("EN") == "en"
    assert bare_word(" Hello,") == "hello" and bare_word("don't.") == "don't" and bare_word('"Gothic"') == "gothic"
    state = StreamState()
    assert Activity.of(state).speech_start is None


# -- protocol v1's prompt, and the vocabulary in Whisper's prompt -----------------------------------


def test_v1_prompt_parameter_seeds_the_decoders_prompt(processor):
    params = StreamParams.from_query({"prompt": "  Hester   Prynne "}, default_language="en", multilingual=False)
    session = Session(params)
    assert session.state.vocabulary == "Hester Prynne"
    session.state.audio = np.zeros(SECOND, np.int16)
    window = Window(WindowKind.PARTIAL, 0, SECOND)
    request = processor.request(session.state, window)
    assert (request.vocabulary, request.prompt) == ("Hester Prynne", "")
    session.state.prompt = " the letter was scarlet."
    request = processor.request(session.state, window)
    assert (request.vocabulary, request.prompt) == ("Hester Prynne", " the letter was scarlet.")  # it heads the prompt
    request = processor.request(StreamState(), window)
    assert (request.vocabulary, request.prompt) == ("", "")
    refused = caught(lambda: StreamParams.from_query({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, default_language="en", multilingual=False))
    assert refused.code == "bad_message" and refused.close_code == 1008 and "prompt" in refused.message


def transcribe(processor, engine, pcm: np.ndarray, vocabulary: str) -> str:  # type: ignore[no-untyped-def]
    state = StreamState(language="en", vocabulary=vocabulary)
    texts = []
    for i in range(0, pcm.size, SECOND):
        texts += [m.text for m in processor.run(state, pcm[i : i + SECOND], engine.transcribe) if isinstance(m, Final)]
    texts += [m.text for m in processor.close(state, engine.transcribe) if isinstance(m, Final)]
    return " ".join(texts)


def test_the_vocabulary_makes_a_rare_name_come_out_right(processor, engine, by_id):
    """tiny.en hears "Hester print" in this clip (offline: "Hester Prin"); told the name, it writes it."""
    pcm = pcm16(by_id["ls-1221-135766-0002"].path)
    plain = transcribe(processor, engine, pcm, "")
    told = transcribe(processor, engine, pcm, "Hester Prynne")
    print(f"without: {plain!r}\nwith:    {told!r}")
    assert "Prynne" not in plain and "Prynne" in told
    assert "apprehension" in told  # the rest of the sentence is still heard


# -- Deepgram ---------------------------------------------------------------------------------------


def dg_query(query: str, multilingual: bool = False) -> tuple[StreamParams, deepgram.Options]:
    from urllib.parse import parse_qsl

    return deepgram.parse_query(parse_qsl(query), default_language="en", multilingual=multilingual, request_id="r1")


def test_deepgram_query_maps_onto_v1_params():
    params, options = dg_query(
        "model=nova-3&encoding=linear16&sample_rate=48000&channels=1&language=en-US&interim_results=true"
        "&endpointing=300&utterance_end_ms=1000&vad_events=true&smart_format=true&diarize=false&tag=x"
        "&keywords=Prynne:2&keyterm=Hester%20Prynne&keyterm=Boston"
    )
    assert (params.sample_rate, params.encoding.value, params.language, params.interim_results) == (48000, "s16le", "en", True)
    assert params.prompt == "Prynne, Hester Prynne, Boston"
    assert options == deepgram.Options(endpointing=True, utterance_end_ms=1000, vad_events=True, punctuate=True)
    params, options = dg_query("encoding=linear16&sample_rate=16000&endpointing=false")
    assert not params.interim_results and not options.endpointing and not options.punctuate  # Deepgram's defaults
    assert dg_query("encoding=linear16&sample_rate=16000&language=multi", multilingual=True)[0].language == "auto"


@pytest.mark.parametrize(
    "query,fragment",
    [
        ("sample_rate=16000", "encoding=linear16"),
        ("encoding=opus", "'opus' is not supported"),
        ("encoding=linear16", "sample_rate is required"),
        ("encoding=linear16&sample_rate=4000", "sample_rate"),
        ("encoding=linear16&sample_rate=16000&channels=2", "mono"),
        ("encoding=linear16&sample_rate=16000&interim_results=maybe", "interim_results must be true or false"),
        ("encoding=linear16&sample_rate=16000&endpointing=soon", "endpointing"),
        ("encoding=linear16&sample_rate=16000&utterance_end_ms=x", "utterance_end_ms"),
        ("encoding=linear16&sample_rate=16000&numerals=true", "numerals is not supported"),
        ("encoding=linear16&sample_rate=16000&redact=pci", "redact is not supported"),
        ("encoding=linear16&sample_rate=16000&language=de", "English-only"),
        ("encoding=linear16&sample_rate=16000&language=xx", "unknown language"),
        ("encoding=linear16&sample_rate=16000&bogus=1", "unknown query parameter 'bogus'"),
        ("encoding=linear16&sample_rate=16000&keyterm=" + "x" * 401, "vocabulary"),
    ],
)
def test_deepgram_query_refusals(query, fragment):
    with pytest.raises(deepgram.Refusal) as refused:
        dg_query(query)
    assert refused.value.status == 400 and fragment in refused.value.err_msg
    assert refused.value.body() == {"err_code": "Bad Request", "err_msg": refused.value.err_msg, "request_id": "r1"}
    assert refused.value.headers()["dg-error"] == refused.value.err_msg


def test_deepgram_refusals_before_the_stream_opens():
    assert deepgram.refusal(ProtocolError("unauthorized", "no key", 1008), "r").status == 401
    assert deepgram.refusal(ProtocolError("overloaded", "full", 1013), "r").body()["err_code"] == "TOO_MANY_REQUESTS"


def dg(**options) -> deepgram.DeepgramStream:  # type: ignore[no-untyped-def]
    return deepgram.DeepgramStream(deepgram.Options(**options), model="tiny.en", request_id="req")


def speaking(start: float | None, last_final_end: float = 0.0) -> Activity:
    return Activity(speech_start=start, last_final_end=last_final_end, last_voiced=last_final_end)


def test_deepgram_results_tile_the_audio_and_mark_the_end_of_speech():
    stream = dg(vad_events=True, utterance_end_ms=1000, punctuate=True)
    out = [json.loads(m) for m in stream.results([Partial(text="Hello wor", start=0.5, end=1.5)], speaking(0.4), from_finalize=False)]
    assert [m["type"] for m in out] == ["SpeechStarted", "Results"]
    assert out[0]["timestamp"] == 0.4
    interim = out[1]
    assert not interim["is_final"] and interim["start"] == 0.0 and interim["duration"] == 1.5
    words = interim["channel"]["alternatives"][0]["words"]
    assert [w["word"] for w in words] == ["hello", "wor"] and words[0]["start"] == 0.5 and words[-1]["end"] == 1.5
    assert words[0]["end"] == words[1]["start"] and interim["channel"]["alternatives"][0]["transcript"] == "Hello wor"
    # A final mid-utterance (agreement): not speech_final; the next interim starts where it ended.
    out = [json.loads(m) for m in stream.results(
        [final((" Hello,", 0.5, 0.9)), Partial(text="world", start=1.0, end=1.6)], speaking(0.4, 0.9), from_finalize=False)]
    assert [(m["is_final"], m["speech_final"], m["start"]) for m in out] == [(True, False, 0.0), (False, False, 0.9)]
    assert out[0]["channel"]["alternatives"][0]["words"][0] == {
        "word": "hello", "start": 0.5, "end": 0.9, "confidence": 0.9, "punctuated_word": "Hello,"}
    # The utterance ends in this call: its last final is speech_final, then UtteranceEnd.
    out = [json.loads(m) for m in stream.results([final((" world.", 1.0, 1.6))], speaking(None, 1.6), from_finalize=False)]
    assert [m["type"] for m in out] == ["Results", "UtteranceEnd"]
    assert out[0]["speech_final"] and out[0]["start"] == 0.9 and out[0]["duration"] == pytest.approx(0.7)
    assert out[1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.6}
    assert stream.results([], speaking(None, 1.6), from_finalize=False) == []  # nothing more to say


def test_deepgram_speech_final_without_a_final_and_without_endpointing():
    stream = dg(utterance_end_ms=1000)
    stream.results([final((" Yes", 0.2, 0.5))], speaking(0.1, 0.5), from_finalize=False)
    out = [json.loads(m) for m in stream.results([], speaking(None, 0.5), from_finalize=False)]
    # The utterance's words were final before it ended: an empty final says it ended. No vad_events: no SpeechStarted.
    assert [(m["type"], m.get("speech_final")) for m in out] == [("Results", True), ("UtteranceEnd", None)]
    assert out[0]["channel"]["alternatives"][0]["transcript"] == "" and out[0]["start"] == 0.5
    quiet = dg(endpointing=False)
    out = [json.loads(m) for m in quiet.results([final((" Yes.", 0.2, 0.5))], speaking(None, 0.5), from_finalize=True)]
    assert [(m["is_final"], m["speech_final"], m["from_finalize"]) for m in out] == [(True, False, True)]
    assert out[0]["channel"]["alternatives"][0]["transcript"] == "yes"  # punctuate off: bare words


def test_deepgram_client_messages():
    stream = dg()
    assert stream.client_text('{"type": "KeepAlive"}') == deepgram.ClientEvent()
    assert stream.client_text('{"type": "Finalize"}').control is Control.FINALIZE
    assert stream.client_text('{"type": "CloseStream"}').control is Control.STOP
    event = stream.client_text(json.dumps({"type": "Configure", "keyterms": ["Prynne", "Salem"]}))
    assert event.vocabulary == "Prynne, Salem" and json.loads(event.reply or "")["type"] == "ConfigureSuccess"
    event = stream.client_text(json.dumps({"type": "Configure", "keyterms": ["x" * 401]}))
    assert event.vocabulary is None and json.loads(event.reply or "")["code"] == "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"
    assert json.loads(stream.client_text('{"type": "Configure", "features": {"numerals": true}}').reply or "")["type"] == "ConfigureFailure"
    for text in ("{nope", "[1]", '{"type": "finalize"}'):
        error = caught(lambda text=text: stream.client_text(text))
        assert error.code == "bad_message" and not error.fatal
        message = json.loads(stream.schema_error(error, text))
        assert message["type"] == "Error" and message["variant"] == "SchemaError" and message["message"] == text


def test_deepgram_close_frames_and_metadata():
    stream = dg()
    assert stream.close_frame(ProtocolError("bad_audio", "odd bytes", 1003)) == (1008, "DATA-0000: odd bytes")
    assert stream.close_frame(ProtocolError("idle_timeout", "no audio for 60 s", 1008))[0] == 1011
    code, reason = stream.close_frame(ProtocolError("too_large", "x" * 500, 1009))
    assert code == 1009 and reason.startswith("too_large") and len(reason.encode()) <= 123
    stream.audio(b"\x01\x02")
    stream.audio(b"\x03")
    meta = json.loads(stream.metadata(12.3456))
    assert meta["type"] == "Metadata" and meta["duration"] == 12.346 and meta["channels"] == 1
    assert meta["sha256"] == hashlib.sha256(b"\x01\x02\x03").hexdigest() and meta["request_id"] == "req"


# -- OpenAI Realtime --------------------------------------------------------------------------------


def rt(**kwargs) -> realtime.RealtimeSession:  # type: ignore[no-untyped-def]
    return realtime.RealtimeSession(model="tiny.en", default_language="en", multilingual=False, **kwargs)


def send(rt_session: realtime.RealtimeSession, kind: str, **fields) -> realtime.ClientEvent:  # type: ignore[no-untyped-def]
    return rt_session.client_text(json.dumps({"type": kind, **fields}))


def append(session: realtime.RealtimeSession, seconds: float) -> realtime.ClientEvent:
    audio = np.zeros(round(seconds * session.sample_rate), "<i2").tobytes()
    return send(session, "input_audio_buffer.append", audio=base64.b64encode(audio).decode())


def refused(call) -> realtime.RealtimeError:  # type: ignore[no-untyped-def]
    with pytest.raises(realtime.RealtimeError) as exc:
        call()
    return exc.value


def test_realtime_connection_query():
    realtime.check_query([("intent", "transcription"), ("model", "gpt-4o-transcribe")])
    for query, param in ([], "intent"), ([("intent", "conversation")], "intent"), ([("intent", "transcription"), ("x", "1")], "x"):
        error = refused(lambda query=query: realtime.check_query(query))
        assert error.param == param and error.close_code == 1008


def test_realtime_session_update_is_checked_whole_then_applied():
    session = rt()
    created = json.loads(session.created())
    assert created["type"] == "session.created" and created["session"]["audio"]["input"]["format"]["rate"] == 24000
    event = send(session, "session.update", session={"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "Hester Prynne", "keywords": ["Salem"]},
        "turn_detection": None, "noise_reduction": None}}})
    updated = json.loads(event.replies[0])["session"]["audio"]["input"]
    assert updated["format"]["rate"] == 16000 and updated["turn_detection"] is None
    assert updated["transcription"] == {"model": "tiny.en", "language": "en", "prompt": "Hester Prynne", "keywords": ["Salem"]}
    state = StreamState()
    session.configure(state)
    assert state.vocabulary == "Hester Prynne, Salem" and state.language == "en"
    cases = [
        ({"type": "realtime"}, "session.type"),
        ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.audio.input.format.type"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 4000}}}}, "session.audio.input.format.rate"),
        ({"audio": {"input": {"transcription": {"language": "fr"}}}}, "session.audio.input.transcription.language"),
        ({"audio": {"input": {"transcription": {"prompt": "x" * 401}}}}, "session.audio.input.transcription.prompt"),
        ({"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}}, "session.audio.input.turn_detection.type"),
        ({"audio": {"input": {"transcription": {"temperature": 1}}}}, "session.audio.input.transcription.temperature"),
        ({"audio": {"output": {}}}, "session.audio.output"),
    ]
    for update, param in cases:
        error = refused(lambda update=update: send(session, "session.update", session=update, event_id="ev1"))
        assert (error.param, error.event_id, error.fatal) == (param, "ev1", False), error.message
    assert session.sample_rate == 16000 and session.prompt == "Hester Prynne"  # a refused update changed nothing
    append(session, 0.2)
    error = refused(lambda: send(session, "session.update", session={"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}))
    assert error.param == "session.audio.input.format.rate"


def test_realtime_client_events_and_their_errors():
    session = rt()
    event = append(session, 0.05)
    assert event.audio is not None and len(event.audio) == 2400 and event.control is None and not event.replies
    error = refused(lambda: send(session, "input_audio_buffer.commit"))
    assert error.code == "input_audio_buffer_commit_empty" and "50.00ms" in error.message
    append(session, 0.05)
    event = send(session, "input_audio_buffer.commit")
    committed = json.loads(event.replies[0])
    assert event.control is Control.FINALIZE and committed["type"] == "input_audio_buffer.committed"
    assert committed["item_id"].startswith("item_") and committed["previous_item_id"] is None
    assert send(session, "input_audio_buffer.clear").control is None  # nothing appended since the commit
    assert refused(lambda: session.client_text("{bad")).code == "invalid_json"
    assert refused(lambda: send(session, "input_audio_buffer.append", audio="***")).param == "audio"
    assert refused(lambda: send(session, "response.create", event_id="e9")).event_id == "e9"
    error = json.loads(session.error(refused(lambda: send(session, "response.create", event_id="e9"))))
    assert error["type"] == "error" and error["error"] == {
        "type": "invalid_request_error", "code": "invalid_value", "param": "type", "event_id": "e9",
        "message": "event type 'response.create' is not supported in a transcription session"}
    assert session.close_reason(ProtocolError("unauthorized", "bad key", 1008)) == (3000, "invalid_request_error.invalid_api_key")
    assert session.close_reason(ProtocolError("too_large", "big", 1009)) == (1009, "invalid_request_error.too_large")
    assert json.loads(session.error(ProtocolError("internal", "oops", 1011)))["error"]["type"] == "server_error"


def events(session: realtime.RealtimeSession, messages, activity, turn_end=False, flush=False) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(e) for e in session.results(messages, activity, turn_end=turn_end, flush=flush)]


def test_realtime_deltas_are_committed_words_and_items_end_at_pauses():
    session = rt()
    out = events(session, [Partial(text="Hello", start=0.5, end=0.9)], speaking(0.4))
    assert [e["type"] for e in out] == ["input_audio_buffer.speech_started"]  # partials are never sent
    assert out[0]["audio_start_ms"] == 400
    item = out[0]["item_id"]
    out = events(session, [final((" Hello,", 0.5, 0.9))], speaking(0.4, 0.9))
    assert [(e["type"], e["delta"]) for e in out] == [("conversation.item.input_audio_transcription.delta", "Hello,")]
    out = events(session, [final((" world.", 1.0, 1.6))], Activity(None, 1.6, 1.7))
    assert [e["type"] for e in out] == [
        "conversation.item.input_audio_transcription.delta", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"]
    assert out[0]["delta"] == " world." and out[1]["audio_end_ms"] == 1700
    assert {e["item_id"] for e in out} == {item}
    assert out[3]["transcript"] == "Hello, world." and out[3]["usage"] == {"type": "duration", "seconds": 1.1}
    # The next utterance is a new item, after this one.
    out = events(session, [final((" Again", 3.0, 3.4))], speaking(2.9, 3.4))
    assert out[0]["type"] == "input_audio_buffer.speech_started" and out[0]["item_id"] != item
    append(session, 0.5)
    commit = json.loads(send(session, "input_audio_buffer.commit").replies[0])
    assert commit["previous_item_id"] == item and commit["item_id"] == out[0]["item_id"]
    # A call that was in flight when the commit came: its words are the committed item's, no VAD end in between.
    out = events(session, [final((" and", 3.5, 3.7))], Activity(None, 3.7, 3.8))
    assert [e["type"] for e in out] == ["conversation.item.input_audio_transcription.delta"]
    out = events(session, [final((" again.", 3.8, 4.2))], Activity(None, 4.2, 4.3), turn_end=True)
    assert [e["type"] for e in out][-1] == "conversation.item.input_audio_transcription.completed"
    assert out[-1]["transcript"] == "Again and again." and out[-1]["item_id"] == commit["item_id"]


def test_realtime_manual_turns_and_clear():
    session = rt()
    send(session, "session.update", session={"audio": {"input": {"turn_detection": None}}})
    out = events(session, [final((" One", 0.2, 0.5))], Activity(None, 0.5, 0.6))
    assert [e["type"] for e in out] == ["conversation.item.input_audio_transcription.delta"]  # no VAD events, no end
    append(session, 0.5)
    assert send(session, "input_audio_buffer.clear").control is Control.FINALIZE
    out = events(session, [final((" two", 0.7, 0.9))], Activity(None, 0.9, 1.0), turn_end=True)
    # The cleared audio's words are dropped; the item that had words already is closed with them.
    assert [(e["type"], e.get("transcript")) for e in out] == [("conversation.item.input_audio_transcription.completed", "One")]
    assert events(session, [final((" three", 1.5, 1.9))], Activity(None, 1.9, 2.0), flush=True)[-1]["transcript"] == "three"
