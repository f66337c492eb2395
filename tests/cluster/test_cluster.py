"""Scale-out on a real multi-node Ray cluster, built on this one machine (``ray.cluster_utils.Cluster``).

A head node without GPUs and two worker nodes that each declare one GPU. Ray places and pins
replicas by declared GPUs as it does on GPU nodes (each replica gets CUDA_VISIBLE_DEVICES); this
machine has no CUDA, so the engine then runs on CPU. The application is deployed the way users deploy
it, ``serve run CONFIG`` (Ray's CLI), with serve.yaml's config changed only where a 2-core test needs
it: the port, replica counts for three nodes and short autoscaling delays. Each worker node's proxy
listens on its own port (RAY_SERVE_WORKER_PROXY_HTTP_PORT) so a stream can be sent through a chosen node.

These tests run before the session's single-node service (conftest orders them): one process
can be connected to one Ray cluster at a time.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from serve.bench.offline import OfflineTranscriber
from serve.bench.scoring import word_errors
from serve.client import stream_file
from serve.core.audio import load_audio
from tests.conftest import REPO, check_finals, free_port, serve_yaml, wait_for

pytestmark = pytest.mark.serve

APP = "asr"
FAST_AUTOSCALING = {"metrics_interval_s": 0.5, "look_back_period_s": 2.0, "upscale_delay_s": 1.0, "downscale_delay_s": 4.0}
LOAD = ["sonnet-001", "sonnet-002", "sonnet-003", "dagon-par1"]


def cluster_config(port: int) -> dict:
    """serve.yaml for three small nodes: three Ingress replicas (one per node), up to two Whisper and BufferManager."""
    config = serve_yaml()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["args"]["placement"]["whisper_cpus"] = 0.5
    for deployment in app["deployments"]:
        if deployment["name"] == "Ingress":
            del deployment["autoscaling_config"]
            deployment["num_replicas"] = 3  # with max_replicas_per_node: 1, one on each node
        else:
            deployment["autoscaling_config"].update(
                min_replicas=1, max_replicas=2, target_ongoing_requests=1, **FAST_AUTOSCALING
            )
    return config


@dataclass
class ClusterService:
    cluster: object  # ray.cluster_utils.Cluster
    head_url: str
    worker_urls: dict[str, str]
    """node id -> ws URL of that worker node's proxy."""
    metrics_ports: list[int]

    def metrics(self) -> str:
        """Every node's Prometheus export, concatenated."""
        pages = []
        for port in self.metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    pages.append(response.read().decode())
            except OSError:  # a removed node
                pass
        return "\n".join(pages)


