"""The streaming policy's exact rules, on real speech through the real model and VAD."""

import pickle

import numpy as np
import pytest

from serve.core.messages import Final, Partial
from serve.core.stream import StreamState, drive
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
    pcm = pcm16(by_id["ls-1089-134686-0000"].path)[: 16_000 * 4]  # cut mid-sentence, just after "carrots"
    state, before = StreamState(), []
    for i in range(0, pcm.size, 16_000):
        before += processor.process(state, pcm[i : i + 16_000], engine.transcribe)
    assert state.vad.open_segment is not None
    assert "carrots" not in words(before)  # not final before the finalize...
    messages = processor.close(state, engine.transcribe)
    assert finals(messages) and state.partial_text == "" and state.hypothesis == []
    assert "carrots" in words(messages)  # ...and final by it


def test_a_prefix_that_swallows_the_decode_does_not_lose_the_audio(processor, engine, by_id):
    """Seen under load: the committed "Two." came back from a batch as "2"; forced as the prefix of the
    next 15 s window, tiny.en continued it as "2." and stopped. That audio must be decoded again, not trimmed."""
    from serve.core.words import Word

    pcm = pcm16(by_id["sonnet-002"].path)[: 16_000 * 20]
    state = StreamState(language="en")

    def decode(job):  # type: ignore[no-untyped-def]
        if state.committed and state.committed[-1].word.strip() == "Two.":
            w = state.committed[-1]
            state.committed[-1] = Word(" 2", w.start, w.end, w.probability)
        return engine.transcribe(processor.request(state, job.window))

    messages = []
    for i in range(0, pcm.size, 16_000 * 4):  # calls of 4 s decode finals only, as when the stream is behind
        messages += drive(processor.steps(state, pcm[i : i + 16_000 * 4]), decode)
    messages += processor.close(state, engine.transcribe)
    text = " ".join(f.text for f in finals(messages)).lower()
    assert "winters shall" in text and "beauty's field" in text, text
    check_rules(messages, pcm.size / 16_000)


def test_finals_only_mode_commits_everything_in_forced_windows(vad, engine, by_id):
    """With partial decodes skipped (overload), a long utterance is still committed, in bounded windows."""
    from serve.core.stream import StreamingOptions, StreamProcessor

    processor = StreamProcessor(StreamingOptions(skip_partials_behind_s=0.5), vad=vad)  # every call is behind
    pcm = pcm16(by_id["sonnet-002"].path)
    state = StreamState(language="en")
    messages = []
    windows = []

    def decode(job):  # type: ignore[no-untyped-def]
        windows.append(job.window)
        return engine.transcribe(job.request)

    for i in range(0, pcm.size, 16_000 * 5):
        messages += drive(processor.steps(state, pcm[i : i + 16_000 * 5]), decode)
    messages += processor.close(state, engine.transcribe)
    assert windows and all(w.kind.value != "partial" and w.seconds <= processor.options.max_buffer_s for w in windows)
    check_rules(messages, pcm.size / 16_000)
    text = " ".join(f.text for f in finals(messages)).lower()
    assert "winters" in text and "warm" in text and len(text.split()) >= 100, text


@pytest.mark.parametrize("agreement", [True, False])
def test_without_agreement_words_become_final_only_at_pauses(vad, engine, by_id, agreement):
    """commit_on_agreement off: partial decodes commit nothing; finals come at endpoints (and forced windows)."""
    from serve.core.stream import StreamingOptions, StreamProcessor

    processor = StreamProcessor(StreamingOptions(commit_on_agreement=agreement), vad=vad)
    pcm = pcm16(by_id["ls-multispeaker-stream"].path)[: 16_000 * 40]
    _, by_kind, messages = run_by_source(processor, engine, pcm)
    live = by_kind.get("partial", []) + by_kind.get("eager", [])  # decodes of the live window (idle: every chunk)
    committed_by_partials = finals(live)
    assert any(isinstance(m, Partial) and m.text for m in live)
    if agreement:
        assert committed_by_partials  # the same audio commits mid-utterance when agreement is on
    else:
        assert not committed_by_partials
    text = " ".join(f.text for f in finals(messages)).lower()
    assert "stew for dinner" in text and "wait no longer" in text, text


def at_pauses(vad, **options):  # type: ignore[no-untyped-def]
    from serve.core.stream import StreamingOptions, StreamProcessor
    from serve.core.vad import VadOptions

    return StreamProcessor(StreamingOptions(commit_on_agreement=False, vad=VadOptions(min_silence_ms=700), **options), vad=vad)


