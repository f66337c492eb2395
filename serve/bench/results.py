"""What a load benchmark came to: typed results per stream, per run and for the comparison, and how they are
computed from the runs' records. ``BenchResults.to_json()`` is bench.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serve.bench import scoring
from serve.bench.cpu import CpuUsage
from serve.bench.load import Options, RunRecord, StreamRecord
from serve.bench.scoring import LagPoint, LoadPoint, Summary, Verdict, WordErrors


@dataclass(frozen=True)
class StreamResult:
    """One stream: its accuracy and lags (seconds; lags from when ``ready`` came in, see serve.bench.load)."""

    id: str
    subset: str
    duration_s: float
    offset_s: float
    failed: bool
    errors: list[str]
    close_code: int | None
    connect_s: float | None
    max_send_late_s: float
    end_duration_s: float | None
    end_lag_s: float | None
    """When ``end`` came, after the last sample was due."""
    finals: int
    partials: int
    out_of_order_finals: int
    word_errors: WordErrors
    wer: float
    offline_word_errors: WordErrors | None
    offline_wer: float | None
    final_lag: Summary
    final_lags: list[LagPoint]
    word_final_lag: Summary
    word_final_lags: list[float]
    """Per word of the finals: its final's arrival after the word's audio (``scoring.word_lags``)."""
    word_seen_lag: Summary
    word_seen_lags: list[float]
    """The same words, from when each was first shown, partial or final (``scoring.seen_lags``)."""
    first_text_lag: Summary
    first_text_lags: list[float]
    kept_up: bool
    lag_slope: float | None
    lag_growth_s: float | None
    reference: str
    hypothesis: str
    offline_hypothesis: str | None


@dataclass(frozen=True)
class ServerFigures:
    """What the service did during a run: its CPU, its two ``/metrics/summary`` readings and their differences."""

    cpu: CpuUsage | None
    summary_before: dict[str, Any] | None
    summary_after: dict[str, Any] | None
    batch_sizes: dict[int, int] | None
    """Batches formed during the run, by size."""
    max_batch_size: int | None = None
    batches: float | None = None
    decode_seconds: float | None = None
    mean_batch_size: float | None = None

    def to_json(self) -> dict[str, Any]:
        """As bench.json has it: a figure the service did not report is left out."""
        optional = ("max_batch_size", "batches", "decode_seconds", "mean_batch_size")
        return {key: value for key, value in asdict(self).items() if key not in optional or value is not None}


@dataclass(frozen=True)
class RunResult:
    """One run of ``streams`` concurrent streams, pooled, with each stream's result."""

    service: str
    streams: int
    wall_s: float
    failed_streams: int
    kept_up_streams: int
    wer: float
    offline_wer: float | None
    final_lag: Summary
    first_text_lag: Summary
    word_final_lag: Summary
    word_seen_lag: Summary
    max_send_late_s: float
    server: ServerFigures
    per_stream: list[StreamResult]
    verdict: Verdict | None = None
    """Judged against the criteria once the run is analyzed."""

    @property
    def load_point(self) -> LoadPoint:
        return LoadPoint(self.streams, self.final_lag.p95, self.wer, self.offline_wer, self.failed_streams)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["server"] = self.server.to_json()
        if self.verdict is None:
            del out["verdict"]
        return out


@dataclass(frozen=True)
class ComparisonRow:
    streams: int
    p95_batched: float | None
    p95_unbatched: float | None
    lag_ratio: float | None
    """Unbatched p95 final lag over batched."""
    wer_batched: float
    wer_unbatched: float


@dataclass(frozen=True)
class Comparison:
    """Batched vs unbatched at each N both ran."""

    rows: list[ComparisonRow]
    capacity_ratio: float | None


@dataclass(frozen=True)
class Criteria:
    """What a run must meet to pass (``scoring.judge``)."""

    slo_s: float
    wer_ratio: float
    wer_slack: float


@dataclass(frozen=True)
class BenchConfig:
    url: str
    unbatched_url: str | None
    unbatched_by: str | None
    """``second deployment``, ``reconfigure``, or None without a comparison."""
    manifest: str
    subsets: list[str]
    stream_counts: list[int]
    options: Options

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        options = out.pop("options")
        return {**out, **options}


@dataclass(frozen=True)
class BenchResults:
    config: BenchConfig
    criteria: Criteria
    runs: list[RunResult]
    capacity: dict[str, int | None]
    warnings: list[str] = field(default_factory=list)
    comparison: Comparison | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config.to_json(),
            "criteria": asdict(self.criteria),
            "runs": [run.to_json() for run in self.runs],
            "capacity": self.capacity,
            "warnings": self.warnings,
        }
        if self.comparison is not None:
            out["comparison"] = asdict(self.comparison)
        return out


# -- analysis ----------------------------------------------------------------------------------