def running(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def placements(deployment: str) -> list[dict]:
    """Node, assigned GPUs and CUDA_VISIBLE_DEVICES of each live replica of ``deployment``."""
    import ray

    from tests.conftest import replica_actors

    def where(self):  # type: ignore[no-untyped-def]
        import os

        import ray

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    found = []
    for actor in replica_actors(deployment):
        try:
            found.append(ray.get(actor.__ray_call__.remote(where), timeout=30))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # a replica that died with its node and is still being cleaned up
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> ClusterService:  # type: ignore[no-untyped-def]
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.schema import ApplicationStatus

    assert not ray.is_initialized(), "the cluster tests must run before the single-node service starts"
    saved = dict(os.environ)
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # export custom metrics every second
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved.get("PYTHONPATH")]))
    http, metrics_ports = free_port(), [free_port() for _ in range(3)]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "metrics_export_port": metrics_ports[0]},
    )
    worker_urls = {}
    try:
        for metrics_port in metrics_ports[1:]:
            proxy_port = free_port()
            os.environ["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(proxy_port)  # read by that node's proxy
            node = cluster.add_node(num_cpus=2, num_gpus=1, metrics_export_port=metrics_port)
            worker_urls[node.node_id] = f"ws://127.0.0.1:{proxy_port}/v1/listen"
        del os.environ["RAY_SERVE_WORKER_PROXY_HTTP_PORT"]
        ray.init(address=cluster.address, log_to_driver=False)
        config = tmp_path_factory.mktemp("cluster") / "serve.yaml"
        config.write_text(yaml.safe_dump(cluster_config(http)))
        serve_cli = Path(sys.executable).parent / "serve"
        deploy = subprocess.run(
            [str(serve_cli), "run", "--address", cluster.address, "--non-blocking", str(config)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert deploy.returncode == 0, deploy.stderr[-3000:]

        def deployed() -> bool:
            apps = serve.status().applications
            return APP in apps and apps[APP].status == ApplicationStatus.RUNNING

        wait_for(deployed, 300, "the application to be RUNNING on the cluster")
        yield ClusterService(cluster, f"ws://127.0.0.1:{http}/v1/listen", worker_urls, metrics_ports)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            os.environ.clear()
            os.environ.update(saved)


def stream_all(urls: list, audios: list, speed: float = 1.0, reconnects: int = 0, during=None) -> list:  # type: ignore[no-untyped-def]
    """Stream every audio at once (each to its URL or URL list); ``during()`` is polled while they run."""

    async def main():  # type: ignore[no-untyped-def]
        tasks = [
            asyncio.create_task(stream_file(audio, url, speed=speed, reconnects=reconnects))
            for url, audio in zip(urls, audios)
        ]
        while during is not None and not all(t.done() for t in tasks):
            await asyncio.to_thread(during)
            await asyncio.sleep(0.5)
        return await asyncio.gather(*tasks)

    return asyncio.run(main())


def assert_transcribed(item, audio, result, offline: OfflineTranscriber) -> None:  # type: ignore[no-untyped-def]
    """Ended normally, finals in order, and nothing lost: WER close to the same model offline (as in test_overload:
    a stream behind decodes finals only, a little worse; a lost stretch of audio costs far more than 0.10)."""
    assert result.of_type("end") and result.close_code == 1000, (item.id, result.close_code, result.of_type("error"))
    check_finals(result.finals, audio.size / 16_000)
    streamed, reference = word_errors(item.text, result.text), word_errors(item.text, offline.transcribe(item.path))
    print(f"  {item.id}: WER {streamed.wer:.4f} (offline {reference.wer:.4f}), {result.reconnects} reconnects")
    assert streamed.wer <= reference.wer + 0.10, (item.id, streamed, reference, result.text)


def test_whisper_scales_out_one_replica_per_gpu_node_and_back(cluster: ClusterService, by_id):
    assert running("Whisper") == running("BufferManager") == 1
    items = [by_id[i] for i in LOAD]
    audios = [load_audio(item.path) for item in items]
    peak = {"Whisper": 1, "BufferManager": 1}
    spread: list[dict] = []
    started = time.monotonic()

    def watch() -> None:
        for name in peak:
            peak[name] = max(peak[name], running(name))
        if not spread and running("Whisper") == 2:
            spread.extend(placements("Whisper"))
            print(f"  Whisper at 2 replicas {time.monotonic() - started:.1f} s into the load")

    results = stream_all([cluster.head_url] * len(items), audios, speed=2.0, during=watch)
    offline = OfflineTranscriber()
    for item, audio, result in zip(items, audios, results):
        assert_transcribed(item, audio, result, offline)
    assert peak == {"Whisper": 2, "BufferManager": 2}, peak
    # One Whisper replica per GPU node, each pinned to the GPU Ray assigned it.
    assert sorted(p["node"] for p in spread) == sorted(cluster.worker_urls), spread
    assert all(p["gpus"] == ["0"] and p["cuda"] == "0" for p in spread), spread
    # CPU-only replicas see no GPU, including the Ingress replicas on the GPU nodes.
    ingress = placements("Ingress")
    assert len({p["node"] for p in ingress}) == 3, ingress
    assert all(p["gpus"] == [] and p["cuda"] == "" for p in ingress + placements("BufferManager"))
    # And back when the load is gone.
    load_over = time.monotonic()
    wait_for(lambda: running("Whisper") == 1 and running("BufferManager") == 1, 120, "scale-down to 1 replica")
    print(f"  peak {peak}; back to 1 replica {time.monotonic() - load_over:.1f} s after the load")


def metric_values(text: str, name: str, **labels: str) -> list[float]:
    """Values of the exported samples called ``name`` whose labels include ``labels``."""
    values = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            values.append(float(value))
    return values


def test_metrics_are_exported_by_every_node(cluster: ClusterService, by_id):
    item = by_id["ls-1089-134686-0000"]
    audio = load_audio(item.path)
    before = cluster.metrics()

    def total(text: str, name: str, **labels: str) -> float:
        return sum(metric_values(text, name, application=APP, **labels))

    async def bad_then_good():  # type: ignore[no-untyped-def]
        import websockets

        async with websockets.connect(f"{cluster.head_url}?sample_rate=16000&encoding=s16le") as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send("not json")
            assert json.loads(await ws.recv())["code"] == "bad_message"
        return await stream_file(audio, cluster.head_url, speed=0)

    result = asyncio.run(bad_then_good())
    assert result.finals
    names = {
        "ray_asr_streams_total": 2,
        "ray_asr_audio_seconds_total": audio.size / 16_000 * 0.99,
        "ray_asr_finals_total": len(result.finals),
        "ray_asr_final_lag_seconds_count": len(result.finals),
        "ray_asr_batch_size_count": 1,
        "ray_asr_decode_seconds_count": 1,
        "ray_asr_windows_decoded_total": len(result.finals),
    }

    def moved() -> bool:
        after = cluster.metrics()
        grew = all(total(after, n) - total(before, n) >= at_least for n, at_least in names.items())
        errors = total(after, "ray_asr_errors_total", code="bad_message") - total(before, "ray_asr_errors_total", code="bad_message")
        return grew and errors >= 1 and total(after, "ray_asr_open_streams") == 0

    wait_for(moved, 30, "the counters to move in Ray's metrics export")


def test_a_worker_node_dies_and_its_stream_reconnects_and_continues(cluster: ClusterService, by_id):
    whisper_node = placements("Whisper")[0]["node"]
    assert whisper_node in cluster.worker_urls
    long_item, other = by_id["ls-multispeaker-stream"], by_id["dagon-par1"]
    audios = [load_audio(long_item.path), load_audio(other.path)]
    # The long stream enters through the doomed node's proxy (and so its Ingress); the other through the head.
    urls = [[cluster.worker_urls[whisper_node], cluster.head_url], cluster.head_url]
    node = next(n for n in cluster.cluster.worker_nodes if n.node_id == whisper_node)
    killed_at: list[float] = []
    started = time.monotonic()

    def kill_after_a_while() -> None:
        if not killed_at and time.monotonic() - started > 12:
            cluster.cluster.remove_node(node, allow_graceful=False)
            killed_at.append(time.monotonic() - started)

    results = stream_all(urls, audios, speed=3.0, reconnects=5, during=kill_after_a_while)
    assert killed_at
    for result in results:
        arrivals = [at for m, at in zip(result.messages, result.arrivals) if m["type"] == "final"]
        gap = max(b - a for a, b in zip(arrivals, arrivals[1:]))
        print(f"  node killed at {killed_at[0]:.1f} s; longest wait between finals {gap:.1f} s")
    assert results[0].reconnects >= 1, "the stream on the killed node never saw its connection drop"
    offline = OfflineTranscriber()
    for item, audio, result in zip([long_item, other], audios, results):
        assert_transcribed(item, audio, result, offline)
    # Whisper was rescheduled onto the other GPU node.
    survivor = set(cluster.worker_urls) - {whisper_node}
    wait_for(lambda: {p["node"] for p in placements("Whisper")} == survivor, 60, "Whisper on the surviving GPU node")