def run_by_source(processor, engine, pcm):  # type: ignore[no-untyped-def]
    """Stream ``pcm`` in 1 s chunks; the messages in order, and by what made them: a window kind, or ``settle``.
    An instrument: it takes the call apart (push, settle, next_window, apply) to see which step made each message,
    which ``steps`` does not tell; everything else drives ``steps``."""
    state, by_source, messages = StreamState(language="en"), {"settle": []}, []
    for i in range(0, pcm.size + 1, 16_000):
        processor.push(state, pcm[i : i + 16_000])
        if i + 16_000 > pcm.size:
            processor.finalize(state)
        settled = processor.settle(state)
        by_source["settle"] += settled
        messages += settled
        while (window := processor.next_window(state)) is not None:
            applied = processor.apply(state, window, engine.transcribe(processor.request(state, window)))
            by_source.setdefault(window.kind.value, []).extend(applied)
            messages += applied
    return state, by_source, messages


def test_at_pauses_a_final_is_the_decode_made_when_the_pause_began(vad, engine, by_id):
    """Finals at pauses: the utterance is decoded once speech_pad_ms of silence is heard; when the pause
    becomes an endpoint that decode is the final (``settle``), with no decode after the endpoint."""
    pcm = pcm16(by_id["ls-multispeaker-stream"].path)[: 16_000 * 40]
    state, by_source, messages = run_by_source(at_pauses(vad, pause_commit_s=29.0), engine, pcm)
    check_rules(messages, pcm.size / 16_000)
    assert len(finals(by_source["settle"])) >= 2, {k: len(finals(v)) for k, v in by_source.items()}
    assert not finals(by_source.get("partial", [])) and not finals(by_source.get("pause", []))
    text = " ".join(f.text for f in finals(messages)).lower()
    assert "stew for dinner" in text and "wait no longer" in text, text
    assert state.closed == [] and state.hypothesis == []


def test_at_pauses_long_speech_is_committed_at_its_short_pauses(vad, engine, by_id):
    """Speech whose pauses are shorter than min_silence_ms: once pause_commit_s of it waits, a pause of
    speech_pad_ms commits what came before it, instead of holding it until the max_buffer_s bound forces it."""
    item = by_id["harvard-realpython"]  # six sentences, 18 s, no pause long enough for an endpoint
    pcm = pcm16(item.path)
    long_wait = run_by_source(at_pauses(vad, pause_commit_s=29.0), engine, pcm)[1]
    _, by_source, messages = run_by_source(at_pauses(vad), engine, pcm)  # pause_commit_s 8
    check_rules(messages, pcm.size / 16_000)
    assert finals(long_wait.get("force", [])), "nothing forced without pause commits: the clip tests nothing"
    assert len(finals(by_source.get("pause", []))) >= 2, {k: len(finals(v)) for k, v in by_source.items()}
    assert len(finals(by_source.get("force", []))) < len(finals(long_wait["force"]))
    heard, expected = words(messages), [comparable(w) for w in item.text.split()]
    # Every sentence once, in order: none doubled by a decode of the silence after its commit.
    assert heard.count("bun") == 1 and heard.count("health") == 1, heard
    assert len(heard) >= len(expected) - 3 and heard[-3:] == expected[-3:], heard


def stopping_early(engine, kind: str, keep: int = 3):  # type: ignore[no-untyped-def]
    """engine.transcribe, except that the first long ``kind`` window returns only its first ``keep`` words, as
    when the decoder emits end-of-text early (seen: a 15 s window that came back as "n' age shall" and stopped)."""
    from serve.core.engine import DecodeResult

    done = []

    def decode(job):  # type: ignore[no-untyped-def]
        window, result = job.window, engine.transcribe(job.request)
        if window.kind.value == kind and not done and window.seconds > 7 and len(result.words) > 2 * keep:
            done.append((window, result.words[keep - 1].end + window.start / 16_000))
            result = DecodeResult(result.words[:keep], result.language)
        return result

    return decode, done


