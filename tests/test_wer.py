"""Accuracy on real speech: streaming through the core vs the same model offline."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve.bench_metrics import normalize_text, pooled_wer
from serve.core.messages import Final
from serve.core.stream import StreamState
from serve.offline import OfflineTranscriber
from tests.conftest import pcm16


def stream_text(processor, engine, path) -> str:
    pcm = pcm16(path)
    state, messages = StreamState(), []
    for i in range(0, pcm.size, 16_000):
        messages += processor.process(state, pcm[i : i + 16_000], engine.transcribe)
    messages += processor.close(state, engine.transcribe)
    return " ".join(m.text for m in messages if isinstance(m, Final))


@pytest.fixture(scope="module")
def stream_texts(vad):
    """Streams files in parallel, one single-threaded engine per core: 1.5x the throughput of one
    two-threaded engine on two cores (a CPU gains nothing from batching, see the README)."""
    from serve.core.engine import BatchedWhisper, EngineOptions
    from serve.core.stream import StreamProcessor

    workers = max(1, min(4, os.cpu_count() or 1))
    engines = [BatchedWhisper(EngineOptions(cpu_threads=1)) for _ in range(workers)]
    free, lock = list(engines), threading.Lock()

    def one(path) -> str:  # type: ignore[no-untyped-def]
        with lock:
            engine = free.pop()
        try:
            return stream_text(StreamProcessor(vad=vad), engine, path)
        finally:
            with lock:
                free.append(engine)

    def run(paths) -> list[str]:  # type: ignore[no-untyped-def]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, paths))

    return run


@pytest.mark.parametrize("subset", ["short", "long"])
def test_streaming_wer_is_within_ten_percent_of_offline(stream_texts, manifest, subset):
    items = [item for item in manifest if item.subset == subset]
    offline = OfflineTranscriber()
    # Longest first, so that no file is left to run alone at the end.
    by_length = sorted(items, key=lambda item: -item.duration_s)
    texts = dict(zip((item.id for item in by_length), stream_texts([item.path for item in by_length])))
    streamed = [(item.text, texts[item.id]) for item in items]
    reference = [(item.text, offline.transcribe(item.path)) for item in items]
    streamed_wer, offline_wer = pooled_wer(streamed), pooled_wer(reference)
    print(f"{subset}: {len(items)} files, streaming WER {streamed_wer:.4f}, offline WER {offline_wer:.4f}, "
          f"ratio {streamed_wer / offline_wer:.3f}")
    assert streamed_wer <= 1.10 * offline_wer


def test_nonspeech_yields_at_most_two_words(processor, engine, manifest):
    items = [item for item in manifest if item.subset == "nonspeech"]
    assert len(items) >= 10
    texts = {item.id: stream_text(processor, engine, item.path) for item in items}
    words = sum(len(normalize_text(t).split()) for t in texts.values())
    print(f"nonspeech: {words} words over {len(items)} files: {texts}")
    assert words <= 2, texts
