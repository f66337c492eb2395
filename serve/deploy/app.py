"""The application graph: Ingress -> BufferManager -> Whisper, built from validated args.

    serve run serve.yaml              # serve.yaml's args go through build_app
    serve run serve.deploy.app:app           # all defaults
"""

from __future__ import annotations

from typing import Any

import ray
from ray.serve import Application

from serve.core.auth import hashed
from serve.core.settings import AppSettings, IngressOptions, PlacementOptions
from serve.deploy.buffer_manager import BufferManager
from serve.deploy.ingress import Ingress
from serve.deploy.whisper import Whisper

HIDE_GPUS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
"""Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a replica with no GPU, so it would see (and a library
could grab) every GPU of its node; with this it sees none. A replica with GPUs still sees only its own."""
GRPC_BETWEEN_REPLICAS = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1)}
"""The replicas' handles call the next deployment over Serve's direct gRPC channel instead of a Ray actor task
(the inter-deployment part of Serve's documented RAY_SERVE_THROUGHPUT_OPTIMIZED mode, without the rest of it:
that mode also moves HTTP off the proxies). Measured here: the Ingress and BufferManager spend about a fifth less CPU
per call; a dead replica still surfaces as ActorUnavailableError, which the calls retry (serve.deploy.retry).
A replica's gRPC server takes messages of up to 4 MiB by default, and a trip of quiet streams that caught up after a
stall carries more (RESOURCE_EXHAUSTED, tests/service/test_service.py): the limit is raised to Serve's own for gRPC
ingress, 2 GiB."""
ONE_LOOP = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
"""A replica runs its handlers and its handles' router on its own event loop, as Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED
mode sets them, instead of one loop thread each: no hop between threads for every request and every call. The
service's handlers never block their loop (the engine, the VAD and the features run in threads of their own)."""
PROXY_ENV = {"RAY_SERVE_PROXY_USE_GRPC": "1"}
"""For the Ray cluster, not the replicas: Serve's proxy hands a WebSocket's messages to the Ingress over gRPC too. The
proxy takes its environment from the node (``ray start``, or the shell of ``serve run``), not from serve.yaml:
scripts/run.sh, scripts/gpu-bench.sh, the README's ``ray start`` lines, the KubeRay image and the tests set it; without
it the service works the same, at a higher cost per message."""
REPLICA_ENV = HIDE_GPUS | GRPC_BETWEEN_REPLICAS | ONE_LOOP
NO_ACCESS_LOG = {"enable_access_log": False}
"""The BufferManager's and Whisper's logging: their calls are a stream's internal steps, one BufferManager call a
second and about one decode per speaking stream. An access line for each is written twice (to the replica's file and
its stderr), tailed by Ray's log monitor and relayed to the driver: measured in the room (README: what a stream
costs), 3.6 ms of CPU per speaking stream-second across those processes, about as much as its Ingress work. A call
that fails still logs its traceback (Serve's "Request failed."); ``logging_config: {enable_access_log: true}`` on the
deployment in serve.yaml brings the lines back. The Ingress keeps its access lines: one per HTTP request or WebSocket
session."""


def cluster_gpus() -> float:
    """GPUs of the Ray cluster the app is being deployed to (0 when the builder runs outside Ray)."""
    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def actor_options(num_cpus: float, num_gpus: float = 0.0) -> dict[str, Any]:
    """A replica's Ray options: its CPUs and GPUs; it sees only the GPUs it reserves (HIDE_GPUS) and calls the next
    deployment over gRPC (GRPC_BETWEEN_REPLICAS)."""
    return {"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}}


def whisper_actor_options(placement: PlacementOptions, gpus_in_cluster: float) -> dict[str, Any]:
    options = actor_options(placement.whisper_cpus, placement.whisper_gpus_for(gpus_in_cluster))
    if placement.whisper_resources:
        options["resources"] = dict(placement.whisper_resources)
    return options


def build_app(args: dict[str, Any]) -> Application:
    """Validate every knob once; live ones (batching, VAD/policy, limits, auth) travel as user_config."""
    settings = AppSettings.model_validate(args or {})
    whisper = Whisper.options(
        user_config=settings.batching.model_dump(mode="json"),
        ray_actor_options=whisper_actor_options(settings.placement, cluster_gpus()),
        logging_config=NO_ACCESS_LOG,
    ).bind(settings.engine.model_dump(mode="json"))
    buffer_manager = BufferManager.options(
        user_config=settings.streaming.model_dump(mode="json"),
        ray_actor_options=actor_options(num_cpus=0.5),
        logging_config=NO_ACCESS_LOG,
    ).bind(whisper)
    # Keys travel (and show in Serve's config and logs) only as SHA-256 digests.
    ingress = IngressOptions(limits=settings.limits, auth=hashed(settings.auth))
    return Ingress.options(
        user_config=ingress.model_dump(mode="json"),
        ray_actor_options=actor_options(num_cpus=0.25),
    ).bind(buffer_manager, settings.default_language)


app = build_app({})
