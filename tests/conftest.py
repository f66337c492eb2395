"""Shared fixtures: the evaluation audio (by path), the real model, the real VAD."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from serve.bench.eval_set import EvalItem, eval_dir, load_items
from serve.deploy.app import PROXY_ENV

# The service fixture builds the application here, in the driver, and the handles it binds take their transport
# from this process's Serve settings: without this they would be Ray actor calls, where `serve run`/`serve deploy`
# (which build the application with serve.yaml's runtime_env) make gRPC ones. Serve's proxy, which takes its settings
# from the node, hands WebSocket messages to the Ingress over gRPC, as scripts/run.sh and the README's cluster start it.
os.environ.update({"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", **PROXY_ENV})

REPO = Path(__file__).resolve().parent.parent
RAY_MARKERS = {"serve", "browser", "cluster"}


@pytest.fixture(scope="session")
def manifest() -> list[EvalItem]:
    items = load_items()
    assert items, f"no evaluation audio under {eval_dir()} (set ASR_EVAL_DIR)"
    return items


@pytest.fixture(scope="session")
def by_id(manifest: list[EvalItem]) -> dict[str, EvalItem]:
    return {item.id: item for item in manifest}


@pytest.fixture(scope="session")
def engine():
    """The bundled model on CPU, one thread: on this 2-core machine a decode takes 0.32 s with one thread and 0.44 s
    with CTranslate2's default (measured on 12 short clips), and the words are the same."""
    from serve.core.engine import BatchedWhisper, EngineOptions

    return BatchedWhisper(EngineOptions(cpu_threads=1))


@pytest.fixture(scope="session")
def vad():
    from serve.core.vad import SileroVad

    return SileroVad()


@pytest.fixture
def processor(vad):
    from serve.core.stream import StreamProcessor

    return StreamProcessor(vad=vad)


def pcm16(path: Path) -> np.ndarray:
    from serve.core.audio import load_audio, to_int16

    return to_int16(load_audio(path))


# -- the running application (one Ray instance and one Serve app for the whole session) ----


