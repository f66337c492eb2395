"""Benchmark of the streaming core on this machine (no Ray): prints ratios, writes JSON.

    python -m serve.bench.core [--out bench_results/core.json] [--sizes 1,4,8,16]

1. Silero VAD cost per 32 ms frame: the bundled ONNX model on onnxruntime vs its
   TorchScript twin on CPU torch (why vad.py uses ONNX).
2. Real-time factor of one live stream (processing seconds / audio seconds).
3. Batched vs loop: N windows from N different clips decoded in ONE engine call vs
   N single calls, side by side, for each N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from serve.bench.eval_set import load_items
from serve.core.audio import SAMPLE_RATE, load_audio, to_int16
from serve.core.engine import BatchedWhisper, DecodeRequest
from serve.core.stream import StreamProcessor, StreamState
from serve.core.vad import CONTEXT, FRAME, SileroVad, VadState


def vad_costs(audio: np.ndarray) -> dict[str, float]:
    """Microseconds per 512-sample frame, ONNX vs TorchScript, same audio."""
    import torch
    from silero_vad import load_silero_vad

    frames = audio[: audio.size // FRAME * FRAME]
    n = frames.size // FRAME
    onnx = SileroVad()
    started = time.perf_counter()
    onnx.score(VadState(), frames)
    onnx_us = (time.perf_counter() - started) / n * 1e6
    jit = load_silero_vad(onnx=False)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            jit(torch.from_numpy(frames[i * FRAME : (i + 1) * FRAME]), SAMPLE_RATE)
    jit_us = (time.perf_counter() - started) / n * 1e6
    return {"onnx_us_per_frame": round(onnx_us, 1), "jit_us_per_frame": round(jit_us, 1), "frames": n, "context": CONTEXT}


def stream_rtf(engine: BatchedWhisper, audio: np.ndarray) -> dict[str, float]:
    processor = StreamProcessor(vad=SileroVad())
    state = StreamState()
    pcm = to_int16(audio)
    decodes = 0

    def decode(request: DecodeRequest):  # type: ignore[no-untyped-def]
        nonlocal decodes
        decodes += 1
        return engine.transcribe(request)

    started = time.perf_counter()
    for i in range(0, pcm.size, SAMPLE_RATE):
        processor.process(state, pcm[i : i + SAMPLE_RATE], decode)
    processor.close(state, decode)
    seconds = time.perf_counter() - started
    duration = pcm.size / SAMPLE_RATE
    return {"audio_s": round(duration, 2), "processing_s": round(seconds, 2), "rtf": round(seconds / duration, 3), "decodes": decodes}


def batched_vs_loop(engine: BatchedWhisper, clips: list[np.ndarray], sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        requests = [DecodeRequest(clips[i % len(clips)]) for i in range(n)]
        engine.transcribe_batch(requests[:1])  # warm
        loop_s = batch_s = float("inf")
        for _ in range(repeats):  # best of: the machine is shared
            started = time.perf_counter()
            for r in requests:
                engine.transcribe(r)
            loop_s = min(loop_s, time.perf_counter() - started)
            started = time.perf_counter()
            engine.transcribe_batch(requests)
            batch_s = min(batch_s, time.perf_counter() - started)
        rows.append({"n": n, "loop_s": round(loop_s, 3), "batched_s": round(batch_s, 3), "speedup": round(loop_s / batch_s, 2)})
        print(f"  N={n:3d}  loop {loop_s:7.3f} s   batched {batch_s:7.3f} s   batched/loop speed-up {loop_s / batch_s:5.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.bench.core", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench_results/core.json")
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model", default="bundled-tiny.en", help="engine.model: bundled-tiny.en, bundled-base, a directory")
    args = parser.parse_args(argv)

    from serve.core.engine import EngineOptions

    engine = BatchedWhisper(EngineOptions(device=args.device, model=args.model))
    clips = [load_audio(item.path) for item in load_items(subsets=["short"]) if 4 < item.duration_s < 15][:16]
    long_item = next(item for item in load_items(subsets=["long"]) if item.id == "ls-multispeaker-stream")
    long_audio = load_audio(long_item.path)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; model {engine.model_name} on {engine.device} ({engine.compute_type})")

    print("1. Silero VAD per 32 ms frame")
    vad = vad_costs(long_audio[: SAMPLE_RATE * 30])
    print(f"  onnxruntime {vad['onnx_us_per_frame']} µs   torchscript {vad['jit_us_per_frame']} µs   ratio {vad['jit_us_per_frame'] / vad['onnx_us_per_frame']:.2f}x")
    print(f"2. one live stream, {long_item.id} in 1 s chunks")
    rtf = stream_rtf(engine, long_audio)
    print(f"  {rtf['processing_s']} s for {rtf['audio_s']} s of audio: real-time factor {rtf['rtf']} ({rtf['decodes']} decodes)")
    print("3. batched vs loop (windows of different clips)")
    rows = batched_vs_loop(engine, clips, [int(s) for s in args.sizes.split(",")], args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "device": engine.device, "compute_type": engine.compute_type},
                               "vad": vad, "stream": rtf, "batched_vs_loop": rows}, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
