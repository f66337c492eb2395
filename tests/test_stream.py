"""The streaming policy's exact rules, on real speech through the real model and VAD."""

import pickle

import numpy as np
import pytest

from serve.core.messages import Final, Partial
from serve.core.stream import StreamState
from serve.core.words import comparable
from tests.conftest import pcm16


def run(processor, engine, pcm, chunk, handoff=False):
    state = StreamState()
    messages = []
    for i in range(0, max(pcm.size, 1), chunk):
        messages += processor.process(state, pcm[i : i + chunk], engine.transcribe)
        if handoff:  # what a stateless BufferManager does: state out, state in
            state = pickle.loads(pickle.dumps(state))
    messages += processor.close(state, engine.transcribe)
    return state, messages


def finals(messages):
    return [m for m in messages if isinstance(m, Final)]


def words(messages):
    return [comparable(w.word) for f in finals(messages) for w in f.words]


def check_rules(messages, duration):
    previous_end = 0.0
    for final in finals(messages):
        assert final.text.strip()
        assert previous_end <= final.start <= final.end <= duration + 1e-3
        for w in final.words:
            assert previous_end <= w.start <= w.end <= final.end
            previous_end = w.end
        previous_end = final.end


def test_finals_are_ordered_never_overlap_and_stay_inside_the_audio(processor, engine, by_id):
    pcm = pcm16(by_id["ls-multispeaker-stream"].path)[: 16_000 * 40]
    state, messages = run(processor, engine, pcm, 16_000)
    check_rules(messages, pcm.size / 16_000)
    assert len(finals(messages)) >= 2
    assert state.audio.size <= 16_000 * processor.options.max_buffer_s


def test_partials_only_carry_uncommitted_text(processor, engine, by_id):
    pcm = pcm16(by_id["ls-1089-134686-0000"].path)
    _, messages = run(processor, engine, pcm, 16_000)
    assert any(isinstance(m, Partial) and m.text for m in messages)
    committed_end = 0.0
    for m in messages:
        if isinstance(m, Final):
            committed_end = m.end
        elif m.text:
            assert m.start >= committed_end - 1e-3


def test_stateless_handoff_gives_the_same_messages(processor, engine, by_id):
    pcm = pcm16(by_id["jfk"].path)
    _, kept = run(processor, engine, pcm, 16_000)
    _, handed = run(processor, engine, pcm, 16_000, handoff=True)
    assert [m.to_json() for m in kept] == [m.to_json() for m in handed]


@pytest.mark.parametrize("chunk_seconds", [0.01, 60.0])
def test_tiny_and_huge_chunks_work(processor, engine, by_id, chunk_seconds):
    pcm = pcm16(by_id["jfk"].path)
    _, reference = run(processor, engine, pcm, 16_000)
    _, messages = run(processor, engine, pcm, int(chunk_seconds * 16_000))
    check_rules(messages, pcm.size / 16_000)
    assert "ask not what your country can do for you" in " ".join(words(messages))
    assert abs(len(words(messages)) - len(words(reference))) <= 3


def test_a_minute_of_continuous_speech_in_one_chunk_is_bounded(processor, engine, by_id):
    pcm = pcm16(by_id["ljspeech-LJ001-0001-0032"].path)[: 16_000 * 60]
    state, messages = run(processor, engine, pcm, 16_000 * 60)
    check_rules(messages, pcm.size / 16_000)
    assert len(words(messages)) > 60


def test_empty_audio_and_silence_give_no_text(processor, engine):
    state, messages = run(processor, engine, np.zeros(0, np.int16), 16_000)
    assert messages == [] and state.received == 0
    state, messages = run(processor, engine, np.zeros(16_000 * 20, np.int16), 16_000)
    assert finals(messages) == []
    assert state.audio.size <= processor.options.vad.pad_samples  # silence is not kept


def test_finalize_commits_the_open_utterance(processor, engine, by_id):
    pcm = pcm16(by_id["ls-1089-134686-0000"].path)[: 16_000 * 4]  # cut mid-sentence
    state = StreamState()
    for i in range(0, pcm.size, 16_000):
        processor.process(state, pcm[i : i + 16_000], engine.transcribe)
    assert state.vad.open_segment is not None
    messages = processor.close(state, engine.transcribe)
    assert finals(messages) and state.partial_text == "" and state.hypothesis == []
    assert "carrots" in " ".join(words(messages)) or "carrots" in state.prompt.lower()


def test_a_prefix_that_swallows_the_decode_does_not_lose_the_audio(processor, engine, by_id):
    """Seen under load: the committed "Two." came back from a batch as "2"; forced as the prefix of the
    next 15 s window, tiny.en continued it as "2." and stopped. That audio must be decoded again, not trimmed."""
    from serve.core.words import Word

    pcm = pcm16(by_id["sonnet-002"].path)[: 16_000 * 20]
    state = StreamState(language="en")
    messages = []
    for i in range(0, pcm.size, 16_000 * 4):  # finals only, as when the stream is behind
        processor.push(state, pcm[i : i + 16_000 * 4])
        while (window := processor.next_window(state, partials=False)) is not None:
            if state.committed and state.committed[-1].word.strip() == "Two.":
                w = state.committed[-1]
                state.committed[-1] = Word(" 2", w.start, w.end, w.probability)
            messages += processor.apply(state, window, engine.transcribe(processor.request(state, window)))
    messages += processor.close(state, engine.transcribe)
    text = " ".join(f.text for f in finals(messages)).lower()
    assert "winters shall" in text and "beauty's field" in text, text
    check_rules(messages, pcm.size / 16_000)


def test_finals_only_mode_commits_everything_in_forced_windows(processor, engine, by_id):
    """With partial decodes skipped (overload), a long utterance is still committed, in bounded windows."""
    pcm = pcm16(by_id["sonnet-002"].path)
    state = StreamState(language="en")
    messages = []
    for i in range(0, pcm.size, 16_000 * 5):
        processor.push(state, pcm[i : i + 16_000 * 5])
        while (window := processor.next_window(state, partials=False)) is not None:
            assert window.kind.value != "partial" and window.seconds <= processor.options.max_buffer_s
            messages += processor.apply(state, window, engine.transcribe(processor.request(state, window)))
    messages += processor.close(state, engine.transcribe)
    check_rules(messages, pcm.size / 16_000)
    text = " ".join(f.text for f in finals(messages)).lower()
    assert "winters" in text and "warm" in text and len(text.split()) >= 100, text
