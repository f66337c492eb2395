"""Room benchmark: a meeting where most people are quiet. What do the quiet streams cost, and do they hurt the talkers?

    python -m serve.bench.room --url ws://127.0.0.1:8000/v1/listen --server-pid PID \\
        --speakers 6 --silent 94 --duration 60 --out bench_results/room [--label before]

``--speakers`` streams play real speech: each a sequence of different ``short`` clips of the eval set (its own
order, seeded), 1.5 s of digital silence between clips, until ``--duration`` is filled (the clip that would
overflow is dropped, the rest is silence); its reference is the clips' texts joined. ``--silent`` streams play the
eval set's ``nonspeech`` items (silence, noise, hum, music, nature), cycled, each looped or cropped to
``--duration``. Every stream goes through ``serve.client.stream_file`` as ``serve.bench`` plays them: real time,
1 s chunks of s16le sent as a microphone sends them, ``interim_results=true``, starts staggered over ``--stagger``.

Two phases against the same running service, one after the other (``--phases``):

1. ``alone``: the speakers only;
2. ``room``: the same speakers (same programs, same start offsets) plus the silent streams.

Before each phase the service's process tree is watched at rest for ``--rest`` s. Per phase it reports the speakers'
pooled WER and per-word final lag (``serve.bench.scoring``), the words the silent streams produced (goal: none in
finals), CPU per process role (``serve.bench.cpu``: Ingress, BufferManager, Whisper, the proxy, Ray's daemons...)
raw and less its rate at rest, per stream-second of audio sent; bytes through Ray per stream-second from
``/metrics/summary``'s ``payload_bytes`` counters (n/a where the service has none) and Whisper's batches. The silent
streams' cost is the room phase's less the alone phase's, per silent stream-second.

All streams come from this one address: the service must allow that many (``limits.max_streams_per_client: 0``, or
API keys, since the cap holds with auth off; ``limits.max_streams`` per Ingress replica). Writes ``room.json`` and
``room.md`` under ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve.bench import scoring
from serve.bench.cpu import MODEL_ROLE, ROLES, CpuSampler, CpuUsage, RoleCpu
from serve.bench.eval_set import EvalItem, eval_dir, load_items
from serve.bench.load import Options, Progress, StreamRecord, add_stream_arguments, play_stream, read_pcm16
from serve.bench.rest import fetch_json, fetch_summary, http_base
from serve.bench.results import StreamResult, analyze_stream, server_figures
from serve.core.audio import SAMPLE_RATE

GAP_S = 1.5
"""Digital silence between two clips of a speaker."""

PHASES = ("alone", "room")

# -- programs: what each stream plays --------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One clip of a program, where it lies on the stream's timeline (seconds)."""

    item_id: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Program:
    """What one stream plays: ``duration_s`` of audio made of ``segments`` (silence elsewhere) and its reference."""

    name: str
    kind: str
    """``speaker`` or ``silent``."""
    duration_s: float
    segments: tuple[Segment, ...]
    reference: str
    source: str = ""
    """A silent stream's nonspeech item id."""


def _samples(item: EvalItem) -> int:
    return round(item.duration_s * SAMPLE_RATE)


