from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest

from serve.core.audio import load_audio
from serve.core.engine import DecodeRequest
from serve.core.words import comparable


def _words(result):
    return [comparable(w.word) for w in result.words]


class CountingModel:
    """The real CTranslate2 model, with its batch-level methods counted on the way through (not mocked)."""

    COUNTED = ("encode", "generate", "align", "detect_language")

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attr = getattr(self.real, name)
        if name not in self.COUNTED:
            return attr

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@contextmanager
def counting(engine):  # type: ignore[no-untyped-def]
    """Count the calls ``engine`` makes into CTranslate2 itself, whatever the engine reports of them."""
    real = engine.model.model
    engine.model.model = CountingModel(real)
    try:
        yield engine.model.model.calls
    finally:
        engine.model.model = real


def test_one_batched_call_gives_the_words_of_eight_single_calls(engine, manifest):
    clips = [item for item in manifest if item.subset == "short"][:8]
    requests = [DecodeRequest(load_audio(item.path)) for item in clips]
    singles = [engine.transcribe(r) for r in requests]
    with counting(engine) as calls:
        batch = engine.transcribe_batch(requests)
    batched = batch.results
    # ONE encode, ONE generate and ONE align into CTranslate2 for the eight windows: a loop would make eight.
    assert calls == {"encode": 1, "generate": 1, "align": 1}, calls
    assert batch.stats.engine_calls == 1 and batch.stats.size == 8
    assert 0 < batch.stats.engine_seconds < batch.stats.seconds  # the engine's calls, timed apart from the rest
    for single, batch in zip(singles, batched):
        assert not isinstance(batch, Exception)
        assert _words(batch) == _words(single)
        assert len(_words(batch)) >= 3
    assert len({tuple(_words(b)) for b in batched}) == 8  # no item got another's text


def test_streams_whose_prompts_differ_in_length_share_the_engine_calls(engine, manifest):
    """Each stream feeds its own committed text back as Whisper's prompt, so the prompts of a batch's windows differ in
    length, and CTranslate2 generates for a batch only when its start-of-transcript token sits at one position in every
    item. Eight windows whose histories are 330 to 400 characters long (streams that have spoken for a while: the
    default ``prompt_chars`` is 400), two of them also with one vocabulary: one encode, one generate for the six and
    one for the two, and each item's words are its own single call's."""
    clips = [item for item in manifest if item.subset == "short"][:8]
    told = " ".join(item.text for item in manifest if item.subset == "short")
    assert len(told) > 800
    requests = [
        DecodeRequest(
            load_audio(item.path), prompt=told[i * 40 : i * 40 + 330 + 10 * i],
            vocabulary="Hester Prynne, Pearl" if i in (2, 5) else "",
        )
        for i, item in enumerate(clips)
    ]
    singles = [engine.transcribe(r) for r in requests]
    with counting(engine) as calls:
        batch = engine.transcribe_batch(requests)
    assert calls == {"encode": 1, "generate": 2, "align": 1}, calls
    for single, batched in zip(singles, batch.results):
        assert not isinstance(batched, Exception)
        assert _words(batched) == _words(single) and len(_words(single)) >= 3


def test_features_prepared_outside_the_engine_give_the_same_words(engine, manifest):
    """What the BufferManager does: the windows' log-mel features computed from the model's facts alone (no model
    loaded) and sent instead of the audio; a batch of 8 different clips gives the same words, times and
    probabilities as the engine computing them itself, with the same engine calls."""
    import pickle

    from serve.core.engine import Features

    features = Features(pickle.loads(pickle.dumps(engine.facts)))  # as it travels to the BufferManager
    clips = [item for item in manifest if item.subset == "short"][:8]
    requests = [DecodeRequest(load_audio(item.path), prompt="Well.") for item in clips]
    prepared = [features.request(r) for r in requests]
    assert all(p.audio.size == 0 and p.features is not None and p.features.dtype == np.float32 for p in prepared)
    own = engine.transcribe_batch(requests)
    with counting(engine) as calls:
        outside = engine.transcribe_batch(prepared)
    assert calls == {"encode": 1, "generate": 1, "align": 1}, calls
    for a, b in zip(own.results, outside.results, strict=True):
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert [w.as_dict() for w in a.words] == [w.as_dict() for w in b.words] and len(a.words) >= 3
    bad = engine.transcribe_batch([prepared[0], DecodeRequest(np.zeros(0, np.int16), features=prepared[1].features[:40])])
    assert isinstance(bad.results[1], ValueError) and not isinstance(bad.results[0], Exception)


