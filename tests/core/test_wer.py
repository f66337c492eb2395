"""Accuracy on real speech: streaming through the core vs the same model offline."""

import os
import random

import numpy as np
import pytest

from serve.bench.offline import OfflineTranscriber
from serve.bench.policy import EnginePool, chunked_finals
from serve.bench.scoring import normalize_text, pooled_wer
from serve.core.messages import Final
from serve.core.stream import StreamState
from tests.conftest import pcm16


def stream_finals(processor, engine, path, seed: int | None = None) -> list[Final]:
    """The file's finals, streamed in 1 s chunks and closed; with ``seed``, followed by 1.5 s of silence and sent
    in calls of random length (1-6 s) as the Ingress makes them under load, the last one bringing the rest and
    the client's stop together."""
    pcm = pcm16(path)
    if seed is None:
        return [final for final, _ in chunked_finals(processor, engine, pcm)]
    # The speaker stops, the microphone runs on a moment before the client's stop.
    pcm = np.concatenate([pcm, np.zeros(24_000, np.int16)])
    state, messages = StreamState(), []
    rng, i = random.Random(f"{seed}:{path.name}"), 0
    while True:
        size = rng.randint(16_000, 6 * 16_000)
        last = i + size >= pcm.size
        messages += processor.run(state, pcm[i : i + size], engine.transcribe, finalize=last)
        if last:
            break
        i += size
    return [m for m in messages if isinstance(m, Final)]


def stream_text(processor, engine, path) -> str:
    return " ".join(m.text for m in stream_finals(processor, engine, path))


@pytest.fixture(scope="module")
def stream_texts(vad):
    """Streams files in parallel, one single-threaded engine per core (``EnginePool``). The defaults, eager
    decodes included: in-process the decoder is always idle, so the live window is decoded at every chunk and
    agreement compares decodes a second apart, the soonest commits the service makes."""
    from serve.core.stream import StreamingOptions, StreamProcessor

    engines = EnginePool()

    def run(paths, seed: int | None = None) -> list[list[Final]]:  # type: ignore[no-untyped-def]
        return engines.map(lambda engine, path: stream_finals(StreamProcessor(StreamingOptions(), vad=vad), engine, path, seed), paths)

    return run


@pytest.fixture(scope="module")
def offline_texts(manifest):
    items = [item for item in manifest if item.subset in ("short", "long")]
    texts = OfflineTranscriber().transcribe_all([item.path for item in items])
    return {item.id: texts[item.path] for item in items}


SUBSET_RATIO = 1.25
"""Each subset alone may be this much worse than offline: on one subset a few errors are the noise between runs of
nearly equal policies (README: measured results); the pooled transcript must stay within 1.10x."""


def test_streaming_wer_is_within_ten_percent_of_offline(stream_texts, offline_texts, manifest):
    """Pooled over the short and long subsets (every word of both), streaming within 1.10x offline; each subset
    within SUBSET_RATIO."""
    items = [item for item in manifest if item.subset in ("short", "long")]
    # Longest first, so that no file is left to run alone at the end.
    by_length = sorted(items, key=lambda item: -item.duration_s)
    finals = dict(zip((item.id for item in by_length), stream_texts([item.path for item in by_length])))
    streamed = {item.id: (item.text, " ".join(f.text for f in finals[item.id])) for item in items}
    reference = {item.id: (item.text, offline_texts[item.id]) for item in items}
    ratios = {}
    for subset in ("short", "long", "short+long"):
        ids = [item.id for item in items if item.subset in subset.split("+")]
        streamed_wer, offline_wer = pooled_wer(streamed[i] for i in ids), pooled_wer(reference[i] for i in ids)
        ratios[subset] = streamed_wer / offline_wer
        print(f"{subset}: {len(ids)} files, streaming WER {streamed_wer:.4f}, offline WER {offline_wer:.4f}, "
              f"ratio {ratios[subset]:.3f}")
    assert ratios["short+long"] <= 1.10, ratios
    assert ratios["short"] <= SUBSET_RATIO and ratios["long"] <= SUBSET_RATIO, ratios


def test_nonspeech_yields_at_most_two_words(processor, engine, manifest):
    items = [item for item in manifest if item.subset == "nonspeech"]
    assert len(items) >= 10
    texts = {item.id: stream_text(processor, engine, item.path) for item in items}
    words = sum(len(normalize_text(t).split()) for t in texts.values())
    print(f"nonspeech: {words} words over {len(items)} files: {texts}")
    assert words <= 2, texts


def repeated_runs(finals: list[Final], reference: str, n: int = 5, within_s: float = 60.0) -> list[str]:
    """Finals that repeat ``n`` or more consecutive words of the finals of the ``within_s`` before them, where the
    reference does not say those words twice ("he could wait no longer" ends two sentences of one file)."""
    said = normalize_text(reference).split()
    twice = {g for g in (tuple(said[i : i + n]) for i in range(len(said) - n + 1)) if _count(said, g) > 1}
    found: list[str] = []
    for k, final in enumerate(finals):
        before = [normalize_text(f.text).split() for f in finals[:k] if f.end >= final.start - within_s]
        flat = [w for words in before for w in words]
        grams = {tuple(flat[i : i + n]) for i in range(len(flat) - n + 1)} - twice
        mine = normalize_text(final.text).split()
        if any(tuple(mine[i : i + n]) in grams for i in range(len(mine) - n + 1)):
            found.append(f"{final.start:.2f}-{final.end:.2f} {final.text}")
    return found


def _count(words: list[str], gram: tuple[str, ...]) -> int:
    return sum(tuple(words[i : i + len(gram)]) == gram for i in range(len(words) - len(gram) + 1))


def test_calls_of_any_size_ending_with_stop_invent_nothing(stream_texts, offline_texts, manifest):
    """The long subset in calls of random length (1-6 s: what the Ingress merges while a call is in flight),
    the last with the client's stop: no final of zero duration, none repeating 5+ words of the minute before
    it (the sentence once invented at a stream's end), and WER within 1.10x offline. ASR_SEED picks the draw."""
    seed = int(os.environ.get("ASR_SEED", "20261201"))
    items = sorted((item for item in manifest if item.subset == "long"), key=lambda item: -item.duration_s)
    runs = dict(zip((item.id for item in items), stream_texts([item.path for item in items], seed=seed)))
    empty = {i: [f"{f.start}-{f.end} {f.text}" for f in finals if f.end <= f.start] for i, finals in runs.items()}
    repeated = {item.id: repeated_runs(runs[item.id], item.text) for item in items}
    streamed = pooled_wer([(item.text, " ".join(f.text for f in runs[item.id])) for item in items])
    offline = pooled_wer([(item.text, offline_texts[item.id]) for item in items])
    print(f"seed {seed}: long, random calls, streaming WER {streamed:.4f}, offline WER {offline:.4f}")
    assert not any(empty.values()), empty
    assert not any(repeated.values()), repeated
    assert streamed <= 1.10 * offline