@dataclass
class Service:
    http: str
    ws: str
    args: dict
    api_key: str | None = None
    """The key to present where the deployment requires one (``/metrics/summary``, like a stream)."""

    def summary(self) -> dict:
        import urllib.request

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(f"{self.http}/metrics/summary", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def health(self, timeout: float = 30) -> tuple[int, dict]:
        """``GET /healthz``: its status code and JSON body (a 503 is an answer too, not an exception)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.http}/healthz", timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def redeploy(self, args: dict) -> None:
        """What `serve deploy` does with an edited serve.yaml: same app, new args."""
        from ray import serve

        from serve.deploy.app import build_app

        serve.run(build_app(args), name="asr", route_prefix="/", blocking=False)
        self.args = args


def with_api_key(service: Service, key: str):  # type: ignore[no-untyped-def]
    """For a fixture: the service requiring one API key (the Ingress reconfigures; nothing restarts), restored after."""
    import copy

    from serve.core.auth import key_digest

    original = service.args
    args = copy.deepcopy(original)
    args["auth"] = {**args.get("auth", {}), "api_keys": [key_digest(key)]}
    service.redeploy(args)
    service.api_key = key
    try:
        yield service
    finally:
        service.api_key = None
        service.redeploy(original)


def serve_yaml() -> dict:
    import yaml

    return yaml.safe_load((REPO / "serve.yaml").read_text())


def free_port() -> int:
    """A port free now, outside the kernel's ephemeral range (32768-60999) and Ray's worker ports (10002-19999).

    A port the kernel hands out for port 0 could be handed again, between this call and the bind by the server it
    is meant for, to one of the processes Ray starts meanwhile (CI once saw a cluster node's metrics agent fail
    with "Address already in use"); a port from this range is never handed out for port 0."""
    import random
    import socket

    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


@pytest.fixture(scope="session")
def service():
    import ray
    from ray import serve

    from serve.deploy.app import build_app

    port = free_port()
    # address="local": always a Ray of its own, never a cluster already running here (a `serve run`, `ray start`).
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = serve_yaml()["applications"][0]["args"]
    serve.run(build_app(args), name="asr", route_prefix="/")
    yield Service(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/listen", args)
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def service_url(service: Service) -> str:
    return service.http


@dataclass
class LongRun:
    """One undisturbed stream of the 97 s multi-speaker file at 4x real time (the service's ``max_speed``): the
    yardstick for disturbed runs."""

    item: EvalItem
    audio: np.ndarray
    result: object  # serve.client.Transcript
    decodes: dict[str, int]
    """Whisper's decodes while it ran, by kind (final, partial, eager): all of them this stream's."""
    payload: dict[str, int]
    """Bytes of the Ingress's calls to the BufferManager and their answers while it ran (one Ingress replica)."""
    speed: float = 4.0


@pytest.fixture(scope="session")
def long_run(service: Service, by_id: dict[str, EvalItem]) -> LongRun:
    import asyncio

    from serve.client import stream_file
    from serve.core.audio import load_audio

    item = by_id["ls-multispeaker-stream"]
    audio = load_audio(item.path)
    before = service.summary()
    result = asyncio.run(stream_file(audio, service.ws, speed=LongRun.speed))
    after = service.summary()
    return LongRun(
        item, audio, result, kinds_since(before["whisper"]["decodes_by_kind"], after["whisper"]["decodes_by_kind"]),
        kinds_since(before["ingress"]["payload_bytes"], after["ingress"]["payload_bytes"]),
    )


def kinds_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counts by kind added between two ``/metrics/summary`` readings (one Whisper replica)."""
    return {kind: after[kind] - before.get(kind, 0) for kind in after if after[kind] > before.get(kind, 0)}


def check_finals(finals: list[dict], duration: float) -> None:
    """Finals are in order, never overlap and stay inside the audio."""
    end = 0.0
    for final in finals:
        assert end <= final["start"] <= final["end"] <= duration + 1e-3, final
        end = final["end"]


TIMING_SPREAD_ERRORS = 4
"""How many word errors chunk timing alone moves the long file by, plus one. The service merges a stream's chunks
while a call is in flight, so two undisturbed runs decode different windows: fed 1 s chunks, or 2 s ones at random
as a busy server merges them, 13 runs gave 12 to 15 errors in its 232 words (deletions 4 in every run, insertions
0 to 2). A lost or doubled final moves them further: check_finals catches a doubled one, the deletion bound a lost one."""


def check_errors(reference: str, text: str, baseline: str, what: str) -> None:
    """``text`` is as accurate as ``baseline`` (1.10x its word errors) up to the spread of chunk timing, and lost no
    more words than it (deletions) nor said any more twice (insertions) beyond that spread."""
    from serve.bench.scoring import word_errors

    hit, calm = word_errors(reference, text), word_errors(reference, baseline)
    print(f"{what}: {hit.errors} errors (del {hit.deletions}, ins {hit.insertions}) vs {calm.errors} "
          f"(del {calm.deletions}, ins {calm.insertions}) in {calm.reference_words} words")
    assert hit.errors <= 1.10 * calm.errors + TIMING_SPREAD_ERRORS, (hit, calm)
    assert hit.deletions <= calm.deletions + 2 and hit.insertions <= calm.insertions + 3, (hit, calm)


def wait_for(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll ``condition`` every 0.5 s until it returns something true (returned), or fail after ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def ray_processes(ray_tmp: Path, variable: str, marker: str) -> list:
    """Every process of a Ray started for one test: ``ray_tmp`` (its RAY_TMPDIR) in its command line or ``marker`` in
    its environment variable ``variable``, and their descendants (Ray's agents rewrite their environment and command
    line); never this process or its parents."""
    import psutil

    own = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = {}
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            ours = any(str(ray_tmp) in arg for arg in process.info["cmdline"] or [])
            ours = ours or process.environ().get(variable) == marker
            if ours and process.pid not in own:
                found[process.pid] = process
                found.update((child.pid, child) for child in process.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return list(found.values())


def end_ray_processes(ray_tmp: Path, variable: str, marker: str) -> None:
    """End by PID every process ``ray_processes`` finds (never ``ray stop``, which would stop every Ray on the host):
    terminated, then killed 5 s later; three rounds, as a raylet may start an agent again while it is being stopped."""
    import psutil

    for _ in range(3):
        processes = ray_processes(ray_tmp, variable, marker)
        if not processes:
            return
        for process in processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=5)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)


def replica_actors(deployment: str) -> list:
    """Handles of the live replicas of one deployment of the ``asr`` application."""
    import ray

    return [
        ray.get_actor(a["name"], namespace=a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::asr#{deployment}#")
    ]


async def kill_when_busy(deployment: str, timeout: float = 120, settle_s: float = 0.1) -> str:
    """``ray.kill`` a replica of ``deployment`` (Serve starts a new one) while it has a request in flight, so the
    kill lands mid-call; returns the killed actor's id.

    The replica must still be busy ``settle_s`` after it was first seen busy: a replica that dies while it is only
    accepting a request (the first milliseconds) makes Serve's router send that request elsewhere by itself, and
    the caller never sees the death."""
    import asyncio
    import time

    import ray

    async def busy(actor) -> bool:  # type: ignore[no-untyped-def]
        try:
            ref = actor.get_num_ongoing_requests.remote()
            return bool(await asyncio.wait_for(asyncio.wrap_future(ref.future()), 5))
        except (ray.exceptions.RayActorError, TimeoutError):
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            actors = await asyncio.to_thread(replica_actors, deployment)
        except ValueError:  # one died between listing and lookup
            actors = []
        for actor in actors:
            if await busy(actor):
                await asyncio.sleep(settle_s)
                if await busy(actor):
                    ray.kill(actor, no_restart=True)
                    return actor._ray_actor_id.hex()
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {deployment} replica had a request in flight within {timeout:g} s")


def ray_log_lines(needle: str) -> list[str]:
    """Lines holding ``needle`` in the Serve logs this session's Ray instance wrote (replicas, proxy, controller)."""
    import ray

    found = []
    for path in (Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve").glob("*.log"):
        found += [line for line in path.read_text(errors="replace").splitlines() if needle in line]
    return found


def actor_pid(actor) -> int:  # type: ignore[no-untyped-def]
    import os

    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The multi-node cluster tests run first: a process joins one Ray cluster at a time, and the
    single-node ``service`` lives until the session ends once something has started it. Every test that starts
    no Ray is marked ``inprocess``: ``pytest -m inprocess`` runs them alone, quickly."""
    items.sort(key=lambda item: item.path.name != "test_cluster.py")
    for item in items:
        if not RAY_MARKERS & {mark.name for mark in item.iter_markers()}:
            item.add_marker(pytest.mark.inprocess)