def test_features_of_a_growing_window_reuse_its_frames_and_are_the_same_bit_for_bit(engine, manifest):
    """A live window keeps its start and grows between decodes: the BufferManager computes only the frames new
    audio could change (MelFrames). Through growing windows, shorter ones at the same start (a pause window after an
    eager one), a start moved by a commit and windows under a frame, the features equal a whole computation."""
    from serve.core.audio import to_int16
    from serve.core.engine import Features, MelFrames

    features = Features(engine.facts)
    long_item = max((item for item in manifest if item.subset == "long"), key=lambda item: item.duration_s)
    audio = to_int16(load_audio(long_item.path)[: 16_000 * 60])
    rng = np.random.default_rng(15)
    reuse, start, end, reused = MelFrames(), 0, 8_000, 0
    for _ in range(80):
        roll = rng.random()
        if roll < 0.1:
            end = max(start + int(rng.integers(0, 400)), end - int(rng.integers(1, 16_000)))  # shorter, same start
        elif roll < 0.2:
            start = min(end, start + int(rng.integers(1, 5 * 16_000)))  # a commit moved the start
        else:
            end += int(rng.integers(1, 2 * 16_000))
        end = min(max(end, start), audio.size)
        window = audio[start:end]
        reused += reuse.start == start and reuse.power.shape[1] > 2
        got = features.request(DecodeRequest(window), reuse, start)
        if window.size < 160:
            assert got.features is None
            continue
        assert np.array_equal(got.features, features(window)), (start, end)
    assert reused >= 40, reused


def test_words_do_not_depend_on_what_a_window_is_batched_with(engine, manifest):
    """Windows up to min_input_s share a short encoder input, longer ones get Whisper's 30 s: a batch holding
    both makes one call per shape, and each item comes out as it does alone."""
    long_item = max((item for item in manifest if item.subset == "long"), key=lambda item: item.duration_s)
    window = load_audio(long_item.path)[: int((engine.options.min_input_s + 4) * 16_000)]
    short = [item for item in manifest if item.subset == "short"][:3]
    requests = [DecodeRequest(window)] + [DecodeRequest(load_audio(item.path)) for item in short]
    singles = [engine.transcribe(r) for r in requests]
    with counting(engine) as calls:
        batch = engine.transcribe_batch(requests)
    batched = batch.results
    # One call per shape into CTranslate2 itself: the three short windows share theirs.
    assert calls == {"encode": 2, "generate": 2, "align": 2}, calls
    assert batch.stats.engine_calls == 2 and batch.stats.size == 4
    for single, batch in zip(singles, batched):
        assert not isinstance(batch, Exception)
        assert _words(batch) == _words(single) and len(_words(batch)) >= 3
    # The long window really is heard to its end: its last word lies past the short input's 20 s.
    assert batched[0].words[-1].end > engine.options.min_input_s


def test_each_item_keeps_its_own_prompt(engine, by_id):
    audio = load_audio(by_id["ls-1089-134691-0000"].path)
    plain, prompted = engine.transcribe_batch(
        [DecodeRequest(audio), DecodeRequest(audio, prompt="For a full hour he had paced up and down.")]
    ).results
    assert _words(plain) == _words(engine.transcribe(DecodeRequest(audio)))
    assert _words(prompted) == _words(engine.transcribe(DecodeRequest(audio, prompt="For a full hour he had paced up and down.")))


def test_a_bad_item_fails_alone(engine, by_id):
    good = load_audio(by_id["jfk"].path)
    requests = [
        DecodeRequest(good),
        DecodeRequest(np.zeros(16_000 * 31, np.float32)),  # over Whisper's 30 s
        DecodeRequest(good, language="de"),  # tiny.en is English-only
        DecodeRequest(np.zeros(0, np.float32)),
    ]
    results = engine.transcribe_batch(requests).results
    assert "ask not what your country" in " ".join(_words(results[0]))
    assert isinstance(results[1], ValueError) and "30 s" in str(results[1])
    assert isinstance(results[2], ValueError) and "English-only" in str(results[2])
    assert not isinstance(results[3], Exception) and results[3].words == []