@pytest.mark.parametrize("kind,clip", [("force", "sonnet-002"), ("final", "ls-multispeaker-stream")])
def test_audio_after_an_early_stop_is_decoded_not_trimmed(processor, engine, by_id, kind, clip):
    """The words the decoder gave are committed; the audio after them stays and is decoded again."""
    pcm = pcm16(by_id[clip].path)[: 16_000 * 30]
    decode, done = stopping_early(engine, kind)
    state = StreamState(language="en")
    messages = []
    step = 16_000 * (5 if kind == "force" else 30)  # finals only: 30 s at once closes utterances (final windows)
    for i in range(0, pcm.size, step):  # calls of 5 s or more: finals only
        messages += drive(processor.steps(state, pcm[i : i + step]), decode)
    messages += processor.close(state, engine.transcribe)
    assert done, f"no {kind} window long enough to stop early in"
    check_rules(messages, pcm.size / 16_000)
    heard = [w for f in finals(messages) for w in f.words]
    window, stopped_at = done[0]
    # What followed the early stop in that window was decoded: words all through it, not a hole to its end.
    later = [w for w in heard if stopped_at < w.start < window.end / 16_000]
    assert later and max(b.start - a.end for a, b in zip(heard, heard[1:]) if a.end >= stopped_at - 0.5) < 3.0, (
        stopped_at, [(w.word, w.start) for w in heard]
    )


def test_a_word_is_not_committed_apart_from_its_glued_continuation(processor):
    """Whisper splits "i.e." into " i" + ".e.": the two commit together or not at all."""
    from serve.core.engine import DecodeResult
    from serve.core.stream import Window, WindowKind
    from serve.core.words import Word

    state = StreamState(language="en", audio=np.zeros(16_000 * 5, np.int16))
    decoded = [Word(" in", 0.0, 0.5, 0.9), Word(" i", 0.5, 1.0, 0.9), Word(".e.", 1.0, 2.8, 0.9), Word(" the", 2.9, 3.2, 0.9)]
    state.hypothesis, state.decoded_until = list(decoded), 16_000 * 3
    messages = processor.apply(state, Window(WindowKind.PARTIAL, 0, 16_000 * 5), DecodeResult(decoded, "en"))
    # ".e." ends too near the older window's edge to commit, so " i" waits with it.
    assert [f.text for f in finals(messages)] == ["in"]
    assert [w.word for w in state.hypothesis] == [" i", ".e.", " the"]


def test_the_context_is_not_cut_between_a_word_and_its_glued_continuation(processor):
    """Whisper writes "1,000, 101." as " 1" + ",000," + " 101.": a context cut between " 1" and ",000," left the
    prompt ending " 1" and the next window's forced prefix starting ",000,"; the cut moves to the next word that
    starts one."""
    from serve.core.words import Word

    state = StreamState(language="en", audio=np.zeros(16_000 * 7, np.int16))
    state.committed = [Word(" 1", 0.0, 1.24, 0.9), Word(",000,", 1.24, 1.98, 0.9), Word(" 101.", 2.82, 2.82, 0.9)]
    state.last_final_end = 2.82
    cut = processor._context_cut(state, 16_000 * 6)  # keeps the words of the last context_s (5 s): from 1.0 s
    processor._trim(state, cut)
    assert [w.word for w in state.committed] == [" 101."]
    assert state.prompt == " 1,000,"


def test_words_heard_without_context_commit_only_from_windows_of_agree_window_s(vad, engine, by_id):
    """The start of an utterance with no context before it: two short decodes can agree on words tiny.en will
    hear differently with more audio ("but though on the whole" as "but they'll want the hole"). Agreement
    commits only when the older window holds agree_window_s; with 0 the same stream commits from shorter ones."""
    from serve.core.stream import StreamingOptions, StreamProcessor, WindowKind

    pcm = pcm16(by_id["ljspeech-LJ001-0029"].path)

    def shortest_agreeing_window(options):  # type: ignore[no-untyped-def]
        processor, state, shortest = StreamProcessor(options, vad=vad), StreamState(language="en"), []
        windows = []

        def decode(job):  # type: ignore[no-untyped-def]
            windows.append(job.window)
            return engine.transcribe(job.request)

        for i in range(0, pcm.size, 16_000):
            before = len(windows)
            messages = drive(processor.steps(state, pcm[i : i + 16_000]), decode)
            live = [w for w in windows[before:] if w.kind in (WindowKind.PARTIAL, WindowKind.EAGER)]
            if finals(messages) and live and len(windows) > len(live):
                older = windows[len(windows) - len(live) - 1]
                shortest.append(min(older.end, live[-1].end) / 16_000 - older.start / 16_000)
        return min(shortest, default=None)

    options = StreamingOptions()
    assert options.agree_window_s >= 2.0
    committed_from = shortest_agreeing_window(options)
    assert committed_from is not None and committed_from >= options.agree_window_s
    sooner = shortest_agreeing_window(options.model_copy(update={"agree_window_s": 0.0}))
    assert sooner is not None and sooner < options.agree_window_s