def speaker_order(clips: Sequence[EvalItem], index: int, seed: int, speakers: int) -> list[EvalItem]:
    """Speaker ``index``'s clip order (of ``speakers``): one shuffle of ``clips`` (seeded), started at the speaker's
    own place, evenly spaced, so speakers open with different clips and, while they need few enough, say different
    ones. With more speakers than clips, each further round of speakers takes a new shuffle."""
    count = len(clips)
    round_, place = divmod(index, count) if speakers > count else (0, index * count // speakers)
    deck = list(clips)
    random.Random(f"room:{seed}" if round_ == 0 else f"room:{seed}:{round_}").shuffle(deck)
    return deck[place:] + deck[:place]


def speaker_program(
    clips: Sequence[EvalItem],
    index: int,
    duration_s: float,
    seed: int,
    speakers: int = 1,
    gap_s: float = GAP_S,
    length: Callable[[EvalItem], int] = _samples,
) -> Program:
    """Clips in ``speaker_order``, ``gap_s`` of silence between two, while they fit in ``duration_s``.

    The first clip that would overflow ends the program (silence fills the rest); while none fits yet, a clip too long
    is skipped. ``length`` gives a clip's samples (the audio's own length when it is loaded; the manifest's
    ``duration_s`` by default). Times are on the sample grid."""
    total, gap = round(duration_s * SAMPLE_RATE), round(gap_s * SAMPLE_RATE)
    segments, texts, at = [], [], 0
    for clip in speaker_order(clips, index, seed, max(speakers, index + 1)):
        start = at + (gap if segments else 0)
        end = start + length(clip)
        if end > total:
            if segments:
                break
            continue
        segments.append(Segment(clip.id, start / SAMPLE_RATE, end / SAMPLE_RATE))
        texts.append(clip.text.strip())
        at = end
    return Program(f"speaker-{index}", "speaker", total / SAMPLE_RATE, tuple(segments), " ".join(t for t in texts if t))


def speaker_programs(
    clips: Sequence[EvalItem], n: int, duration_s: float, seed: int, length: Callable[[EvalItem], int] = _samples
) -> list[Program]:
    return [speaker_program(clips, i, duration_s, seed, n, length=length) for i in range(n)]


def silent_programs(items: Sequence[EvalItem], n: int, duration_s: float) -> list[Program]:
    """Silent stream ``j`` plays nonspeech item ``j mod len(items)`` (manifest order), looped or cropped."""
    if n and not items:
        raise ValueError("no nonspeech items for the silent streams")
    seconds = round(duration_s * SAMPLE_RATE) / SAMPLE_RATE
    return [
        Program(f"silent-{j}", "silent", seconds, (Segment(items[j % len(items)].id, 0.0, seconds),), "",
                items[j % len(items)].id)
        for j in range(n)
    ]


def looped(audio: np.ndarray, duration_s: float) -> np.ndarray:
    """``audio`` repeated from its start as often as needed, cut at ``duration_s`` (samples at 16 kHz)."""
    total = round(duration_s * SAMPLE_RATE)
    if audio.size == 0:
        return np.zeros(total, dtype=audio.dtype)
    return np.resize(audio, total)


def program_audio(program: Program, audio: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stream's int16 samples: a speaker's clips at their places in silence, a silent stream's item looped."""
    total = round(program.duration_s * SAMPLE_RATE)
    if program.kind == "silent":
        return looped(audio[program.source], program.duration_s).astype(np.int16)
    out = np.zeros(total, dtype=np.int16)
    for segment in program.segments:
        start = round(segment.start_s * SAMPLE_RATE)
        clip = audio[segment.item_id][: round(segment.end_s * SAMPLE_RATE) - start]
        out[start : start + clip.size] = clip
    return out


def start_offsets(n: int, stagger_s: float, seed: int, kind: str) -> list[float]:
    """Start offsets in [0, stagger_s): the same for the speakers in both phases."""
    rng = random.Random(f"room-offsets:{kind}:{seed}")
    return [rng.uniform(0, stagger_s) for _ in range(n)]


# -- per stream-second arithmetic -------------------------------------------------------------------------


def rest_corrected(raw: RoleCpu, rest: RoleCpu | None) -> dict[str, float]:
    """Per role, CPU-seconds of a phase less that role's rate at rest times the phase's wall time."""
    rates = rest.rates() if rest else {}
    return {role: raw.seconds.get(role, 0.0) - rates.get(role, 0.0) * raw.wall_s for role in {*raw.seconds, *rates}}


def with_totals(cpu: Mapping[str, float]) -> dict[str, float]:
    """``cpu`` with ``non-model`` (every role but Whisper) and ``total`` added."""
    return {
        **cpu,
        "non-model": sum(v for role, v in cpu.items() if role != MODEL_ROLE),
        "total": sum(cpu.values()),
    }


def ms_per_stream_second(cpu_s: Mapping[str, float], stream_s: float) -> dict[str, float] | None:
    """CPU-seconds as milliseconds of CPU per second of audio streamed; None without audio."""
    if stream_s <= 0:
        return None
    return {role: 1000.0 * seconds / stream_s for role, seconds in cpu_s.items()}


def marginal_per_stream_second(
    room: Mapping[str, float], alone: Mapping[str, float], stream_s: float, scale: float = 1000.0
) -> dict[str, float] | None:
    """(room - alone) / stream_s, per key (a key missing on one side counts 0), times ``scale``; None without audio."""
    if stream_s <= 0:
        return None
    return {key: scale * (room.get(key, 0.0) - alone.get(key, 0.0)) / stream_s for key in {*room, *alone}}


PAYLOAD_KEYS = {
    "ingress": ("to_buffer_manager", "from_buffer_manager", "calls"),
    "whisper": ("from_buffer_manager", "to_buffer_manager", "requests"),
}


def payload_counters(summary: Mapping[str, Any] | None) -> dict[str, float] | None:
    """``/metrics/summary``'s cumulative ``payload_bytes`` counters as ``{"ingress.calls": ..., ...}``; None if absent.

    Read where each deployment nests them (``flat_summary`` would let the Ingress's hide the Whisper's)."""
    out: dict[str, float] = {}
    for deployment, keys in PAYLOAD_KEYS.items():
        counters = ((summary or {}).get(deployment) or {}).get("payload_bytes")
        if isinstance(counters, dict):
            for key in keys:
                if (value := scoring.as_number(counters.get(key))) is not None:
                    out[f"{deployment}.{key}"] = value
    return out or None


def counters_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Growth of each cumulative counter of ``after`` since ``before`` (``scoring.counter_delta``: a counter that went
    down means a restart, and counts from 0); None when ``after`` has none."""
    if not after:
        return None
    out = {}
    for key, value in after.items():
        if (number := scoring.as_number(value)) is not None:
            out[key] = scoring.counter_delta((before or {}).get(key), number)
    return out


def payload_figures(delta: Mapping[str, float] | None, stream_s: float) -> dict[str, float] | None:
    """Bytes through Ray per stream-second, per counter, and kB (1000 B) per call of each route."""
    if not delta or stream_s <= 0:
        return None
    out = {f"{key} B/stream-s": value / stream_s for key, value in delta.items() if not key.endswith(("calls", "requests"))}
    calls, requests = delta.get("ingress.calls"), delta.get("whisper.requests")
    for key in ("ingress.to_buffer_manager", "ingress.from_buffer_manager"):
        if calls and key in delta:
            out[f"{key} kB/call"] = delta[key] / calls / 1000
    for key in ("whisper.from_buffer_manager", "whisper.to_buffer_manager"):
        if requests and key in delta:
            out[f"{key} kB/request"] = delta[key] / requests / 1000
    for key in ("ingress.calls", "whisper.requests"):
        if key in delta:
            out[f"{key}/stream-s"] = delta[key] / stream_s
    return out


def kinds_delta(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, key: str) -> dict[str, float] | None:
    """Growth of a Whisper counter kept per kind (``decodes_by_kind``, ``shed_by_kind``); None where absent."""
    later = ((after or {}).get("whisper") or {}).get(key)
    if not isinstance(later, dict):
        return None
    earlier = ((before or {}).get("whisper") or {}).get(key)
    earlier = earlier if isinstance(earlier, dict) else {}
    if any(isinstance(v, int | float) and later.get(k, 0) < v for k, v in earlier.items()):
        earlier = {}  # a restart
    return {k: v - earlier.get(k, 0) for k, v in later.items() if isinstance(v, int | float)}


def sizes_delta(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, deployment: str, key: str
) -> dict[int, int] | None:
    """Growth of a histogram by size that ``deployment`` keeps in the summary (the Ingress's ``shared_trips``, the
    BufferManager's ``vad_batches``); None where absent."""
    def read(summary: Mapping[str, Any] | None) -> object:
        return ((summary or {}).get(deployment) or {}).get(key)

    return scoring.histogram_delta(read(before), read(after))


# -- running a phase -----------------------------------------------------------------------------------


@dataclass
class PhaseRecord:
    """One phase as it ran: every stream with its program, the service's readings around it and its CPU."""

    name: str
    streams: list[tuple[Program, StreamRecord]]
    wall_s: float
    summary_before: dict[str, Any] | None
    summary_after: dict[str, Any] | None
    cpu: RoleCpu | None
    rest: RoleCpu | None
    cpu_usage: CpuUsage | None
    titles: dict[str, list[str]]
    client_cpu_s: float = 0.0
    """CPU this bench process used while the phase played (it shares the machine when the service is local)."""


def _item(program: Program, paths: Mapping[str, Path]) -> EvalItem:
    """A program as the bench's stream analysis takes it (its reference is the program's)."""
    return EvalItem(program.name, paths.get(program.source, Path(program.name)), program.reference, program.kind,
                    program.duration_s)


async def measure_rest(server_pid: int | None, seconds: float) -> RoleCpu | None:
    if not server_pid or seconds <= 0:
        return None
    sampler = CpuSampler(server_pid)
    sampler.start()
    await asyncio.sleep(seconds)
    return sampler.stop()


async def run_phase(
    name: str,
    url: str,
    http_url: str,
    programs: Sequence[tuple[Program, float, np.ndarray]],
    paths: Mapping[str, Path],
    options: Options,
    server_pid: int | None,
    rest_s: float,
) -> PhaseRecord:
    """Each (program, start offset, samples) as one stream; CPU at rest first, then while they play."""
    rest = await measure_rest(server_pid, rest_s)
    records = [(program, StreamRecord(_item(program, paths), offset)) for program, offset, _ in programs]
    progress = Progress(name, len(programs), sum(p.duration_s for p, _, _ in programs))
    before = await fetch_summary(http_url, options.token)
    sampler = CpuSampler(server_pid) if server_pid else None
    if sampler:
        sampler.start()
    began, client_began = time.monotonic(), time.process_time()
    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(progress.run())
        cpu_task = group.create_task(sampler.run()) if sampler else None
        await asyncio.gather(
            *(play_stream(url, record, samples, options, progress)
              for (_, record), (_, _, samples) in zip(records, programs, strict=True))
        )
        ticker.cancel()
        if cpu_task:
            cpu_task.cancel()
    wall, client_cpu = time.monotonic() - began, time.process_time() - client_began
    cpu = sampler.stop() if sampler else None
    progress.render(final=True)
    after = await fetch_summary(http_url, options.token)
    titles = {role: sorted(t) for role, t in sampler.titles.items()} if sampler else {}
    return PhaseRecord(
        name, records, wall, before, after, cpu, rest, sampler.usage() if sampler else None, titles, client_cpu
    )


# -- analysis ------------------------------------------------------------------------------------------


def clean(result: StreamResult) -> bool:
    """Ended as it should: an ``end`` came and the server closed with 1000."""
    return result.end_duration_s is not None and result.close_code == 1000 and not result.errors


def _summary(values: Sequence[float]) -> dict[str, Any]:
    return asdict(scoring.summarize(values))


def _words(text: str) -> int:
    return len(scoring.normalize_text(text).split())


def analyze_phase(phase: PhaseRecord, speed: float = 1.0) -> dict[str, Any]:
    """A phase's figures (the CPU and bytes per stream-second are added by ``compare``)."""
    speakers: list[tuple[Program, StreamResult, StreamRecord]] = []
    silent: list[tuple[Program, StreamResult, StreamRecord]] = []
    for program, record in phase.streams:
        (speakers if program.kind == "speaker" else silent).append(
            (program, analyze_stream(record, None, speed), record)
        )
    errors = sum((r.word_errors for _, r, _ in speakers), scoring.NO_ERRORS)
    word_lags = [lag for _, r, _ in speakers for lag in r.word_final_lags]
    seen_lags = [lag for _, r, _ in speakers for lag in r.word_seen_lags]
    final_lags = [p.lag for _, r, _ in speakers for p in r.final_lags]
    unclean = [
        {"stream": r.id, "errors": r.errors, "close_code": r.close_code, "end": r.end_duration_s is not None}
        for _, r, _ in speakers + silent if not clean(r)
    ]
    by_source: dict[str, dict[str, Any]] = {}
    silent_streams = []
    for program, result, record in silent:
        partial_texts = [m["text"] for m in record.transcript.messages if m["type"] == "partial" and m.get("text")]
        final_words = _words(result.hypothesis)
        partial_words = sum(_words(t) for t in partial_texts)
        row = by_source.setdefault(
            program.source, {"streams": 0, "final_words": 0, "partial_words": 0, "partials_with_text": 0,
                             "finals": [], "partials": []}
        )
        row["streams"] += 1
        row["final_words"] += final_words
        row["partial_words"] += partial_words
        row["partials_with_text"] += sum(1 for t in partial_texts if _words(t))
        row["finals"] = (row["finals"] + [m["text"] for m in record.transcript.finals if m.get("text", "").strip()])[:10]
        row["partials"] = (row["partials"] + [t for t in partial_texts if t.strip()])[:10]
        silent_streams.append(_stream_json(program, result))
    speaking_s = sum(r.transcript.sent_s for p, r in phase.streams if p.kind == "speaker")
    silent_s = sum(r.transcript.sent_s for p, r in phase.streams if p.kind == "silent")
    whisper = server_figures(phase.summary_before, phase.summary_after).to_json()
    for key in ("summary_before", "summary_after", "cpu"):
        whisper.pop(key, None)
    for key in ("decodes_by_kind", "shed_by_kind"):
        if (delta := kinds_delta(phase.summary_before, phase.summary_after, key)) is not None:
            whisper[key] = delta
    return {
        "phase": phase.name,
        "wall_s": round(phase.wall_s, 3),
        "client_cpu_s": round(phase.client_cpu_s, 3),
        "client_max_send_late_s": max((r.max_send_late_s for _, r, _ in speakers + silent), default=0.0),
        "streams": {"speakers": len(speakers), "silent": len(silent)},
        "stream_seconds": {"speakers": round(speaking_s, 3), "silent": round(silent_s, 3)},
        "speakers": {
            "wer": errors.wer if speakers else None,
            "word_errors": asdict(errors),
            "word_final_lag": _summary(word_lags),
            "word_seen_lag": _summary(seen_lags),
            "final_lag": _summary(final_lags),
            "kept_up": sum(r.kept_up for _, r, _ in speakers),
            "clean": sum(clean(r) for _, r, _ in speakers),
            "max_send_late_s": max((r.max_send_late_s for _, r, _ in speakers), default=0.0),
        },
        "silent": {
            "final_words": sum(row["final_words"] for row in by_source.values()),
            "partial_words": sum(row["partial_words"] for row in by_source.values()),
            "partials_with_text": sum(row["partials_with_text"] for row in by_source.values()),
            "clean": sum(clean(r) for _, r, _ in silent),
            "by_item": by_source,
        },
        "all_clean": not unclean,
        "unclean": unclean,
        "whisper": whisper,
        "batched_calls": {
            key: sizes_delta(phase.summary_before, phase.summary_after, deployment, key)
            for deployment, key in (("ingress", "shared_trips"), ("buffer_manager", "vad_batches"))
        },
        "payload_delta": counters_delta(payload_counters(phase.summary_before), payload_counters(phase.summary_after)),
        "cpu": None if phase.cpu is None else {
            "wall_s": round(phase.cpu.wall_s, 3),
            "raw_s": phase.cpu.seconds,
            "rest_rate": phase.rest.rates() if phase.rest else None,
            "rest_wall_s": round(phase.rest.wall_s, 3) if phase.rest else None,
            "corrected_s": rest_corrected(phase.cpu, phase.rest),
            "tree_percent": asdict(phase.cpu_usage) if phase.cpu_usage else None,
        },
        "process_titles": phase.titles,
        "server_summary": {"before": phase.summary_before, "after": phase.summary_after},
        "per_stream": [_stream_json(p, r) for p, r, _ in speakers] + silent_streams,
    }


def _stream_json(program: Program, result: StreamResult) -> dict[str, Any]:
    out = {
        "stream": program.name,
        "kind": program.kind,
        "clips": [s.item_id for s in program.segments],
        "offset_s": result.offset_s,
        "clean": clean(result),
        "errors": result.errors,
        "close_code": result.close_code,
        "finals": result.finals,
        "partials": result.partials,
        "final_lag_p95": result.final_lag.p95,
        "word_final_lag_p50": result.word_final_lag.p50,
        "word_final_lag_p95": result.word_final_lag.p95,
        "kept_up": result.kept_up,
        "hypothesis": result.hypothesis,
    }
    if program.kind == "speaker":
        out |= {"wer": result.wer, "word_errors": asdict(result.word_errors), "reference": result.reference}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(phases: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Per phase, CPU and bytes per stream-second; room / alone ratios; the silent streams' marginal cost."""
    for figures in phases.values():
        seconds = figures["stream_seconds"]
        # alone: per speaking stream-second; room: per stream-second of every stream.
        stream_s = seconds["speakers"] + (seconds["silent"] if figures["phase"] == "room" else 0.0)
        figures["per_stream_second_of"] = "speakers" if figures["phase"] == "alone" else "all streams"
        cpu = figures["cpu"]
        if cpu is not None:
            cpu["raw_ms_per_stream_s"] = ms_per_stream_second(with_totals(cpu["raw_s"]), stream_s)
            cpu["corrected_ms_per_stream_s"] = ms_per_stream_second(with_totals(cpu["corrected_s"]), stream_s)
        figures["payload"] = payload_figures(figures["payload_delta"], stream_s)
    out: dict[str, Any] = {"ratios": None, "silent_marginal": None}
    alone, room = phases.get("alone"), phases.get("room")
    if not (alone and room):
        return out
    a, r = alone["speakers"], room["speakers"]
    out["ratios"] = {
        "wer": _ratio(r["wer"], a["wer"]),
        "word_final_lag_p95": _ratio(r["word_final_lag"]["p95"], a["word_final_lag"]["p95"]),
        "word_final_lag_p50": _ratio(r["word_final_lag"]["p50"], a["word_final_lag"]["p50"]),
        "final_lag_p95": _ratio(r["final_lag"]["p95"], a["final_lag"]["p95"]),
    }
    silent_s = room["stream_seconds"]["silent"]
    marginal: dict[str, Any] = {"silent_stream_seconds": silent_s}
    if alone["cpu"] is not None and room["cpu"] is not None:
        marginal["cpu_ms_per_stream_s"] = marginal_per_stream_second(
            with_totals(room["cpu"]["corrected_s"]), with_totals(alone["cpu"]["corrected_s"]), silent_s
        )
        marginal["cpu_raw_ms_per_stream_s"] = marginal_per_stream_second(
            with_totals(room["cpu"]["raw_s"]), with_totals(alone["cpu"]["raw_s"]), silent_s
        )
    if alone["payload_delta"] and room["payload_delta"]:
        marginal["payload_B_per_stream_s"] = marginal_per_stream_second(
            room["payload_delta"], alone["payload_delta"], silent_s, scale=1.0
        )
    decodes = [p["whisper"].get("decodes_by_kind") for p in (room, alone)]
    if all(d is not None for d in decodes):
        marginal["decodes_per_stream_minute"] = marginal_per_stream_second(*decodes, silent_s, scale=60.0)
    out["silent_marginal"] = marginal
    return out


# -- the report --------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _role_order(roles: Sequence[str]) -> list[str]:
    known = [r for r in ROLES if r in roles]
    return known + sorted(r for r in roles if r not in ROLES and r not in ("non-model", "total")) + [
        r for r in ("non-model", "total") if r in roles
    ]


def markdown(report: dict[str, Any]) -> str:
    config, phases = report["config"], report["phases"]
    label = f" ({report['label']})" if report.get("label") else ""
    lines = [
        f"# Room benchmark{label}",
        "",
        f"{config['speakers']} speaking + {config['silent']} silent streams, {config['duration_s']:g} s each, "
        f"real time, {config['chunk_s']:g} s chunks (s16le), interim results, starts over {config['stagger_s']:g} s, "
        f"seed {config['seed']}; {config['url']}; {config['started']}.",
        "",
        "## Speakers",
        "",
        "| phase | streams | WER | word final lag p50 / p95 (s) | word seen lag p50 / p95 (s) | final lag p95 (s) "
        "| kept up | clean (end, 1000) |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for name, p in phases.items():
        s = p["speakers"]
        lines.append(
            f"| {name} | {p['streams']['speakers']} | {fmt(s['wer'], 3)} "
            f"| {fmt(s['word_final_lag']['p50'])} / {fmt(s['word_final_lag']['p95'])} "
            f"| {fmt(s['word_seen_lag']['p50'])} / {fmt(s['word_seen_lag']['p95'])} | {fmt(s['final_lag']['p95'])} "
            f"| {s['kept_up']}/{p['streams']['speakers']} | {s['clean']}/{p['streams']['speakers']} |"
        )
    lines.append("")
    for name, p in phases.items():
        cpu = p["cpu"] or {}
        tree = cpu.get("tree_percent") or {}
        lines.append(
            f"- {name}: wall {fmt(p['wall_s'], 1)} s; audio sent {fmt(p['stream_seconds']['speakers'], 0)} speaking + "
            f"{fmt(p['stream_seconds']['silent'], 0)} silent stream-s; service tree CPU mean / max "
            f"{fmt(tree.get('mean_percent'), 0)} / {fmt(tree.get('max_percent'), 0)} %; this bench's own CPU "
            f"{fmt(p['client_cpu_s'], 1)} s, latest chunk {fmt(p['client_max_send_late_s'])} s behind its schedule"
        )
    if ratios := report["ratios"]:
        lines += [
            "",
            f"Room ÷ alone: WER {fmt(ratios['wer'])}×, word final lag p95 {fmt(ratios['word_final_lag_p95'])}× "
            f"(p50 {fmt(ratios['word_final_lag_p50'])}×), final lag p95 {fmt(ratios['final_lag_p95'])}×.",
        ]
    if (room := phases.get("room")) and room["streams"]["silent"]:
        silent = room["silent"]
        lines += [
            "",
            f"## Silent streams (room): {silent['final_words']} words in finals (goal 0), "
            f"{silent['partial_words']} in partials ({silent['partials_with_text']} partials with text), "
            f"{silent['clean']}/{room['streams']['silent']} clean",
            "",
            "| nonspeech item | streams | words in finals | words in partials | finals (first few) |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for source, row in silent["by_item"].items():
            shown = "; ".join(f"“{t.strip()}”" for t in row["finals"][:3]) or "–"
            lines.append(
                f"| {source} | {row['streams']} | {row['final_words']} | {row['partial_words']} | {shown[:160]} |"
            )
    lines += _cpu_tables(report)
    lines += _payload_table(report)
    lines += [
        "",
        "## Whisper",
        "",
        "| phase | batches | mean batch | batch sizes | decode s | decodes by kind | shed by kind |",
        "| --- | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for name, p in phases.items():
        w = p["whisper"]
        sizes = w.get("batch_sizes")
        lines.append(
            f"| {name} | {fmt(w.get('batches'), 0)} | {fmt(w.get('mean_batch_size'), 1)} "
            f"| {', '.join(f'{k}: {v}' for k, v in sizes.items()) if sizes else 'n/a'} "
            f"| {fmt(w.get('decode_seconds'), 1)} | {_counts(w.get('decodes_by_kind'))} | {_counts(w.get('shed_by_kind'))} |"
        )
    lines += _batched_calls_table(phases)
    marginal = report["silent_marginal"] or {}
    if marginal.get("decodes_per_stream_minute"):
        lines.append(
            "\nWhisper decodes, room − alone, per silent stream-minute (what the silent streams added, and what the "
            "speakers' decodes changed by): "
            + _counts({k: round(v, 2) for k, v in marginal["decodes_per_stream_minute"].items()})
        )
    problems = [(name, u) for name, p in phases.items() for u in p["unclean"]]
    if problems:
        lines += ["", f"## Streams that did not end cleanly ({len(problems)})", ""]
        for name, u in problems[:20]:
            lines.append(f"- {name} {u['stream']}: close {u['close_code']}, end {'yes' if u['end'] else 'no'}; "
                         f"{'; '.join(u['errors'])[:200]}")
    for warning in report.get("warnings", []):
        lines.append(f"\n> warning: {warning}")
    return "\n".join(lines) + "\n"


def _batched_calls_table(phases: Mapping[str, dict[str, Any]]) -> list[str]:
    """Calls that shared a trip to the BufferManager, and the VAD's hand-offs (one replica's summary each)."""
    lines = [
        "", "## Calls sharing trips, audio sharing VAD hand-offs", "",
        "Quiet streams' calls per trip to the BufferManager (the Ingress's `shared_trips`), and calls whose audio "
        "went to the VAD's thread together (the BufferManager's `vad_batches`), as the replica that answered "
        "/metrics/summary counted them.", "",
        "| phase | calls in shared trips | mean calls per trip | calls scored by the VAD | mean calls per hand-off |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, p in phases.items():
        batched = p.get("batched_calls") or {}
        trips = scoring.histogram_items(batched.get("shared_trips"))
        vad = scoring.histogram_items(batched.get("vad_batches"))
        lines.append(
            f"| {name} | {fmt(trips and trips[0], 0)} | {fmt(trips and trips[1], 1)} "
            f"| {fmt(vad and vad[0], 0)} | {fmt(vad and vad[1], 1)} |"
        )
    return lines


def _counts(counts: Mapping[str, float] | None) -> str:
    return "n/a" if counts is None else ", ".join(f"{k}: {v:g}" for k, v in counts.items()) or "0"


def _cpu_tables(report: dict[str, Any]) -> list[str]:
    phases = report["phases"]
    with_cpu = {name: p["cpu"] for name, p in phases.items() if p["cpu"] is not None}
    if not with_cpu:
        return ["", "## CPU per role", "", "n/a (no --server-pid)"]
    marginal = (report["silent_marginal"] or {}).get("cpu_ms_per_stream_s")
    roles = _role_order(sorted({r for c in with_cpu.values() for r in c["raw_ms_per_stream_s"] or {}}))
    header = "| role |"
    rule = "| --- |"
    for name in with_cpu:
        of = "speaking" if name == "alone" else "all"
        header += f" {name}: CPU s | {name}: at rest % | {name}: ms / {of} stream-s raw | {name}: rest-corrected |"
        rule += " ---: | ---: | ---: | ---: |"
    if marginal is not None:
        header += " silent: ms / silent stream-s (room − alone, corrected) |"
        rule += " ---: |"
    lines = [
        "",
        "## CPU per role (ms of CPU per stream-second of audio)",
        "",
        "At rest: each role's rate over "
        + ", ".join(f"{fmt(c['rest_wall_s'], 1)} s before {n}" for n, c in with_cpu.items())
        + "; rest-corrected = CPU s − rate at rest × phase wall.",
        "",
        header,
        rule,
    ]
    for role in roles:
        row = f"| {role} |"
        for cpu in with_cpu.values():
            raw = with_totals(cpu["raw_s"]).get(role)
            rate = with_totals(cpu["rest_rate"]).get(role, 0.0) if cpu["rest_rate"] is not None else None
            row += (
                f" {fmt(raw, 2)} | {fmt(None if rate is None else 100 * rate, 1)} "
                f"| {fmt((cpu['raw_ms_per_stream_s'] or {}).get(role), 1)} "
                f"| {fmt((cpu['corrected_ms_per_stream_s'] or {}).get(role), 1)} |"
            )
        if marginal is not None:
            row += f" {fmt(marginal.get(role), 2)} |"
        lines.append(row)
    return lines


def _payload_table(report: dict[str, Any]) -> list[str]:
    phases = report["phases"]
    lines = ["", "## Bytes through Ray", ""]
    if not any(p["payload"] for p in phases.values()):
        return lines + ["n/a: /metrics/summary has no payload_bytes counters."]
    marginal = (report["silent_marginal"] or {}).get("payload_B_per_stream_s")
    keys = list(dict.fromkeys(k for p in phases.values() for k in (p["payload"] or {})))
    header = "| figure | " + " | ".join(phases) + (" | silent (room − alone) per silent stream-s |" if marginal else " |")
    lines += [header, "| --- |" + " ---: |" * (len(phases) + bool(marginal))]
    for key in keys:
        row = f"| {key} | " + " | ".join(fmt((p["payload"] or {}).get(key), 1) for p in phases.values()) + " |"
        if marginal:
            base = key.split(" ")[0]
            value = marginal.get(base) if key.endswith("B/stream-s") else (
                marginal.get(key.removesuffix("/stream-s")) if key.endswith("/stream-s") else None
            )
            row += f" {fmt(value, 1)} |"
        lines.append(row)
    lines.append("\nAlone: per speaking stream-second; room: per stream-second of all streams; kB = 1000 B.")
    return lines


# -- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve.bench.room", description=__doc__.split("\n")[0])
    add_stream_arguments(parser)
    parser.add_argument("--server-pid", type=int, help="PID of the service (`serve run`): CPU of its process tree")
    parser.add_argument("--speakers", type=int, default=6, help="streams playing speech (default 6)")
    parser.add_argument("--silent", type=int, default=94, help="streams playing non-speech (default 94)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of audio per stream (default 60)")
    parser.add_argument("--phases", default="alone,room", help="alone, room or both in that order (default both)")
    parser.add_argument("--stagger", type=float, default=5.0, help="streams start at random offsets in [0, this) s")
    parser.add_argument("--seed", type=int, default=0, help="seeds the speakers' clips and the start offsets")
    parser.add_argument("--rest", type=float, default=5.0, help="seconds the service is watched at rest before a phase")
    parser.add_argument("--cooldown", type=float, default=5.0, help="idle seconds between the phases")
    parser.add_argument("--label", default="", help="a name for this run (e.g. before, after): in both outputs")
    parser.add_argument("--out", type=Path, default=Path("bench_results/room"), help="output folder")
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not args.phase_list or any(p not in PHASES for p in args.phase_list) or len(set(args.phase_list)) < len(
        args.phase_list
    ):
        parser.error(f"--phases takes alone, room or alone,room, not {args.phases!r}")
    args.phase_list = [p for p in PHASES if p in args.phase_list]
    if args.speakers < 0 or args.silent < 0 or args.duration <= 0 or args.chunk <= 0:
        parser.error("--speakers and --silent must not be negative, --duration and --chunk must be positive")
    if args.speakers == 0 and "alone" in args.phase_list:
        parser.error("the alone phase needs --speakers")
    return args


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    manifest = args.manifest or eval_dir() / "manifest.jsonl"
    clips = [item for item in load_items(manifest, ["short"]) if item.text.strip()]
    nonspeech = load_items(manifest, ["nonspeech"])
    if args.speakers and not clips:
        raise SystemExit(f"no short items in {manifest}")
    audio = {item.id: read_pcm16(item.path) for item in clips}
    speakers = speaker_programs(clips, args.speakers, args.duration, args.seed, length=lambda c: audio[c.id].size)
    silent = silent_programs(nonspeech, args.silent, args.duration)
    audio |= {item.id: read_pcm16(item.path) for item in nonspeech if any(p.source == item.id for p in silent)}
    paths = {item.id: item.path for item in nonspeech}
    looped_cache: dict[str, np.ndarray] = {}

    def samples(program: Program) -> np.ndarray:
        if program.kind == "silent":  # the same looped array for every stream of one item
            if program.source not in looped_cache:
                looped_cache[program.source] = program_audio(program, audio)
            return looped_cache[program.source]
        return program_audio(program, audio)

    speaking = [(p, o, samples(p)) for p, o in zip(speakers, start_offsets(len(speakers), args.stagger, args.seed,
                                                                          "speaker"), strict=True)]
    quiet = [(p, o, samples(p)) for p, o in zip(silent, start_offsets(len(silent), args.stagger, args.seed, "silent"),
                                                strict=True)]
    options = Options(1.0, args.chunk, "s16le", args.language or None, args.token, args.stagger, args.end_timeout,
                      args.seed)
    http_url = args.http_url or http_base(args.url)
    if await fetch_json(http_url, "/healthz") is None:
        print(f"warning: GET {http_url}/healthz did not answer with JSON; is the service at {args.url}?",
              file=sys.stderr)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    phases: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(args.phase_list):
        if index:
            await asyncio.sleep(args.cooldown)
        streams = speaking + (quiet if name == "room" else [])
        print(f"{name}: {len(streams)} streams of {args.duration:g} s…", file=sys.stderr, flush=True)
        record = await run_phase(name, args.url, http_url, streams, paths, options, args.server_pid, args.rest)
        phases[name] = analyze_phase(record, options.speed)
    warnings = []
    errors = " ".join(e for p in phases.values() for u in p["unclean"] for e in u["errors"])
    if "overloaded" in errors:
        warnings.append(
            "streams were refused as overloaded: with auth off the service caps streams per client address "
            "(limits.max_streams_per_client, 16 by default) and per Ingress replica (limits.max_streams); "
            "run it with max_streams_per_client: 0 or with API keys"
        )
    if not any(p["payload_delta"] for p in phases.values()):
        warnings.append("/metrics/summary has no payload_bytes counters: bytes through Ray are n/a")
    report: dict[str, Any] = {
        "label": args.label,
        "config": {
            "url": args.url, "manifest": str(manifest), "speakers": args.speakers, "silent": args.silent,
            "duration_s": args.duration, "phases": args.phase_list, "seed": args.seed, "stagger_s": args.stagger,
            "rest_s": args.rest, "cooldown_s": args.cooldown, "chunk_s": args.chunk, "encoding": "s16le",
            "language": args.language or None, "gap_s": GAP_S, "server_pid": args.server_pid, "started": started,
            "machine_cpus": os.cpu_count(),
            "programs": [
                {"stream": p.name, "kind": p.kind, "offset_s": round(o, 3), "source": p.source,
                 "segments": [asdict(s) for s in p.segments]}
                for p, o, _ in speaking + quiet
            ],
        },
        "phases": phases,
        "warnings": warnings,
    }
    report |= compare(phases)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(bench(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "room.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (args.out / "room.md").write_text(text)
    print(text)
    print(f"wrote {args.out / 'room.json'}, {args.out / 'room.md'}", file=sys.stderr)
    return 0 if all(p["all_clean"] for p in report["phases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
