"""The benchmark's results for people: a markdown table and PNG plots (lag vs N, WER vs N, batch sizes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serve.bench.results import BenchResults
from serve.bench.scoring import Summary


def decimal(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: BenchResults) -> str:
    config, criteria = results.config, results.criteria
    lines = [
        f"Load benchmark: {config.subsets} audio, speed {config.options.speed:g}×, "
        f"{config.options.chunk_s:g} s chunks ({config.options.encoding}); "
        f"SLO p95 final lag ≤ {criteria.slo_s:g} s, WER ≤ {criteria.wer_ratio:g} × offline"
        + (f" + {criteria.wer_slack:g}" if criteria.wer_slack else ""),
        "",
        "| service | N | failed | final lag p50 / p95 / max (s) | word seen lag p50 / p95 (s) "
        "| word final lag p50 / p95 (s) | first text p50 / p95 (s) | WER stream / offline | kept up "
        "| server CPU mean / max | mean batch | verdict |",
        "| --- | ---: | ---: | --- | --- | --- | --- | --- | ---: | --- | ---: | --- |",
    ]
    for run in results.runs:
        lag, first, words, cpu = run.final_lag, run.first_text_lag, run.word_final_lag, run.server.cpu
        seen = run.word_seen_lag
        verdict = run.verdict
        lines.append(
            f"| {run.service} | {run.streams} | {run.failed_streams} "
            f"| {decimal(lag.p50)} / {decimal(lag.p95)} / {decimal(lag.max)} | {decimal(seen.p50)} / {decimal(seen.p95)} "
            f"| {decimal(words.p50)} / {decimal(words.p95)} "
            f"| {decimal(first.p50)} / {decimal(first.p95)} "
            f"| {decimal(run.wer, 3)} / {decimal(run.offline_wer, 3)} | {run.kept_up_streams}/{run.streams} "
            f"| {(decimal(cpu.mean_percent, 0) + ' / ' + decimal(cpu.max_percent, 0) + ' %') if cpu else '–'} "
            f"| {decimal(run.server.mean_batch_size, 1)} "
            f"| {'–' if verdict is None else 'pass' if verdict.passed else 'FAIL: ' + '; '.join(verdict.reasons)} |"
        )
    lines.append("")
    for service, value in results.capacity.items():
        lines.append(
            f"- **Capacity ({service})**: {f'{value} streams' if value is not None else 'below the smallest N tried'}"
        )
    if results.comparison is not None:
        lines += [
            "",
            "| N | p95 final lag batched / unbatched (s) | unbatched ÷ batched | WER batched / unbatched |",
            "| ---: | --- | ---: | --- |",
        ]
        for row in results.comparison.rows:
            lines.append(
                f"| {row.streams} | {decimal(row.p95_batched)} / {decimal(row.p95_unbatched)} | {decimal(row.lag_ratio)} "
                f"| {decimal(row.wer_batched, 3)} / {decimal(row.wer_unbatched, 3)} |"
            )
        ratio = results.comparison.capacity_ratio
        lines.append(f"\nCapacity batched ÷ unbatched: {decimal(ratio) + '×' if ratio is not None else '–'}")
    for warning in results.warnings:
        lines.append(f"\n> warning: {warning}")
    lines += ["", "| users | final lag min–max (avg) | first text min–max (avg) |", "| ---: | --- | --- |"]
    for run in results.runs:
        if run.service != "batched":
            continue
        lines.append(f"| {run.streams} | {_span(run.final_lag)} | {_span(run.first_text_lag)} |")
    return "\n".join(lines) + "\n"


def _span(summary: Summary) -> str:
    if not summary.count:
        return "–"
    return f"{summary.min:.2f}–{summary.max:.2f} s ({summary.mean:.2f} s)"


def plot(results: BenchResults, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    services = sorted({r.service for r in results.runs})
    fig, ax = plt.subplots(figsize=(6, 4))
    for service in services:
        runs = [r for r in results.runs if r.service == service and r.final_lag.count]
        ns = [r.streams for r in runs]
        ax.plot(ns, [r.final_lag.p95 for r in runs], "o-", label=f"{service} final p95")
        ax.plot(ns, [r.final_lag.p50 for r in runs], "o--", label=f"{service} final p50")
        seen = [r for r in runs if r.word_seen_lag.count]
        ax.plot([r.streams for r in seen], [r.word_seen_lag.p95 for r in seen], "s-.", label=f"{service} word seen p95")
        firsts = [r for r in runs if r.first_text_lag.count]
        ax.plot(
            [r.streams for r in firsts], [r.first_text_lag.p95 for r in firsts], "x:", label=f"{service} first text p95"
        )
    ax.axhline(results.criteria.slo_s, color="red", linewidth=0.8, label="SLO")
    ax.set(xlabel="concurrent streams", ylabel="lag (s)", title="Lag vs load")
    _stream_axis(ax, results)
    written.append(_save(fig, ax, out / "lag_vs_n.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for service in services:
        runs = [r for r in results.runs if r.service == service]
        ax.plot([r.streams for r in runs], [r.wer for r in runs], "o-", label=f"{service} streaming")
    offline = [r for r in results.runs if r.service == services[0] and r.offline_wer is not None]
    if offline:
        ns = [r.streams for r in offline]
        ax.plot(ns, [r.offline_wer for r in offline], "s--", color="gray", label="offline (same files)")
        limit = [results.criteria.wer_ratio * (r.offline_wer or 0.0) + results.criteria.wer_slack for r in offline]
        ax.plot(ns, limit, ":", color="red", label="limit")
    ax.set(xlabel="concurrent streams", ylabel="WER", title="WER vs load")
    _stream_axis(ax, results)
    written.append(_save(fig, ax, out / "wer_vs_n.png"))

    histograms = [(r, r.server.batch_sizes) for r in results.runs if r.server.batch_sizes]
    if histograms:
        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.8 / len(histograms)
        for i, (run, counts) in enumerate(histograms):
            sizes = sorted(counts)
            ax.bar(
                [s - 0.4 + width * (i + 0.5) for s in sizes],
                [counts[s] for s in sizes],
                width,
                label=f"{run.service} N={run.streams}",
            )
        ax.set(xlabel="batch size", ylabel="batches", title="Batch sizes (server)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        written.append(_save(fig, ax, out / "batch_sizes.png"))
    return written


def _save(fig: Any, ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _stream_axis(ax: Any, results: BenchResults) -> None:
    """Log-2 x axis labelled with the stream counts actually run."""
    ns = sorted({r.streams for r in results.runs})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
