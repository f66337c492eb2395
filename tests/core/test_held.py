"""Light calls (serve.core.held): a stream sent without its audio, the audio held by the replica that answered last
and rebuilt by the caller, gives the messages and the audio of the same stream carried whole."""

import pickle

import numpy as np
import pytest

from serve.core.engine import Features
from serve.core.held import HeldAudio, rebuild, without_audio
from serve.core.stream import StreamState, drive
from tests.conftest import pcm16


def wire(value):  # type: ignore[no-untyped-def]
    """What crossing to another replica does to a value."""
    return pickle.loads(pickle.dumps(value))


def test_light_calls_give_the_messages_and_audio_of_whole_calls(processor, engine, by_id):
    pcm = pcm16(by_id["ls-1089-134686-0000"].path)
    pcm = np.concatenate([pcm[:48_000], np.zeros(32_000, np.int16), pcm[48_000:]])  # a pause: an utterance closes
    whole, light = StreamState(language="en"), StreamState(language="en")
    held, features, reused = HeldAudio(), Features(engine.facts), 0

    def decode(job):  # type: ignore[no-untyped-def]
        """As the BufferManager decodes: features prepared with the frames kept from the window's last decode."""
        nonlocal reused
        reused += held.mel.start == job.window.start and held.mel.power.shape[1] > 2
        return engine.transcribe(features.request(job.request, held.mel, job.window.start))
    whole_messages, light_messages, bytes_whole, bytes_light = [], [], 0, 0
    for i in range(0, pcm.size, 16_000):
        chunk = pcm[i : i + 16_000]
        last = i + 16_000 >= pcm.size
        bytes_whole += len(pickle.dumps(whole))
        whole_messages += processor.run(whole, chunk, engine.transcribe, finalize=last)
        whole = wire(whole)

        sent = wire(without_audio(light))
        bytes_light += len(pickle.dumps(sent))
        assert held.fill(sent, light.received)  # the replica that answered last
        light_messages += drive(processor.steps(sent, chunk, finalize=last), decode)
        held.keep(sent)
        assert held.mel.start == -1 or not sent.quiet  # a quiet stream's frames are let go
        light = rebuild(light, chunk, wire(without_audio(sent)))
        assert light.audio_start == whole.audio_start
        assert np.array_equal(light.audio, whole.audio)
    assert [m.to_json() for m in light_messages] == [m.to_json() for m in whole_messages]
    assert any(m.type == "final" for m in light_messages)
    assert bytes_light * 5 < bytes_whole  # the audio stayed where it was
    assert reused >= 3  # windows that found frames kept for them


def test_a_replica_holding_other_audio_or_none_cannot_fill_the_state():
    state = StreamState(audio=np.arange(100, dtype=np.int16), audio_start=1_000)
    sent = without_audio(state)
    assert not HeldAudio().fill(sent, state.received)  # a new replica
    stale = HeldAudio(1_000, np.arange(60, dtype=np.int16))  # an older call's audio
    assert not stale.fill(sent, state.received)
    later = HeldAudio(1_040, np.arange(60, dtype=np.int16))  # a later call's (its answer never arrived)
    assert not later.fill(sent, state.received)
    current = HeldAudio(1_000, state.audio)
    assert current.fill(sent, state.received) and np.array_equal(sent.audio, state.audio)
    empty = without_audio(StreamState(audio_start=5_000))
    assert HeldAudio().fill(empty, 5_000) and empty.audio.size == 0  # nothing pending: any replica has that


def test_rebuild_refuses_an_answer_trimmed_outside_the_audio_it_was_sent():
    before = StreamState(audio=np.arange(100, dtype=np.int16), audio_start=1_000)
    pcm = np.arange(50, dtype=np.int16)
    after = rebuild(before, pcm, without_audio(StreamState(audio_start=1_120)))
    assert after.audio_start == 1_120 and np.array_equal(after.audio, np.concatenate([before.audio, pcm])[120:])
    for start in (999, 1_151):
        with pytest.raises(ValueError, match="outside the audio"):
            rebuild(before, pcm, without_audio(StreamState(audio_start=start)))
