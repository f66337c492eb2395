"""The Whisper deployment: requests of many streams decoded in one batched engine call."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import asdict

import ray
from ray import serve

from serve.core.engine import (
    BatchedWhisper,
    DecodeFailure,
    DecodeRequest,
    DecodeResult,
    EngineOptions,
    ModelFacts,
    Shed,
)
from serve.core.settings import BatchOptions
from serve.core.shedding import PartialShedder
from serve.deploy.metrics import WhisperMetrics

log = logging.getLogger("ray.serve")


@serve.deployment(name="Whisper", max_ongoing_requests=1024)
class Whisper:
    def __init__(self, engine: dict | None = None) -> None:
        self.engine = BatchedWhisper(EngineOptions.model_validate(engine or {}))
        self.shedder = PartialShedder(BatchOptions().shed_partials_wait_s)
        self.batch_sizes: Counter[int] = Counter()
        self.decode_seconds = 0.0
        self.engine_seconds = 0.0
        self.taken: Counter[str] = Counter()
        """Requests taken, by kind: final (final, forced, pause windows), partial, eager."""
        self.refused: Counter[str] = Counter()
        """Optional requests shed, by kind."""
        self.metrics = WhisperMetrics()
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it assigned this replica, so the engine's device index 0
        # is the assigned GPU; with no GPU assigned the replica sees none (serve.deploy.app.HIDE_GPUS) and runs on CPU.
        self.placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
        log.info(
            "Whisper %s on %s (%s), %d language(s), placement %s",
            self.engine.model_name, self.engine.device, self.engine.compute_type, len(self.engine.languages),
            self.placement,
        )

    def reconfigure(self, config: dict) -> None:
        """Live knobs from ``user_config``: batch size and wait, when to shed partial decodes."""
        options = BatchOptions.model_validate(config or {})
        size, wait = options.for_device(self.engine.device)
        self.decode_batch.set_max_batch_size(size)
        self.decode_batch.set_batch_wait_timeout_s(wait)
        self.shedder.max_wait_s = options.shed_partials_wait_s
        self.shedder.eager_wait_s = options.eager_wait_s
        log.info("Whisper batching: %s", options)

    async def transcribe(
        self, request: DecodeRequest, optional: bool = False, eager: bool = False
    ) -> DecodeResult | DecodeFailure | Shed:
        """Decode one window in the next batch; an ``optional`` one is refused while the replica is behind, an
        ``eager`` one unless it has room now."""
        kind = "eager" if eager else "partial" if optional else "final"
        self.metrics.payload.call((request, optional, eager))
        if not self.shedder.admit(optional, eager):
            self.refused[kind] += 1
            self.metrics.partials_shed.inc()
            result: DecodeResult | DecodeFailure | Shed = Shed(self.shedder.retry_after_s(eager))
        else:
            self.taken[kind] += 1
            self.shedder.queued += 1
            try:
                result = await self.decode_batch(request)
            finally:
                self.shedder.queued -= 1
        self.metrics.payload.answer(result)
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def decode_batch(self, requests: list[DecodeRequest]) -> list[DecodeResult | DecodeFailure]:
        # The engine call blocks for the whole batch: keep it off the replica's event loop.
        batch = await asyncio.to_thread(self.engine.transcribe_batch, requests)
        self.batch_sizes[len(requests)] += 1
        self.decode_seconds += batch.stats.seconds
        self.engine_seconds += batch.stats.engine_seconds
        self.shedder.record(len(requests), batch.stats.seconds)
        self.metrics.batch_size.observe(len(requests))
        self.metrics.decode_seconds.observe(batch.stats.seconds)
        self.metrics.windows.inc(len(requests))
        return [DecodeFailure(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in batch.results]

    def ping(self) -> ModelFacts:
        """What ``/healthz`` asks through the BufferManager: cheap, answered between batches."""
        return self.engine.facts

    def info(self) -> dict:
        """The model's facts, where it runs and what batching did so far (``/metrics/summary``, tests, the bench)."""
        return {
            **asdict(self.engine.facts),
            "max_batch_size": self.decode_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self.decode_batch._get_batch_wait_timeout_s(),
            "batch_sizes": dict(self.batch_sizes),
            "batches": sum(self.batch_sizes.values()),
            "decode_seconds": round(self.decode_seconds, 3),
            "engine_seconds": round(self.engine_seconds, 3),
            "partials_shed": sum(self.refused.values()),
            "decodes_by_kind": dict(self.taken),
            "shed_by_kind": dict(self.refused),
            "payload_bytes": {
                "from_buffer_manager": self.metrics.payload.sent, "to_buffer_manager": self.metrics.payload.answered,
                "requests": self.metrics.payload.calls,
            },
            **self.placement,
        }