def repeats(messages, n: int = 5, within_s: float = 60.0):  # type: ignore[no-untyped-def]
    """Finals that repeat ``n`` or more consecutive words of the finals of the ``within_s`` before them."""
    found, earlier = [], []
    for final in finals(messages):
        before = [comparable(w.word) for f in earlier if f.end >= final.start - within_s for w in f.words]
        grams = {tuple(before[i : i + n]) for i in range(len(before) - n + 1)}
        mine = [comparable(w.word) for w in final.words]
        if any(tuple(mine[i : i + n]) in grams for i in range(len(mine) - n + 1)):
            found.append(final.text)
        earlier.append(final)
    return found


def test_a_last_call_with_the_end_of_an_utterance_and_silence_invents_nothing(processor, engine, by_id):
    """Under load the Ingress merges chunks: the last call brings the end of an utterance, the silence after
    it, and the client's stop (finalize). The VAD closes the utterance in that call; finalize must not add a
    second window over it, which Whisper filled with a sentence from its prompt ("I must have forgetfulness
    or death." again, all words at the stream's last sample)."""
    pcm = pcm16(by_id["dagon-par1"].path)
    tail = pcm.size - 4 * 16_000
    state, messages = StreamState(language="en"), []
    for i in range(0, tail, 16_000):
        messages += processor.run(state, pcm[i : min(i + 16_000, tail)], engine.transcribe)
    last = np.concatenate([pcm[tail:], np.zeros(24_000, np.int16)])
    messages += processor.run(state, last, engine.transcribe, finalize=True)
    check_rules(messages, state.duration)
    assert [f.text for f in finals(messages) if f.end <= f.start] == []
    assert repeats(messages) == []


def test_a_decode_with_nothing_after_a_zero_length_prefix_makes_progress(processor, by_id):
    """A final decode that returns no words after its prefix drops the prefix and decodes again. When the
    prefix's last word had zero length (start == end, as clamped timestamps give), it survived that trim: the
    same window, prefix and prompt came back, and greedy decoding returned nothing again, forever."""
    from serve.core.engine import DecodeResult
    from serve.core.words import Word

    decodes = []

    def says_nothing(request):  # type: ignore[no-untyped-def]
        decodes.append(request.prefix)
        if len(decodes) > 10:
            raise RuntimeError(f"the same window decoded again and again: prefixes {decodes}")
        return DecodeResult([], "en")

    state = StreamState(language="en")
    processor.push(state, pcm16(by_id["jfk"].path))
    state.committed, state.last_final_end = [Word(" And", 1.0, 1.0, 0.9)], 1.0
    processor.run(state, np.zeros(0, np.int16), says_nothing, finalize=True)
    assert decodes[0] == "And" and "" in decodes[1:]  # decoded again without the prefix: progress
    assert state.closed == [] and state.vad.open_segment is None


def test_an_idle_decoder_decodes_every_chunk_so_words_are_seen_and_final_sooner(vad, engine, by_id):
    """With an idle decoder a stream's speech is decoded at every chunk, not only after min_step_s: the second
    chunk of speech is decoded at once, partials come a chunk after speech starts, and words that two such
    decodes agree on are final sooner, with the same words in the end."""
    from serve.core.stream import StreamingOptions, StreamProcessor

    pcm = pcm16(by_id["ls-1089-134686-0000"].path)

    def stream(options):  # type: ignore[no-untyped-def]
        processor, state, kinds, calls = StreamProcessor(options, vad=vad), StreamState(language="en"), [], []

        def decode(job):  # type: ignore[no-untyped-def]
            kinds.append((len(calls), job.window.kind.value))
            return engine.transcribe(job.request)

        for i in range(0, pcm.size, 16_000):
            calls.append(drive(processor.steps(state, pcm[i : i + 16_000]), decode))
        calls.append(drive(processor.steps(state, np.zeros(0, np.int16), finalize=True), decode))
        return kinds, calls

    kinds, calls = stream(StreamingOptions())
    plain_kinds, plain_calls = stream(StreamingOptions(eager_step_s=0))
    live = [call for call, kind in kinds if kind in ("eager", "partial")]
    assert live[:2] == [live[0], live[0] + 1], kinds  # speech starts, then the very next chunk is decoded again
    assert "eager" not in {kind for _, kind in plain_kinds}
    first_partial = next(i for i, c in enumerate(calls) if any(isinstance(m, Partial) and m.text for m in c))
    plain_first = next(i for i, c in enumerate(plain_calls) if any(isinstance(m, Partial) and m.text for m in c))
    assert first_partial < plain_first, (first_partial, plain_first)  # seen a call (a second of audio) sooner
    first_final = next(i for i, c in enumerate(calls) if finals(c))
    plain_final = next(i for i, c in enumerate(plain_calls) if finals(c))
    assert first_final < plain_final, (first_final, plain_final)  # final sooner, before the utterance ends
    assert first_final < len(calls) - 1
    text = lambda calls: " ".join(w for c in calls for w in words(c))  # noqa: E731
    assert text(calls) == text(plain_calls)


