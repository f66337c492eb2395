"""Protocol v1's per-stream rules, in-process and exact: no socket, no Ray, a clock passed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve.core.errors import ProtocolError
from serve.core.messages import End, Final, Partial
from serve.core.protocol import StreamProtocol
from serve.core.session import Session, StreamParams
from serve.core.settings import LimitOptions
from serve.core.words import Word

SECOND = 16_000


def frame(seconds: float, value: float = 0.1) -> bytes:
    """f32le audio at 16 kHz (the protocol's default encoding)."""
    return np.full(round(seconds * SECOND), value, np.float32).tobytes()


def stream(now: float = 0.0, interim_results: bool = True, **limits) -> StreamProtocol:  # type: ignore[no-untyped-def]
    session = Session(StreamParams(language="en", interim_results=interim_results))
    return StreamProtocol(session, LimitOptions(**limits), now)


def fails(call, code: str, close: int | None) -> ProtocolError:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as caught:
        call()
    assert (caught.value.code, caught.value.close_code) == (code, close), caught.value.message
    return caught.value


def test_audio_that_waits_goes_into_one_call():
    s = stream()
    for t in range(3):
        assert s.receive(frame(0.5), None, now=t * 0.5) == pytest.approx(0.5)
    call = s.next_call()
    assert call is not None and call.pcm.size == 3 * SECOND // 2 and not call.finalize
    assert s.next_call() is None and not s.done


def test_a_finalize_splits_the_call_where_it_arrived():
    s = stream()
    s.receive(frame(1.0), None, now=0.0)
    s.receive(None, '{"type":"finalize"}', now=1.0)
    s.receive(None, '{"type":"finalize"}', now=1.0)  # no audio between: the same turn end
    s.receive(frame(0.25), None, now=1.1)
    first, second = s.next_call(), s.next_call()
    assert first is not None and (first.pcm.size, first.finalize) == (SECOND, True)
    assert second is not None and (second.pcm.size, second.finalize) == (SECOND // 4, False)
    assert s.next_call() is None


def test_stop_flushes_once_then_ends():
    s = stream()
    s.receive(frame(1.0), None, now=0.0)
    s.receive(None, '{"type":"stop"}', now=1.0)
    fails(lambda: s.receive(frame(0.1), None, now=1.1), "bad_message", None)  # audio after stop: reported, ignored
    fails(lambda: s.receive(None, '{"type":"finalize"}', now=1.2), "bad_message", None)
    call = s.next_call()
    assert call is not None and call.finalize and call.pcm.size == SECOND
    assert s.done and s.next_call() is None
    end = s.finish()
    assert isinstance(end, End) and end.duration == 1.0


@pytest.mark.parametrize("text", ["not json", "[1]", '{"type":"pause"}', "{}"])
def test_a_bad_control_message_is_reported_and_the_stream_goes_on(text):
    s = stream()
    fails(lambda: s.receive(None, text, now=0.0), "bad_message", None)
    s.receive(frame(0.5), None, now=0.1)
    assert s.next_call() is not None


def test_audio_that_is_not_whole_samples_is_fatal():
    s = stream()
    fails(lambda: s.receive(b"\x00\x01\x02", None, now=0.0), "bad_audio", 1003)


def test_too_large_counts_the_bytes_a_text_frame_had():
    s = stream(max_frame_bytes=1024)
    fails(lambda: s.receive(bytes(1028), None, now=0.0), "too_large", 1009)
    s = stream(max_frame_bytes=1024)
    text = json.dumps({"type": "stop", "pad": "é" * 600}, ensure_ascii=False)  # 600 characters, 1,200 bytes
    assert len(text) < 1024 < len(text.encode())
    fails(lambda: s.receive(None, text, now=0.0), "too_large", 1009)


def test_a_flood_of_messages_is_cut_at_the_message_rate():
    s = stream(max_messages_per_s=10)
    taken = 0
    with pytest.raises(ProtocolError) as caught:
        for i in range(100):  # a message every millisecond
            s.receive(b"", None, now=i * 0.001)
            taken += 1
    assert caught.value.code == "rate_limited" and caught.value.close_code == 1008
    assert 50 <= taken <= 52  # the burst, 5 s worth, and what refilled meanwhile
    s = stream(max_messages_per_s=10)
    for i in range(200):  # at the rate: never cut
        s.receive(b"", None, now=i * 0.1)


def test_audio_faster_than_the_speed_limit_is_cut_after_its_burst():
    s = stream(max_speed=4.0, speed_burst_s=10.0, max_pending_seconds=600)
    sent = 0.0
    with pytest.raises(ProtocolError) as caught:
        for i in range(100):  # 1 s of audio every 0.1 s: 10x real time
            sent += s.receive(frame(1.0), None, now=i * 0.1)
    assert (caught.value.code, caught.value.close_code) == ("rate_limited", 1008)
    assert 10.0 <= sent <= 20.0  # the burst, plus 4x the time it took
    s = stream(max_speed=4.0, speed_burst_s=10.0, max_pending_seconds=600)
    for i in range(60):  # 3x real time: never cut
        s.receive(frame(1.0), None, now=i / 3)


def test_more_audio_waiting_than_allowed_is_overloaded():
    s = stream(max_pending_seconds=2.0)
    s.receive(frame(1.5), None, now=0.0)
    fails(lambda: s.receive(frame(1.0), None, now=0.1), "overloaded", 1013)


def test_an_empty_frame_is_no_audio_and_the_stream_goes_idle():
    s = stream(idle_timeout_s=10.0)
    s.receive(frame(0.5), None, now=0.0)
    for t in range(1, 10):
        assert s.receive(b"", None, now=float(t)) == 0.0
    assert s.deadline() == 10.0  # empty frames did not move it
    s.expire(now=10.0)
    call = s.next_call()
    assert call is not None and call.finalize and s.done  # what was heard is flushed...
    ending = s.finish()
    assert isinstance(ending, ProtocolError) and (ending.code, ending.close_code) == ("idle_timeout", 1008)  # ...then the error


def test_a_stop_or_audio_crossing_the_servers_own_ending_is_ignored():
    s = stream(idle_timeout_s=5.0)
    s.expire(now=5.0)
    assert s.receive(frame(0.5), None, now=5.1) == 0.0
    assert s.receive(None, '{"type":"stop"}', now=5.2) == 0.0
    assert s.next_call() is not None and s.done


def test_max_stream_s_counts_audio_and_time_open():
    s = stream(max_stream_s=2.0, idle_timeout_s=60.0)
    s.receive(frame(1.0), None, now=0.0)
    s.receive(frame(1.0), None, now=1.0)
    assert s.deadline() is None  # two seconds of audio: ending
    ending = (s.next_call(), s.finish())[1]
    assert isinstance(ending, ProtocolError) and ending.code == "max_duration"

    s = stream(max_stream_s=2.0, idle_timeout_s=1.5)
    for t in range(8):  # a trickle: one sample every 0.25 s keeps it from going idle...
        s.receive(np.zeros(1, np.float32).tobytes(), None, now=t * 0.25)
    assert s.deadline() == 2.0  # ...but not open longer than max_stream_s
    s.expire(now=2.0)
    ending = (s.next_call(), s.finish())[1]
    assert isinstance(ending, ProtocolError) and ending.code == "max_duration"


def test_delivered_finals_carry_their_lag_and_partials_follow_interim_results():
    final = Final.from_words([Word(" hello", 0.2, 0.9, 0.9)])
    partial = Partial(text="wor", start=1.0, end=1.2)
    for interim in (True, False):
        s = stream(interim_results=interim)
        s.receive(frame(1.0), None, now=100.0)
        out = s.deliver([final, partial], now=101.5)
        assert [o.message.type for o in out] == (["final", "partial"] if interim else ["final"])
        assert out[0].lag == pytest.approx(1.5)
