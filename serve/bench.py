"""Load benchmark: N concurrent real-time streams against the running service.

    python -m serve.bench --streams 4                      # one run of 4 streams
    python -m serve.bench --sweep 1,2,4,8 --slo 2          # capacity search
    python -m serve.bench --survey                          # 1, 3 and 15 users: lag min-max (avg)
    python -m serve.bench --sweep 1,2,4 --compare-unbatched   # again with max_batch_size 1 (reconfigured)

Each stream plays a different evaluation file (cycling when N exceeds the files, in an
order shuffled once by ``--seed``), starts after a random offset of up to ``--stagger``
seconds, and sends 1 s chunks at real time (``--speed``) the way a microphone does: the
chunk holding audio [k, k+1) s leaves at ``started + (k+1) / speed``, where ``started``
is when ``ready`` came in and stands for the moment sample 0 was recorded. So every lag
below includes the chunking the page does too. After the last chunk: ``stop``, then wait
for ``end``.

Reported per stream and pooled (rules in serve/bench_metrics.py): WER of the finals next to
the offline WER of the same model on the same files (serve/offline.py, cached); final lag;
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
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve import bench_metrics as bm
from serve.eval_set import EvalItem, eval_dir, load_items

SAMPLE_RATE = 16000
REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "ws://127.0.0.1:8000/v1/listen"


# -- inputs ------------------------------------------------------------------------------


def read_pcm16(path: Path) -> np.ndarray:
    """16 kHz mono int16 samples; anything but such a WAV goes through faster-whisper's decoder."""
    try:
        with wave.open(str(path), "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (SAMPLE_RATE, 1, 2):
                return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    except wave.Error:
        pass
    from faster_whisper import decode_audio

    audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def encode(chunk: np.ndarray, encoding: str) -> bytes:
    if encoding == "s16le":
        return chunk.astype("<i2").tobytes()
    return (chunk.astype(np.float32) / 32768.0).astype("<f4").tobytes()


# -- one stream -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    speed: float = 1.0
    chunk_s: float = 1.0
    encoding: str = "s16le"
    language: str | None = "en"
    token: str | None = None
    stagger_s: float = 1.0
    end_timeout_s: float = 60.0
    seed: int = 0


@dataclass
class StreamRecord:
    """What the client saw of one stream; times are ``time.monotonic()``."""

    item: EvalItem
    offset_s: float
    started: float | None = None
    connect_s: float | None = None
    messages: list[bm.Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    end_at: float | None = None
    end_duration: float | None = None
    close_code: int | None = None
    sent_s: float = 0.0
    max_send_late_s: float = 0.0
    """How far behind schedule the client itself sent a chunk: large values mean the client, not the server, lagged."""

    @property
    def failed(self) -> bool:
        return self.end_at is None or self.close_code not in (1000, None)


class Progress:
    """One status line on stderr: audio sent, finals received, streams finished."""

    def __init__(self, label: str, streams: int, total_audio_s: float) -> None:
        self.label, self.streams, self.total = label, streams, max(total_audio_s, 1e-9)
        self.sent = 0.0
        self.finals = self.errors = self.done = 0
        self.tty = sys.stderr.isatty()
        self._last_line = 0.0

    def render(self, final: bool = False) -> None:
        width = 30
        filled = int(width * min(self.sent / self.total, 1.0))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.sent:6.1f}/{self.total:.1f} s audio  "
            f"finals {self.finals}  errors {self.errors}  done {self.done}/{self.streams}"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
            sys.stderr.flush()
        elif final or time.monotonic() - self._last_line >= 10:
            self._last_line = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    async def run(self) -> None:
        while True:
            self.render()
            await asyncio.sleep(0.5)


def stream_url(url: str, options: Options) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.setdefault("sample_rate", str(SAMPLE_RATE))
    query.setdefault("encoding", options.encoding)
    query.setdefault("interim_results", "true")
    if options.language:
        query.setdefault("language", options.language)
    if options.token:
        query.setdefault("token", options.token)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _word_ends(words: Any) -> tuple[float, ...]:
    """The ``end`` of each word of a final's ``words`` list; anything malformed is left out."""
    if not isinstance(words, list):
        return ()
    ends = (_number(w.get("end")) for w in words if isinstance(w, dict))
    return tuple(e for e in ends if e is not None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def play_stream(url: str, record: StreamRecord, audio: np.ndarray, options: Options, progress: Progress) -> None:
    from websockets.asyncio.client import connect

    await asyncio.sleep(record.offset_s)
    opened = time.monotonic()
    try:
        async with connect(url, proxy=None, compression=None, max_size=None, open_timeout=30) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if first.get("type") != "ready":
                record.errors.append(f"first message is not ready: {first}")
                record.close_code = ws.close_code
                return
            record.started = time.monotonic()
            record.connect_s = record.started - opened
            deadline = audio.size / SAMPLE_RATE / options.speed + options.end_timeout_s
            try:
                async with asyncio.timeout(deadline):
                    async with asyncio.TaskGroup() as group:
                        group.create_task(_send(ws, record, audio, options, progress))
                        group.create_task(_receive(ws, record, progress))
            except TimeoutError:
                record.errors.append(f"no end within {options.end_timeout_s:g} s after the audio")
            record.close_code = ws.close_code
    except Exception as exc:  # one stream's failure is a result, not a reason to stop the sweep
        record.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        progress.done += 1
        progress.errors += len(record.errors)


async def _send(ws: Any, record: StreamRecord, audio: np.ndarray, options: Options, progress: Progress) -> None:
    from websockets.exceptions import ConnectionClosed

    assert record.started is not None
    step = max(1, int(options.chunk_s * SAMPLE_RATE))
    try:
        for offset in range(0, audio.size, step):
            chunk = audio[offset : offset + step]
            due = record.started + (offset + chunk.size) / SAMPLE_RATE / options.speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            record.max_send_late_s = max(record.max_send_late_s, time.monotonic() - due)
            await ws.send(encode(chunk, options.encoding))
            record.sent_s += chunk.size / SAMPLE_RATE
            progress.sent += chunk.size / SAMPLE_RATE
        await ws.send(json.dumps({"type": "stop"}))
    except ConnectionClosed:
        pass  # the receiver records why the server closed


async def _receive(ws: Any, record: StreamRecord, progress: Progress) -> None:
    from websockets.exceptions import ConnectionClosedError

    try:
        async for raw in ws:
            arrival = time.monotonic()
            if isinstance(raw, bytes):
                record.errors.append("binary frame from the server")
                continue
            try:
                data = json.loads(raw)
                kind = str(data["type"])
            except (ValueError, TypeError, KeyError):
                record.errors.append(f"not a protocol message: {raw[:200]!r}")
                continue
            record.messages.append(
                bm.Received(
                    kind, arrival, str(data.get("text") or ""), _number(data.get("start")), _number(data.get("end")),
                    _word_ends(data.get("words")),
                )
            )
            if kind == "final":
                progress.finals += 1
            elif kind == "error":
                record.errors.append(f"{data.get('code')}: {data.get('message')}")
            elif kind == "end":
                record.end_at, record.end_duration = arrival, _number(data.get("duration"))
                break  # the server closes next; nothing it could send now counts
    except ConnectionClosedError as exc:
        code = exc.rcvd.code if exc.rcvd else None
        record.errors.append(f"closed with {code}: {exc.rcvd.reason if exc.rcvd else exc}")


# -- one run of N streams ------------------------------------------------------------------------


@dataclass
class RunRecord:
    service: str
    streams: int
    records: list[StreamRecord]
    wall_s: float
    server_before: dict[str, Any] | None
    server_after: dict[str, Any] | None
    server_cpu: dict[str, float] | None


def plan_items(items: Sequence[EvalItem], seed: int) -> list[EvalItem]:
    """The order streams take files in: shuffled once, so N streams use the first N (cycling)."""
    ordered = list(items)
    random.Random(seed).shuffle(ordered)
    return ordered


async def run_load(
    service: str,
    url: str,
    http_url: str | None,
    n: int,
    items: Sequence[EvalItem],
    audio: dict[Path, np.ndarray],
    options: Options,
    server_pid: int | None,
) -> RunRecord:
    offsets = random.Random(options.seed * 1_000_003 + n)
    records = [StreamRecord(items[i % len(items)], offsets.uniform(0, options.stagger_s)) for i in range(n)]
    progress = Progress(f"{service} N={n}", n, sum(audio[r.item.path].size / SAMPLE_RATE for r in records))
    before = await fetch_json(http_url, "/metrics/summary")
    sampler = CpuSampler(server_pid) if server_pid else None
    began = time.monotonic()
    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(progress.run())
        cpu_task = group.create_task(sampler.run()) if sampler else None
        target = stream_url(url, options)
        await asyncio.gather(*(play_stream(target, r, audio[r.item.path], options, progress) for r in records))
        ticker.cancel()
        if cpu_task:
            cpu_task.cancel()
    progress.render(final=True)
    wall = time.monotonic() - began
    after = await fetch_json(http_url, "/metrics/summary")
    return RunRecord(service, n, records, wall, before, after, sampler.summary() if sampler else None)


async def fetch_json(http_url: str | None, path: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """GET a JSON object; None when there is no such endpoint (404) or it cannot be read."""
    if not http_url:
        return None

    def get() -> dict[str, Any] | None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(http_url.rstrip("/") + path, headers=headers or {})
        try:
            with opener.open(request, timeout=5) as response:
                data = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    return await asyncio.to_thread(get)


def http_base(ws_url: str) -> str:
    """ws://host:port/v1/listen -> http://host:port; an app under a route prefix keeps it (…/unbatched/v1/listen)."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    prefix = parts.path.removesuffix("/").removesuffix("/v1/listen")
    return urllib.parse.urlunsplit((scheme, parts.netloc, prefix, "", ""))


# -- the unbatched comparison: reconfigure the running application -----------------------------


def serve_api_base(ws_url: str) -> str:
    """The Ray dashboard (Serve's REST API): $RAY_DASHBOARD_ADDRESS, where `serve deploy` also looks (README: a
    cluster by hand), else the service's host at port 8265."""
    if address := os.environ.get("RAY_DASHBOARD_ADDRESS", "").strip():
        return address if "://" in address else f"http://{address}"
    host = urllib.parse.urlsplit(ws_url).hostname or "127.0.0.1"
    return f"http://{host}:8265"


def batching_configs(details: dict[str, Any], ws_url: str, max_batch_size: int = 1) -> tuple[str, dict, dict]:
    """From ``GET /api/serve/applications/``: the app serving ``ws_url``, the deploy body that
    restores today's config and the one whose Whisper ``user_config`` sets ``max_batch_size``.

    The app is the one whose route prefix is the longest prefix of the URL's path. Every
    application deployed from a config is kept in both bodies (a deploy replaces them all).
    """
    path = urllib.parse.urlsplit(ws_url).path.removesuffix("/v1/listen") or "/"
    apps = details.get("applications") or {}
    declared = {name: app for name, app in apps.items() if app.get("deployed_app_config")}
    if not declared:
        raise ValueError("no application deployed from a config (serve run/deploy serve.yaml) to reconfigure")

    def matches(app: dict[str, Any]) -> bool:
        prefix = (app.get("route_prefix") or "/").rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or not prefix

    serving = [name for name, app in declared.items() if matches(app)]
    if not serving:
        raise ValueError(f"no deployed application serves {path!r}")
    target = max(serving, key=lambda name: len(declared[name].get("route_prefix") or "/"))
    original = {"applications": [declared[name]["deployed_app_config"] for name in declared]}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            original[key] = details[key]
    changed = json.loads(json.dumps(original))
    for app in changed["applications"]:
        if app.get("name") == target:
            # In the Whisper deployment's user_config, not in args: args are part of the app's code version, so
            # changing them restarts every replica; a user_config change is applied by reconfigure() in place.
            batching = {**((app.get("args") or {}).get("batching") or {}), "max_batch_size": max_batch_size}
            deployments = app.setdefault("deployments", [])
            whisper = next((d for d in deployments if d.get("name") == "Whisper"), None)
            if whisper is None:
                deployments.append(whisper := {"name": "Whisper"})
            whisper["user_config"] = batching
    return target, original, changed


def ray_auth_headers() -> dict[str, str]:
    """Ray's own token for its dashboard, where token authentication is on: $RAY_AUTH_TOKEN, else the file at
    $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, in Ray's order (what `serve deploy` sends with RAY_AUTH_MODE=token).
    None found: no header."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def put_config(url: str, body: dict[str, Any]) -> None:
    """PUT a deploy config to Serve's REST API, as `serve deploy` does."""

    def put() -> None:
        headers = {"Content-Type": "application/json", **ray_auth_headers()}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT", headers=headers)
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise SystemExit(f"PUT {url} failed: {exc}") from exc

    await asyncio.to_thread(put)


async def wait_for_batch_size(http_url: str, size: int, timeout_s: float = 180.0) -> None:
    """Until ``/metrics/summary`` reports ``max_batch_size == size`` (every replica reconfigured)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        summary = await fetch_json(http_url, "/metrics/summary")
        if summary is not None and _flat(summary).get("max_batch_size") == size:
            return
        await asyncio.sleep(1.0)
    raise SystemExit(f"the service at {http_url} did not report max_batch_size {size} within {timeout_s:g} s")


class CpuSampler:
    """CPU% of a process and all its descendants (Ray workers are), sampled each second from /proc.

    100% is one core fully busy. psutil is used where installed; otherwise Linux /proc.
    """

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _cpu_seconds(self) -> dict[int, float]:
        children: dict[int, list[int]] = {}
        times: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry)
            children.setdefault(int(fields[1]), []).append(pid)
            times[pid] = (int(fields[11]) + int(fields[12])) / self._ticks
        tree, todo = {}, [self.pid]
        while todo:
            pid = todo.pop()
            if pid in times:
                tree[pid] = times[pid]
            todo.extend(children.get(pid, []))
        return tree

    async def run(self) -> None:
        previous, then = self._cpu_seconds(), time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            current, now = self._cpu_seconds(), time.monotonic()
            busy = sum(max(0.0, t - previous.get(pid, 0.0)) for pid, t in current.items())
            self.samples.append(100.0 * busy / (now - then))
            previous, then = current, now

    def summary(self) -> dict[str, float] | None:
        if not self.samples:
            return None
        return {"mean_percent": sum(self.samples) / len(self.samples), "max_percent": max(self.samples)}


# -- analysis ----------------------------------------------------------------------------------


def analyze_stream(record: StreamRecord, offline_text: str | None, options: Options) -> dict[str, Any]:
    started = record.started if record.started is not None else 0.0
    hypothesis = bm.transcript(record.messages)
    points = bm.final_lags(record.messages, started, options.speed) if record.started is not None else []
    onsets = bm.onset_lags(record.messages, started, options.speed) if record.started is not None else []
    word_lags = bm.word_lags(record.messages, started, options.speed) if record.started is not None else []
    keep = bm.keep_up(points)
    errors = bm.word_errors(record.item.text, hypothesis)
    offline = bm.word_errors(record.item.text, offline_text) if offline_text is not None else None
    duration = record.end_duration if record.end_duration is not None else record.sent_s
    return {
        "id": record.item.id,
        "subset": record.item.subset,
        "duration_s": record.item.duration_s,
        "offset_s": round(record.offset_s, 3),
        "failed": record.failed,
        "errors": record.errors,
        "close_code": record.close_code,
        "connect_s": record.connect_s,
        "max_send_late_s": round(record.max_send_late_s, 3),
        "end_duration_s": record.end_duration,
        "end_lag_s": (record.end_at - started - duration / options.speed) if record.end_at and record.started else None,
        "finals": sum(1 for m in record.messages if m.type == "final"),
        "partials": sum(1 for m in record.messages if m.type == "partial"),
        "out_of_order_finals": bm.out_of_order_finals(record.messages),
        "word_errors": asdict(errors),
        "wer": errors.wer,
        "offline_word_errors": asdict(offline) if offline else None,
        "offline_wer": offline.wer if offline else None,
        "final_lag": asdict(bm.summarize([p.lag for p in points])),
        "final_lags": [{"audio_end": p.audio_end, "due": p.due, "lag": p.lag} for p in points],
        "word_final_lag": asdict(bm.summarize(word_lags)),
        "word_final_lags": word_lags,
        "first_text_lag": asdict(bm.summarize(onsets)),
        "first_text_lags": onsets,
        "kept_up": keep.kept_up,
        "lag_slope": keep.slope,
        "lag_growth_s": keep.growth,
        "reference": record.item.text,
        "hypothesis": hypothesis,
        "offline_hypothesis": offline_text,
    }


def analyze_run(run: RunRecord, offline: dict[Path, str] | None, options: Options) -> dict[str, Any]:
    streams = [analyze_stream(r, offline.get(r.item.path) if offline else None, options) for r in run.records]
    lags = [p["lag"] for s in streams for p in s["final_lags"]]
    onsets = [lag for s in streams for lag in s["first_text_lags"]]
    word_lags = [lag for s in streams for lag in s["word_final_lags"]]
    streaming = sum((bm.WordErrors(**s["word_errors"]) for s in streams), bm.NO_ERRORS)
    offline_errors = (
        sum((bm.WordErrors(**s["offline_word_errors"]) for s in streams), bm.NO_ERRORS) if offline is not None else None
    )
    return {
        "service": run.service,
        "streams": run.streams,
        "wall_s": run.wall_s,
        "failed_streams": sum(s["failed"] for s in streams),
        "kept_up_streams": sum(s["kept_up"] for s in streams),
        "wer": streaming.wer,
        "offline_wer": offline_errors.wer if offline_errors else None,
        "final_lag": asdict(bm.summarize(lags)),
        "first_text_lag": asdict(bm.summarize(onsets)),
        "word_final_lag": asdict(bm.summarize(word_lags)),
        "max_send_late_s": max((s["max_send_late_s"] for s in streams), default=0.0),
        "server": {
            "cpu": run.server_cpu,
            "summary_before": run.server_before,
            "summary_after": run.server_after,
            **server_figures(run.server_before, run.server_after),
        },
        "per_stream": streams,
    }


def server_figures(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """What the service did during a run, from two readings of /metrics/summary's cumulative counters.

    Reads ``batch_sizes`` ({size: batches}), ``batches``, ``decode_seconds`` and ``max_batch_size``
    at the top level or one object down (the service nests them under ``whisper``).
    """
    if after is None:
        return {"batch_sizes": None}
    later, earlier = _flat(after), _flat(before or {})
    figures: dict[str, Any] = {"batch_sizes": None, "max_batch_size": later.get("max_batch_size")}
    for key in ("batch_sizes", "batch_size_histogram"):
        if key in later:
            figures["batch_sizes"] = bm.histogram_delta(earlier.get(key), later[key])
            break
    for key in ("batches", "decode_seconds"):
        if isinstance(later.get(key), int | float):
            figures[key] = bm.counter_delta(earlier.get(key), later[key])
    histogram = figures["batch_sizes"]
    if histogram:
        figures["mean_batch_size"] = sum(size * count for size, count in histogram.items()) / sum(histogram.values())
    return figures


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for value in summary.values():
        if isinstance(value, dict):
            flat.update(value)
    flat.update(summary)
    return flat


def load_point(run: dict[str, Any]) -> bm.LoadPoint:
    return bm.LoadPoint(run["streams"], run["final_lag"]["p95"], run["wer"], run["offline_wer"], run["failed_streams"])


# -- report ----------------------------------------------------------------------------------


def _s(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    criteria = results["criteria"]
    lines = [
        f"Load benchmark: {results['config']['subsets']} audio, speed {results['config']['speed']:g}×, "
        f"{results['config']['chunk_s']:g} s chunks ({results['config']['encoding']}); "
        f"SLO p95 final lag ≤ {criteria['slo_s']:g} s, WER ≤ {criteria['wer_ratio']:g} × offline"
        + (f" + {criteria['wer_slack']:g}" if criteria["wer_slack"] else ""),
        "",
        "| service | N | failed | final lag p50 / p95 / max (s) | word final lag p50 / p95 (s) "
        "| first text p50 / p95 (s) | WER stream / offline | kept up | server CPU mean / max | mean batch | verdict |",
        "| --- | ---: | ---: | --- | --- | --- | --- | ---: | --- | ---: | --- |",
    ]
    for run in results["runs"]:
        lag, first, cpu, server = run["final_lag"], run["first_text_lag"], run["server"]["cpu"], run["server"]
        words = run.get("word_final_lag") or {"p50": None, "p95": None}
        verdict = run["verdict"]
        lines.append(
            f"| {run['service']} | {run['streams']} | {run['failed_streams']} "
            f"| {_s(lag['p50'])} / {_s(lag['p95'])} / {_s(lag['max'])} | {_s(words['p50'])} / {_s(words['p95'])} "
            f"| {_s(first['p50'])} / {_s(first['p95'])} "
            f"| {_s(run['wer'], 3)} / {_s(run['offline_wer'], 3)} | {run['kept_up_streams']}/{run['streams']} "
            f"| {(_s(cpu['mean_percent'], 0) + ' / ' + _s(cpu['max_percent'], 0) + ' %') if cpu else '–'} "
            f"| {_s(server.get('mean_batch_size'), 1)} "
            f"| {'pass' if verdict['passed'] else 'FAIL: ' + '; '.join(verdict['reasons'])} |"
        )
    lines.append("")
    for service, value in results["capacity"].items():
        lines.append(
            f"- **Capacity ({service})**: {f'{value} streams' if value is not None else 'below the smallest N tried'}"
        )
    if "comparison" in results:
        lines += [
            "",
            "| N | p95 final lag batched / unbatched (s) | unbatched ÷ batched | WER batched / unbatched |",
            "| ---: | --- | ---: | --- |",
        ]
        for row in results["comparison"]["rows"]:
            lines.append(
                f"| {row['streams']} | {_s(row['p95_batched'])} / {_s(row['p95_unbatched'])} | {_s(row['lag_ratio'])} "
                f"| {_s(row['wer_batched'], 3)} / {_s(row['wer_unbatched'], 3)} |"
            )
        ratio = results["comparison"]["capacity_ratio"]
        lines.append(f"\nCapacity batched ÷ unbatched: {_s(ratio) + '×' if ratio is not None else '–'}")
    for warning in results.get("warnings", []):
        lines.append(f"\n> warning: {warning}")
    lines += ["", "| users | final lag min–max (avg) | first text min–max (avg) |", "| ---: | --- | --- |"]
    for run in results["runs"]:
        if run["service"] != "batched":
            continue
        lines.append(f"| {run['streams']} | {_span(run['final_lag'])} | {_span(run['first_text_lag'])} |")
    return "\n".join(lines) + "\n"


def _span(summary: dict[str, Any]) -> str:
    if not summary["count"]:
        return "–"
    return f"{summary['min']:.2f}–{summary['max']:.2f} s ({summary['mean']:.2f} s)"


def comparison(runs: Sequence[dict[str, Any]], capacities: dict[str, int | None]) -> dict[str, Any]:
    by = {(r["service"], r["streams"]): r for r in runs}
    rows = []
    for n in sorted({r["streams"] for r in runs}):
        b, u = by.get(("batched", n)), by.get(("unbatched", n))
        if not b or not u:
            continue
        pb, pu = b["final_lag"]["p95"], u["final_lag"]["p95"]
        rows.append(
            {
                "streams": n,
                "p95_batched": pb,
                "p95_unbatched": pu,
                "lag_ratio": pu / pb if pb and pu is not None else None,
                "wer_batched": b["wer"],
                "wer_unbatched": u["wer"],
            }
        )
    cb, cu = capacities.get("batched"), capacities.get("unbatched")
    return {"rows": rows, "capacity_ratio": cb / cu if cb and cu else None}


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    services = sorted({r["service"] for r in results["runs"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for service in services:
        runs = [r for r in results["runs"] if r["service"] == service and r["final_lag"]["count"]]
        ns = [r["streams"] for r in runs]
        ax.plot(ns, [r["final_lag"]["p95"] for r in runs], "o-", label=f"{service} final p95")
        ax.plot(ns, [r["final_lag"]["p50"] for r in runs], "o--", label=f"{service} final p50")
        firsts = [r for r in runs if r["first_text_lag"]["count"]]
        ax.plot(
            [r["streams"] for r in firsts],
            [r["first_text_lag"]["p95"] for r in firsts],
            "x:",
            label=f"{service} first text p95",
        )
    ax.axhline(results["criteria"]["slo_s"], color="red", linewidth=0.8, label="SLO")
    ax.set(xlabel="concurrent streams", ylabel="lag (s)", title="Lag vs load")
    _stream_axis(ax, results)
    written.append(_save(fig, ax, out / "lag_vs_n.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for service in services:
        runs = [r for r in results["runs"] if r["service"] == service]
        ax.plot([r["streams"] for r in runs], [r["wer"] for r in runs], "o-", label=f"{service} streaming")
    offline = [r for r in results["runs"] if r["service"] == services[0] and r["offline_wer"] is not None]
    if offline:
        ns = [r["streams"] for r in offline]
        ax.plot(ns, [r["offline_wer"] for r in offline], "s--", color="gray", label="offline (same files)")
        ratio = results["criteria"]["wer_ratio"]
        ax.plot(
            ns,
            [ratio * r["offline_wer"] + results["criteria"]["wer_slack"] for r in offline],
            ":",
            color="red",
            label="limit",
        )
    ax.set(xlabel="concurrent streams", ylabel="WER", title="WER vs load")
    _stream_axis(ax, results)
    written.append(_save(fig, ax, out / "wer_vs_n.png"))

    histograms = [(r, r["server"]["batch_sizes"]) for r in results["runs"] if r["server"]["batch_sizes"]]
    if histograms:
        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.8 / len(histograms)
        for i, (run, hist) in enumerate(histograms):
            counts = {int(size): count for size, count in hist.items()}
            sizes = sorted(counts)
            ax.bar(
                [s - 0.4 + width * (i + 0.5) for s in sizes],
                [counts[s] for s in sizes],
                width,
                label=f"{run['service']} N={run['streams']}",
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


def _stream_axis(ax: Any, results: dict[str, Any]) -> None:
    """Log-2 x axis labelled with the stream counts actually run."""
    ns = sorted({r["streams"] for r in results["runs"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service WebSocket URL (default {DEFAULT_URL})")
    parser.add_argument("--http-url", help="service HTTP base for /metrics/summary (default: from --url)")
    parser.add_argument("--manifest", type=Path, help="eval manifest (default $ASR_EVAL_DIR/manifest.jsonl)")
    parser.add_argument("--subset", default="short,long", help="comma-separated subsets (default short,long)")
    parser.add_argument("--ids", help="comma-separated manifest ids: only these items (of --subset)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--streams", type=int, default=1, help="concurrent streams for a single run")
    load.add_argument("--sweep", help="comma-separated stream counts, e.g. 1,2,4,8; reports capacity")
    load.add_argument("--survey", action="store_true", help="runs 1, 3 and 15 streams (the seed survey's view)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1 = real time)")
    parser.add_argument("--chunk", type=float, default=1.0, help="seconds of audio per binary frame")
    parser.add_argument("--encoding", choices=["s16le", "f32le"], default="s16le")
    parser.add_argument("--language", default="en", help="language query parameter ('' to leave it out)")
    parser.add_argument("--token", default=os.environ.get("ASR_API_KEY"), help="API key (default $ASR_API_KEY)")
    parser.add_argument("--stagger", type=float, default=1.0, help="streams start at random offsets in [0, this) s")
    parser.add_argument("--seed", type=int, default=0, help="seeds the file order and the start offsets")
    parser.add_argument("--slo", type=float, default=2.0, help="p95 final lag limit, seconds")
    parser.add_argument("--wer-ratio", type=float, default=1.10, help="WER limit as a multiple of offline WER")
    parser.add_argument("--wer-slack", type=float, default=0.0, help="absolute WER added to that limit")
    parser.add_argument("--end-timeout", type=float, default=60.0, help="seconds to wait for end after the audio")
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


async def bench(args: argparse.Namespace) -> dict[str, Any]:
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
    used = list(dict.fromkeys(items[i % len(items)] for i in range(max(args.stream_counts))))
    audio = {item.path: read_pcm16(item.path) for item in used}

    services = [("batched", args.url, args.http_url or http_base(args.url), args.server_pid)]
    reconfigure: tuple[str, dict[str, Any], dict[str, Any]] | None = None
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
        from serve.offline import OfflineTranscriber

        transcriber = OfflineTranscriber()
        missing = [item for item in used if transcriber.cached(item.path) is None]
        if missing:
            print(f"offline reference: transcribing {len(missing)} file(s) once (cached)…", file=sys.stderr, flush=True)
        offline = await asyncio.to_thread(transcriber.transcribe_all, [item.path for item in used])

    runs: list[dict[str, Any]] = []
    warnings: list[str] = []
    async def sweep(name: str, url: str, http_url: str, pid: int | None) -> None:
        for index, n in enumerate(args.stream_counts):
            if index or runs:
                await asyncio.sleep(args.cooldown)
            record = await run_load(name, url, http_url, n, items, audio, options, pid)
            run = analyze_run(record, offline, options)
            verdict = bm.judge(load_point(run), args.slo, args.wer_ratio, args.wer_slack)
            run["verdict"] = {"passed": verdict.passed, "reasons": list(verdict.reasons)}
            runs.append(run)
            if name == "unbatched" and run["server"].get("max_batch_size") not in (None, 1):
                warnings.append(f"{url} reports max_batch_size {run['server']['max_batch_size']}, not 1")
                print(f"warning: {warnings[-1]}", file=sys.stderr)
            lag = run["final_lag"]
            print(
                f"{name} N={n}: final lag p50 {_s(lag['p50'])} p95 {_s(lag['p95'])} max {_s(lag['max'])} s "
                f"(per word p95 {_s(run['word_final_lag']['p95'])} s), "
                f"WER {_s(run['wer'], 3)} (offline {_s(run['offline_wer'], 3)}), failed {run['failed_streams']}, "
                f"kept up {run['kept_up_streams']}/{n} -> {'pass' if verdict.passed else 'FAIL'}",
                file=sys.stderr,
                flush=True,
            )

    for name, url, http_url, pid in services:
        if name != "unbatched" or reconfigure is None:
            await sweep(name, url, http_url, pid)
            continue
        original_batch = _flat(await fetch_json(http_url, "/metrics/summary") or {}).get("max_batch_size")
        print("reconfiguring the application to max_batch_size 1…", file=sys.stderr, flush=True)
        await put_config(reconfigure[0], reconfigure[2])
        try:
            await wait_for_batch_size(http_url, 1)
            await sweep(name, url, http_url, pid)
        finally:
            print("deploying the original config back…", file=sys.stderr, flush=True)
            await put_config(reconfigure[0], reconfigure[1])
            if isinstance(original_batch, int):
                await wait_for_batch_size(http_url, original_batch)

    capacities = {
        name: bm.capacity(
            [load_point(r) for r in runs if r["service"] == name], args.slo, args.wer_ratio, args.wer_slack
        )
        for name, *_ in services
    }
    results: dict[str, Any] = {
        "config": {
            "url": args.url,
            "unbatched_url": args.unbatched_url if args.compare_unbatched else None,
            "unbatched_by": (
                None if not args.compare_unbatched else "second deployment" if args.unbatched_url else "reconfigure"
            ),
            "manifest": str(manifest),
            "subsets": subsets,
            "stream_counts": args.stream_counts,
            **asdict(options),
        },
        "criteria": {"slo_s": args.slo, "wer_ratio": args.wer_ratio, "wer_slack": args.wer_slack},
        "runs": runs,
        "capacity": capacities,
        "warnings": list(dict.fromkeys(warnings)),
    }
    if args.compare_unbatched:
        results["comparison"] = comparison(runs, capacities)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(bench(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=1, default=str))
    table = markdown(results)
    (args.out / "bench.md").write_text(table)
    written = [] if args.no_plots else plot(results, args.out)
    print(table)
    print(
        f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'}" + "".join(f", {p}" for p in written),
        file=sys.stderr,
    )
    return 0 if all(r["failed_streams"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