def test_a_busy_decoder_sheds_eager_decodes_and_the_audio_joins_the_next_one(vad, engine, by_id):
    """A decoder with requests waiting (the real shedder's rule) refuses eager decodes: the newer audio is decoded
    with the stream's next decode, so a busy decoder gets fewer decodes (counted), and the same words."""
    from serve.core.shedding import PartialShedder
    from serve.core.stream import StreamingOptions, StreamProcessor

    pcm = pcm16(by_id["ls-1089-134686-0000"].path)

    def stream(queued: int):  # type: ignore[no-untyped-def]
        shedder = PartialShedder(max_wait_s=1.0, eager_wait_s=0.25)
        shedder.seconds_per_item, shedder.queued = 0.4, queued  # a CPU decode; requests already waiting
        processor, state, decoded, messages = StreamProcessor(StreamingOptions(), vad=vad), StreamState(language="en"), [], []

        def decode(job):  # type: ignore[no-untyped-def]
            if not shedder.admit(job.optional, job.eager):
                return None
            decoded.append(job.window.kind.value)
            return engine.transcribe(job.request)

        for i in range(0, pcm.size, 16_000):
            messages += drive(processor.steps(state, pcm[i : i + 16_000]), decode)
        messages += drive(processor.steps(state, np.zeros(0, np.int16), finalize=True), decode)
        return decoded, messages

    idle, idle_messages = stream(queued=0)
    busy, busy_messages = stream(queued=1)  # 0.4 s of wait: no room for an eager decode, room for a partial
    assert "eager" in idle and "eager" not in busy and "partial" in busy
    assert len(busy) < len(idle), (idle, busy)
    assert " ".join(words(busy_messages)) == " ".join(words(idle_messages))


def test_a_stream_that_wants_no_partials_gets_no_partial_decodes(processor, engine, by_id):
    """interim_results=false: no partial or eager window is decoded (counted), and the words still all become final."""
    pcm = pcm16(by_id["ls-1089-134686-0000"].path)
    kinds, messages = [], []
    state = StreamState(language="en", interim=False)

    def decode(job):  # type: ignore[no-untyped-def]
        kinds.append(job.window.kind.value)
        return engine.transcribe(job.request)

    for i in range(0, pcm.size, 16_000):
        messages += drive(processor.steps(state, pcm[i : i + 16_000]), decode)
    messages += drive(processor.steps(state, np.zeros(0, np.int16), finalize=True), decode)
    assert kinds and not {"partial", "eager"} & set(kinds), kinds
    assert not [m for m in messages if isinstance(m, Partial)]
    text = " ".join(words(messages))
    assert "stew for dinner" in text and "mutton pieces" in text and text.endswith("sauce"), text


def test_a_quiet_stream_is_quiet_until_speech_and_again_after_its_final(processor, engine, by_id):
    """``StreamState.quiet`` routes a call into a trip shared with other streams (serve.deploy.buffer_manager): it
    must mean that the call decodes nothing unless its own audio brings speech."""
    speech = pcm16(by_id["jfk"].path)
    pcm = np.concatenate([np.zeros(16_000 * 2, np.int16), speech, np.zeros(16_000 * 4, np.int16)])
    state, seen, messages = StreamState(language="en"), [], []
    for i in range(0, pcm.size, 16_000):
        chunk, quiet, decodes = pcm[i : i + 16_000], state.quiet, []

        def decode(job, decodes=decodes):  # type: ignore[no-untyped-def]
            decodes.append(job.window.kind.value)
            return engine.transcribe(job.request)

        messages += drive(processor.steps(state, chunk), decode)
        seen.append(quiet)
        if quiet and not chunk.any():
            assert not decodes, (i / 16_000, decodes)  # silence on a quiet stream: the VAD only
    assert seen[:3] == [True, True, True]  # before the speech and its first second (not scored yet)
    assert not all(seen[3:-4])  # while it speaks
    assert state.quiet and seen[-1]  # after its final, in the silence
    assert "ask not what your country can do for you" in " ".join(words(messages))
