"""What a Whisper replica spends around the engine, per window, at batch 1, 16 and 64 (a benchmark).

    python -m serve.bench.host --sizes 1,16,64 --repeats 3 --out bench_results/host

Windows are real speech (the eval set's short clips, cycled; each with a prompt and, for half of them, a
committed prefix, as live windows have), their log-mel features computed beforehand as the BufferManager computes
them. Each batch goes through ``BatchedWhisper.transcribe_batch``, the call the replica makes; the engine's clock
(``BatchStats.engine_seconds``) times the CTranslate2 calls, and the rest of the call is the replica's host work:
checks, stacking, prompts, tokens to words. On a GPU the engine's calls are the device's work; on a CPU they are
the model's own CPU work. Writes ``host.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from serve.bench.eval_set import load_items
from serve.core.audio import load_audio
from serve.core.engine import BatchedWhisper, DecodeRequest, EngineOptions, Features


def windows(count: int, engine: BatchedWhisper) -> list[DecodeRequest]:
    clips = load_items(subsets=["short"])
    features = Features(engine.facts)
    requests = []
    for i in range(count):
        item = clips[i % len(clips)]
        words = item.text.lower().split()
        prefix = " ".join(words[:3]) if i % 2 else ""
        requests.append(features.request(DecodeRequest(load_audio(item.path), prompt="and then we", prefix=prefix)))
    return requests


def measure(engine: BatchedWhisper, size: int, repeats: int) -> dict[str, float]:
    requests = windows(size, engine)
    engine.transcribe_batch(requests[:1])  # warm
    host, total, device = [], [], []
    for _ in range(repeats):
        stats = engine.transcribe_batch(requests).stats
        host.append((stats.seconds - stats.engine_seconds) / size * 1e3)
        total.append(stats.seconds)
        device.append(stats.engine_seconds)
    return {
        "batch": size,
        "host_ms_per_window": round(statistics.median(host), 3),
        "host_ms_per_window_max": round(max(host), 3),
        "batch_seconds": round(statistics.median(total), 3),
        "engine_seconds": round(statistics.median(device), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.bench.host", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="bundled-tiny.en")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench_results/host"))
    args = parser.parse_args(argv)
    engine = BatchedWhisper(EngineOptions(model=args.model, device=args.device))
    rows = [measure(engine, int(n), args.repeats) for n in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {"model": engine.model_name, "device": engine.device, "compute_type": engine.compute_type, "rows": rows}
    (args.out / "host.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{engine.model_name} on {engine.device} ({engine.compute_type})")
    print("| batch | host ms per window (median, max) | batch s | in the engine s |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['host_ms_per_window']:.2f} ({r['host_ms_per_window_max']:.2f}) | "
              f"{r['batch_seconds']:.2f} | {r['engine_seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