def analyze_stream(record: StreamRecord, offline_text: str | None, speed: float) -> StreamResult:
    seen = record.transcript
    # Arrivals count from ``ready``: that is ``started``, 0, on the lag arithmetic's clock.
    messages = [scoring.received(m, at) for m, at in zip(seen.messages, seen.arrivals)]
    began = seen.started is not None
    points = scoring.final_lags(messages, 0.0, speed) if began else []
    onsets = scoring.onset_lags(messages, 0.0, speed) if began else []
    word_lags = scoring.word_lags(messages, 0.0, speed) if began else []
    seen_lags = scoring.seen_lags(messages, 0.0, speed) if began else []
    keep = scoring.keep_up(points)
    hypothesis = scoring.transcript(messages)
    errors = scoring.word_errors(record.item.text, hypothesis)
    offline = scoring.word_errors(record.item.text, offline_text) if offline_text is not None else None
    end = next(((m, at) for m, at in zip(seen.messages, seen.arrivals) if m["type"] == "end"), None)
    end_duration = scoring.as_number(end[0].get("duration")) if end else None
    duration = end_duration if end_duration is not None else seen.sent_s
    return StreamResult(
        id=record.item.id,
        subset=record.item.subset,
        duration_s=record.item.duration_s,
        offset_s=round(record.offset_s, 3),
        failed=record.failed,
        errors=seen.errors,
        close_code=seen.close_code,
        connect_s=seen.connect_s,
        max_send_late_s=round(seen.max_send_late_s, 3),
        end_duration_s=end_duration,
        end_lag_s=end[1] - duration / speed if end and began else None,
        finals=sum(1 for m in messages if m.type == "final"),
        partials=sum(1 for m in messages if m.type == "partial"),
        out_of_order_finals=scoring.out_of_order_finals(messages),
        word_errors=errors,
        wer=errors.wer,
        offline_word_errors=offline,
        offline_wer=offline.wer if offline else None,
        final_lag=scoring.summarize([p.lag for p in points]),
        final_lags=points,
        word_final_lag=scoring.summarize(word_lags),
        word_final_lags=word_lags,
        word_seen_lag=scoring.summarize(seen_lags),
        word_seen_lags=seen_lags,
        first_text_lag=scoring.summarize(onsets),
        first_text_lags=onsets,
        kept_up=keep.kept_up,
        lag_slope=keep.slope,
        lag_growth_s=keep.growth,
        reference=record.item.text,
        hypothesis=hypothesis,
        offline_hypothesis=offline_text,
    )


def analyze_run(run: RunRecord, offline: dict[Path, str] | None, speed: float) -> RunResult:
    streams = [analyze_stream(r, offline.get(r.item.path) if offline else None, speed) for r in run.records]
    streaming = sum((s.word_errors for s in streams), scoring.NO_ERRORS)
    offline_errors = (
        sum((s.offline_word_errors or scoring.NO_ERRORS for s in streams), scoring.NO_ERRORS)
        if offline is not None
        else None
    )
    return RunResult(
        service=run.service,
        streams=run.streams,
        wall_s=run.wall_s,
        failed_streams=sum(s.failed for s in streams),
        kept_up_streams=sum(s.kept_up for s in streams),
        wer=streaming.wer,
        offline_wer=offline_errors.wer if offline_errors else None,
        final_lag=scoring.summarize([p.lag for s in streams for p in s.final_lags]),
        first_text_lag=scoring.summarize([lag for s in streams for lag in s.first_text_lags]),
        word_final_lag=scoring.summarize([lag for s in streams for lag in s.word_final_lags]),
        word_seen_lag=scoring.summarize([lag for s in streams for lag in s.word_seen_lags]),
        max_send_late_s=max((s.max_send_late_s for s in streams), default=0.0),
        server=server_figures(run.server_before, run.server_after, run.server_cpu),
        per_stream=streams,
    )


def server_figures(
    before: dict[str, Any] | None, after: dict[str, Any] | None, cpu: CpuUsage | None = None
) -> ServerFigures:
    """What the service did during a run, from two readings of /metrics/summary's cumulative counters.

    Reads ``batch_sizes`` ({size: batches}), ``batches``, ``decode_seconds`` and ``max_batch_size``
    at the top level or one object down (the service nests them under ``whisper``).
    """
    if after is None:
        return ServerFigures(cpu, before, after, None)
    later, earlier = scoring.flat_summary(after), scoring.flat_summary(before or {})
    histogram = None
    for key in ("batch_sizes", "batch_size_histogram"):
        if key in later:
            histogram = scoring.histogram_delta(earlier.get(key), later[key])
            break
    counters = {
        key: scoring.counter_delta(earlier.get(key), later[key])
        for key in ("batches", "decode_seconds")
        if isinstance(later.get(key), int | float)
    }
    mean = items[1] if (items := scoring.histogram_items(histogram)) else None
    return ServerFigures(cpu, before, after, histogram, later.get("max_batch_size"), **counters, mean_batch_size=mean)


def comparison(runs: Sequence[RunResult], capacities: dict[str, int | None]) -> Comparison:
    by = {(r.service, r.streams): r for r in runs}
    rows = []
    for n in sorted({r.streams for r in runs}):
        b, u = by.get(("batched", n)), by.get(("unbatched", n))
        if not b or not u:
            continue
        pb, pu = b.final_lag.p95, u.final_lag.p95
        rows.append(ComparisonRow(n, pb, pu, pu / pb if pb and pu is not None else None, b.wer, u.wer))
    cb, cu = capacities.get("batched"), capacities.get("unbatched")
    return Comparison(rows, cb / cu if cb and cu else None)
