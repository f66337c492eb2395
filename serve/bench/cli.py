"""Load benchmark: N concurrent real-time streams against the running service.

    python -m serve.bench --streams 4                      # one run of 4 streams
    python -m serve.bench --sweep 1,2,4,8 --slo 2          # capacity search
    python -m serve.bench --survey                          # 1, 3 and 15 users: lag min-max (avg)
    python -m serve.bench --sweep 1,2,4 --compare-unbatched   # again with max_batch_size 1 (reconfigured)

Each stream plays a different evaluation file (cycling when N exceeds the files, in an
order shuffled once by ``--seed``), starts after a random offset of up to ``--stagger``
seconds, and sends 1 s chunks at real time (``--speed``) the way a microphone does
(serve/bench/load.py), so every lag below includes the chunking the page does too.

Reported per stream and pooled (rules in serve/bench/scoring.py): WER of the finals next to
the offline WER of the same model on the same files (serve/bench/offline.py, cached); final lag;
first-text lag after each speech onset; whether the stream kept up; server CPU (``--server-pid``)
and ``GET /metrics/summary`` before and after each run where the service has it.

Capacity is the largest N that passed (p95 final lag <= ``--slo`` and WER <= 1.10 x offline,
no stream failed) with every smaller N tried passing too. ``--compare-unbatched`` then
reconfigures the same application to ``batching.max_batch_size: 1`` through Serve's REST API
(``--serve-api``, the Ray dashboard: what ``serve deploy`` does; a user_config change, so the
replicas are reconfigured live, not restarted), waits until the service reports it, repeats the
sweep, and deploys the original config back. With ``--unbatched-url`` it uses a second
deployment started with ``max_batch_size: 1`` instead.

Writes ``bench.json``, ``bench.md`` and PNG plots under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

from serve.bench import scoring
from serve.bench.eval_set import eval_dir, load_items
from serve.bench.load import Options, add_stream_arguments, plan_items, read_pcm16, run_load
from serve.bench.report import decimal, markdown, plot
from serve.bench.rest import (
    batching_configs,
    fetch_json,
    fetch_summary,
    http_base,
    put_config,
    ray_auth_headers,
    serve_api_base,
    wait_for_batch_size,
)
from serve.bench.results import BenchConfig, BenchResults, Criteria, RunResult, analyze_run, comparison


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve.bench", description=__doc__.split("\n")[0])
    add_stream_arguments(parser)
    parser.add_argument("--subset", default="short,long", help="comma-separated subsets (default short,long)")
    parser.add_argument("--ids", help="comma-separated manifest ids: only these items (of --subset)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--streams", type=int, default=1, help="concurrent streams for a single run")
    load.add_argument("--sweep", help="comma-separated stream counts, e.g. 1,2,4,8; reports capacity")
    load.add_argument("--survey", action="store_true", help="runs 1, 3 and 15 streams (the seed survey's view)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1 = real time)")
    parser.add_argument("--encoding", choices=["s16le", "f32le"], default="s16le")
    parser.add_argument("--stagger", type=float, default=1.0, help="streams start at random offsets in [0, this) s")
    parser.add_argument("--seed", type=int, default=0, help="seeds the file order and the start offsets")
    parser.add_argument("--slo", type=float, default=2.0, help="p95 final lag limit, seconds")
    parser.add_argument("--wer-ratio", type=float, default=1.10, help="WER limit as a multiple of offline WER")
    parser.add_argument("--wer-slack", type=float, default=0.0, help="absolute WER added to that limit")
    parser.add_argument("--cooldown", type=float, default=2.0, help="idle seconds between runs")
    parser.add_argument(
        "--server-pid", type=int, help="PID of the service (e.g. of `serve run`): CPU%% of its process tree"
    )
    parser.add_argument(
        "--compare-unbatched", action="store_true",
        help="repeat the sweep with max_batch_size 1: the app is reconfigured through --serve-api, then restored",
    )
    parser.add_argument("--serve-api", help="Serve REST API (Ray dashboard) base, default $RAY_DASHBOARD_ADDRESS, else http://<url host>:8265")
    parser.add_argument(
        "--unbatched-url", help="instead of reconfiguring: WebSocket URL of a second deployment with max_batch_size: 1"
    )
    parser.add_argument("--unbatched-server-pid", type=int, help="PID of that second service")
    parser.add_argument("--no-offline", action="store_true", help="skip the offline WER (then WER is not judged)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=Path("bench_results"), help="output folder (default bench_results/)"
    )
    args = parser.parse_args(argv)
    if args.speed <= 0 or args.chunk <= 0:
        parser.error("--speed and --chunk must be positive")
    try:
        args.stream_counts = (
            [1, 3, 15] if args.survey else [int(n) for n in args.sweep.split(",")] if args.sweep else [args.streams]
        )
    except ValueError:
        parser.error(f"--sweep wants integers like 1,2,4,8, not {args.sweep!r}")
    if min(args.stream_counts) < 1:
        parser.error("stream counts must be at least 1")
    return args



async def bench(args: argparse.Namespace) -> BenchResults:
    manifest = args.manifest or eval_dir() / "manifest.jsonl"
    subsets = [s for s in args.subset.split(",") if s]
    items = load_items(manifest, subsets)
    if args.ids:
        wanted = set(args.ids.split(","))
        items = [item for item in items if item.id in wanted]
    items = plan_items(items, args.seed)
    if not items:
        raise SystemExit(f"no items of subsets {subsets} in {manifest}")
    options = Options(
        args.speed,
        args.chunk,
        args.encoding,
        args.language or None,
        args.token,
        args.stagger,
        args.end_timeout,
        args.seed,
    )
    criteria = Criteria(args.slo, args.wer_ratio, args.wer_slack)
    used = list(dict.fromkeys(items[i % len(items)] for i in range(max(args.stream_counts))))
    audio = {item.path: read_pcm16(item.path) for item in used}

    services = [("batched", args.url, args.http_url or http_base(args.url), args.server_pid)]
    reconfigure: tuple[str, dict, dict] | None = None
    if args.compare_unbatched and args.unbatched_url:
        services.append(("unbatched", args.unbatched_url, http_base(args.unbatched_url), args.unbatched_server_pid))
    elif args.compare_unbatched:
        base = (args.serve_api or serve_api_base(args.url)).rstrip("/")
        api = base + "/api/serve/applications/"
        details = await fetch_json(base, "/api/serve/applications/", ray_auth_headers())
        if details is None:
            raise SystemExit(f"--compare-unbatched: no Serve REST API at {api}, or it refused Ray's token (start Ray "
                             "with its dashboard, or pass --serve-api, or --unbatched-url for a second deployment)")
        try:
            reconfigure = (api, *batching_configs(details, args.url)[1:])
        except ValueError as exc:
            raise SystemExit(f"--compare-unbatched: {exc}") from exc
        services.append(("unbatched", args.url, services[0][2], args.server_pid))
    for name, url, http_url, _ in services:
        if await fetch_json(http_url, "/healthz") is None:
            print(
                f"warning: GET {http_url}/healthz did not answer with JSON; is the {name} service at {url}?",
                file=sys.stderr,
            )

    offline: dict[Path, str] | None = None
    if not args.no_offline:
        from serve.bench.offline import OfflineTranscriber

        transcriber = OfflineTranscriber()
        missing = [item for item in used if transcriber.cached(item.path) is None]
        if missing:
            print(f"offline reference: transcribing {len(missing)} file(s) once (cached)…", file=sys.stderr, flush=True)
        offline = await asyncio.to_thread(transcriber.transcribe_all, [item.path for item in used])

    runs: list[RunResult] = []
    warnings: list[str] = []

    async def sweep(name: str, url: str, http_url: str, pid: int | None) -> None:
        for index, n in enumerate(args.stream_counts):
            if index or runs:
                await asyncio.sleep(args.cooldown)
            record = await run_load(name, url, http_url, n, items, audio, options, pid)
            run = analyze_run(record, offline, options.speed)
            verdict = scoring.judge(run.load_point, criteria.slo_s, criteria.wer_ratio, criteria.wer_slack)
            runs.append(run := replace(run, verdict=verdict))
            if name == "unbatched" and run.server.max_batch_size not in (None, 1):
                warnings.append(f"{url} reports max_batch_size {run.server.max_batch_size}, not 1")
                print(f"warning: {warnings[-1]}", file=sys.stderr)
            lag = run.final_lag
            print(
                f"{name} N={n}: final lag p50 {decimal(lag.p50)} p95 {decimal(lag.p95)} max {decimal(lag.max)} s "
                f"(per word p95 {decimal(run.word_final_lag.p95)} s), "
                f"WER {decimal(run.wer, 3)} (offline {decimal(run.offline_wer, 3)}), failed {run.failed_streams}, "
                f"kept up {run.kept_up_streams}/{n} -> {'pass' if verdict.passed else 'FAIL'}",
                file=sys.stderr,
                flush=True,
            )

    for name, url, http_url, pid in services:
        if name != "unbatched" or reconfigure is None:
            await sweep(name, url, http_url, pid)
            continue
        original_batch = scoring.flat_summary(await fetch_summary(http_url, options.token) or {}).get("max_batch_size")
        print("reconfiguring the application to max_batch_size 1…", file=sys.stderr, flush=True)
        await put_config(reconfigure[0], reconfigure[2])
        try:
            await wait_for_batch_size(http_url, 1, options.token)
            await sweep(name, url, http_url, pid)
        finally:
            print("deploying the original config back…", file=sys.stderr, flush=True)
            await put_config(reconfigure[0], reconfigure[1])
            if isinstance(original_batch, int):
                await wait_for_batch_size(http_url, original_batch, options.token)

    capacities = {
        name: scoring.capacity(
            [r.load_point for r in runs if r.service == name], criteria.slo_s, criteria.wer_ratio, criteria.wer_slack
        )
        for name, *_ in services
    }
    config = BenchConfig(
        url=args.url,
        unbatched_url=args.unbatched_url if args.compare_unbatched else None,
        unbatched_by=None if not args.compare_unbatched else "second deployment" if args.unbatched_url else "reconfigure",
        manifest=str(manifest),
        subsets=subsets,
        stream_counts=args.stream_counts,
        options=options,
    )
    return BenchResults(
        config,
        criteria,
        runs,
        capacities,
        list(dict.fromkeys(warnings)),
        comparison(runs, capacities) if args.compare_unbatched else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(bench(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results.to_json(), indent=1, default=str))
    table = markdown(results)
    (args.out / "bench.md").write_text(table)
    written = [] if args.no_plots else plot(results, args.out)
    print(table)
    print(
        f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'}" + "".join(f", {p}" for p in written),
        file=sys.stderr,
    )
    return 0 if all(r.failed_streams == 0 for r in results.runs) else 1