def test_word_times_are_inside_the_window_and_ordered(engine, by_id):
    audio = load_audio(by_id["jfk"].path)
    words = engine.transcribe(DecodeRequest(audio)).words
    assert words
    for a, b in zip(words, words[1:]):
        assert a.start <= a.end <= b.end
    assert words[-1].end <= audio.size / 16_000 + 1e-6


def test_silence_gives_no_words(engine):
    result = engine.transcribe(DecodeRequest(np.zeros(16_000 * 3, np.float32)))
    assert result.words == []


@pytest.mark.parametrize("item,start,seconds", [("music-vibe-ace", 8, 7), ("music-vibe-ace", 14, 10),
                                                 ("music-hungarian-dance-5", 18, 10)])
def test_music_the_model_hears_as_no_speech_gives_no_words(engine, by_id, item, start, seconds):
    """Music the VAD lets through decodes to a confident-sounding "Thank you." (no-speech probability 0.83-0.90,
    average log probability -0.93 to -0.99, just above Whisper's -1.0 cut). Such a window needs a confident decode:
    under overload the room benchmark put these words on a silent stream playing this music."""
    audio = load_audio(by_id[item].path)[start * 16_000 : (start + seconds) * 16_000]
    result = engine.transcribe(DecodeRequest(audio, language="en"))
    assert result.no_speech_prob > 0.8  # the model itself doubts there is speech
    assert result.words == [], " ".join(w.word for w in result.words)
    assert result.dropped == "silence"


def test_speech_the_model_doubts_most_still_gives_its_words(engine, by_id):
    """The eval set's speech decodes with a no-speech probability of at most 0.49 (every short and noisy clip,
    streamed in 1 s chunks); the strict cut for windows above 0.8 leaves such speech alone."""
    audio = load_audio(by_id["vosk-digits-test"].path)
    result = engine.transcribe(DecodeRequest(audio, language="en"))
    assert result.words and result.dropped is None
    assert result.no_speech_prob < engine.options.strict_no_speech_threshold


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_int16_and_float32_audio_agree(engine, by_id, dtype):
    audio = load_audio(by_id["ls-1089-134691-0000"].path)
    pcm = (audio * 32767).astype(np.int16) if dtype is np.int16 else audio
    assert "could wait no longer" in " ".join(_words(engine.transcribe(DecodeRequest(pcm))))


def test_a_batch_mixing_languages_and_tasks_gives_each_item_its_single_call(base_engine, foreign_speech, by_id):
    """Whisper base: one batch of German, French, Spanish and English windows, some named, some to detect, some to
    translate. Each item gets what it gets alone, and the batch costs one encode, one language detection (for the
    items that ask), one generate, and one align per start sequence (language and task): CTranslate2 aligns a batch
    under one, so that is the fewest there can be."""
    de, fr, es = (foreign_speech[code].pcm for code in ("de", "fr", "es"))
    requests = [
        DecodeRequest(de),  # detected, transcribed
        DecodeRequest(fr, language="fr", task="translate"),
        DecodeRequest(es, language="es"),
        DecodeRequest(es),  # detected: the same start sequence as the one before, so the same align
        DecodeRequest(load_audio(by_id["ls-1089-134691-0000"].path)),  # real English, detected
        DecodeRequest(de, task="translate"),  # detected, translated
    ]
    singles = [base_engine.transcribe(r) for r in requests]
    with counting(base_engine) as calls:
        batch = base_engine.transcribe_batch(requests)
    assert [s.language for s in singles] == ["de", "fr", "es", "es", "en", "de"]
    starts = {(s.language, r.task) for s, r in zip(singles, requests)}
    assert len(starts) == 5
    assert calls == {"encode": 1, "detect_language": 1, "generate": 1, "align": len(starts)}, calls
    assert batch.stats.engine_calls == 1 and batch.stats.size == len(requests)
    for single, batched in zip(singles, batch.results):
        assert not isinstance(batched, Exception)
        assert _words(batched) == _words(single) and len(_words(single)) >= 3
        assert batched.language == single.language
        assert batched.language_probability == pytest.approx(single.language_probability, abs=1e-4)
        assert [(w.start, w.end) for w in batched.words] == [(w.start, w.end) for w in single.words]
    texts = [" ".join(_words(result)) for result in batch.results]
    assert "guten morgen" in texts[0] and "good morning" in texts[5] and "coffee" in texts[1], texts  # translated, or not
    assert "could wait no longer" in texts[4]
