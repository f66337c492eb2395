"""The streaming policy alone, variants side by side: errors against offline and word final lag, in-process.

Each variant of ``StreamingOptions`` streams the eval set's short and long files through ``StreamProcessor`` in
1 s chunks with an engine that is always idle (every chunk decoded, as ``tests/core/test_wer.py`` does), files
in parallel, one single-threaded engine per core. A word's final lag is the end of the chunk whose call made it
final minus the word's end: the policy's own delay, decode time not counted. Writes one JSON file.

    python -m serve.bench.policy --variant before:agree_window_s=0 --variant now: [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from serve.bench.eval_set import EvalItem, load_items
from serve.bench.offline import OfflineTranscriber
from serve.bench.scoring import percentile, pooled_wer, word_errors
from serve.core.audio import load_audio, to_int16
from serve.core.engine import BatchedWhisper, EngineOptions
from serve.core.messages import Final
from serve.core.stream import StreamingOptions, StreamProcessor, StreamState
from serve.core.vad import SileroVad

CHUNK = 16_000
T, R = TypeVar("T"), TypeVar("R")


def parse_variant(spec: str) -> tuple[str, StreamingOptions]:
    """``LABEL:key=value,key=value`` (values are JSON) → the label and its options."""
    label, _, rest = spec.partition(":")
    updates: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        updates[key.strip()] = json.loads(value)
    return label, StreamingOptions(**updates)


def chunked_finals(processor: StreamProcessor, engine: BatchedWhisper, pcm: np.ndarray) -> list[tuple[Final, float]]:
    """The finals of 16 kHz int16 ``pcm`` streamed in 1 s chunks and closed, each with the end (s) of the chunk whose
    call made it final. ``tests/core/test_wer.py`` streams its files with this too."""
    state, finals = StreamState(), []
    for i in range(0, pcm.size + CHUNK, CHUNK):
        last = i >= pcm.size
        messages = processor.close(state, engine.transcribe) if last else processor.process(
            state, pcm[i : i + CHUNK], engine.transcribe
        )
        now = min(i + CHUNK, pcm.size) / 16_000
        finals.extend((m, now) for m in messages if isinstance(m, Final))
        if last:
            return finals
    raise AssertionError("unreachable: the last chunk closes the stream")


class EnginePool:
    """One single-threaded engine per core (up to 4), each lent to one file at a time: on few cores, 1.5x the
    throughput of one multi-threaded engine (a CPU gains nothing from batching, see the README)."""

    def __init__(self) -> None:
        self._free = [BatchedWhisper(EngineOptions(cpu_threads=1)) for _ in range(max(1, min(4, os.cpu_count() or 1)))]
        self._workers = len(self._free)
        self._lock = threading.Lock()

    def map(self, work: Callable[[BatchedWhisper, T], R], items: Sequence[T]) -> list[R]:
        """``work(engine, item)`` for every item, in parallel, in order."""

        def one(item: T) -> R:
            with self._lock:
                engine = self._free.pop()
            try:
                return work(engine, item)
            finally:
                with self._lock:
                    self._free.append(engine)

        with ThreadPoolExecutor(self._workers) as pool:
            return list(pool.map(one, items))


def run_variant(options: StreamingOptions, items: list[EvalItem], vad: SileroVad, engines: EnginePool) -> dict[str, tuple[str, list[float]]]:
    """Each file's final text and its words' final lags."""

    def stream(engine: BatchedWhisper, item: EvalItem) -> tuple[str, list[float]]:
        finals = chunked_finals(StreamProcessor(options, vad=vad), engine, to_int16(load_audio(item.path)))
        return " ".join(f.text for f, _ in finals), [now - w.end for f, now in finals for w in f.words]

    longest_first = sorted(items, key=lambda item: -item.duration_s)
    return dict(zip((item.id for item in longest_first), engines.map(stream, longest_first)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.bench.policy", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="LABEL:key=value,... (StreamingOptions)")
    parser.add_argument("--subsets", default="short,long")
    parser.add_argument("--out", default="bench_results/policy.json")
    args = parser.parse_args(argv)
    variants = [parse_variant(spec) for spec in args.variant]
    items = load_items(subsets=args.subsets.split(","))
    offline_texts = OfflineTranscriber().transcribe_all([item.path for item in items])
    vad = SileroVad()
    engines = EnginePool()
    offline_errors = {i.id: word_errors(i.text, offline_texts[i.path]).errors for i in items}
    results: dict[str, Any] = {"subsets": args.subsets, "files": len(items), "variants": {}}
    for label, options in variants:
        started = time.monotonic()
        streamed = run_variant(options, items, vad, engines)
        lags = [lag for _, file_lags in streamed.values() for lag in file_lags]
        row: dict[str, Any] = {"options": options.model_dump(exclude_defaults=True), "seconds": time.monotonic() - started}
        for subset in [*args.subsets.split(","), "+".join(args.subsets.split(","))]:
            ids = [i for i in items if i.subset in subset.split("+")]
            streaming = pooled_wer((i.text, streamed[i.id][0]) for i in ids)
            offline = pooled_wer((i.text, offline_texts[i.path]) for i in ids)
            row[subset] = {
                "errors": sum(word_errors(i.text, streamed[i.id][0]).errors for i in ids),
                "offline_errors": sum(offline_errors[i.id] for i in ids),
                "wer": streaming, "offline_wer": offline, "ratio": streaming / offline if offline else None,
            }
        row["word_final_lag_p50_s"], row["word_final_lag_p95_s"] = percentile(lags, 50), percentile(lags, 95)
        for subset in args.subsets.split(","):
            subset_lags = [lag for i in items if i.subset == subset for lag in streamed[i.id][1]]
            row[subset]["word_final_lag_p50_s"] = percentile(subset_lags, 50)
            row[subset]["word_final_lag_p95_s"] = percentile(subset_lags, 95)
        row["per_file_errors"] = {i.id: word_errors(i.text, streamed[i.id][0]).errors for i in items}
        results["variants"][label] = row
        pooled = row["+".join(args.subsets.split(","))]
        print(f"{label}: {pooled['errors']} errors vs {pooled['offline_errors']} offline (ratio {pooled['ratio']:.3f}); "
              + ", ".join(f"{s} {row[s]['ratio']:.3f}" for s in args.subsets.split(","))
              + f"; word final lag p50 {row['word_final_lag_p50_s']:.2f} s, p95 {row['word_final_lag_p95_s']:.2f} s ("
              + ", ".join(f"{s} {row[s]['word_final_lag_p50_s']:.2f} / {row[s]['word_final_lag_p95_s']:.2f} s"
                          for s in args.subsets.split(","))
              + ")"
              + f" ({row['seconds']:.0f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
