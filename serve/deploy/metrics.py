"""The service's Prometheus metrics, through Ray Serve's custom metrics (``ray.serve.metrics``).

Each replica creates its own set in ``__init__`` (Serve tags them with application, deployment
and replica); every node's Ray metrics agent exports them on the node's ``metrics_export_port``
with a ``ray_`` prefix, counters with ``_total``: ``ray_asr_finals_total``,
``ray_asr_final_lag_seconds_bucket``, ... README, "Metrics", lists them with the queries that
answer "are we keeping up?".
"""

from __future__ import annotations

import asyncio
import pickle
from dataclasses import dataclass, field
from typing import Any

from ray.serve import metrics as serve_metrics
from ray.serve.metrics import Gauge, Histogram

LAG_BOUNDARIES_S = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0]
DECODE_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


FLUSH_S = 1.0
"""How often a counter's increments summed in the replica are recorded (``Counter``)."""


class Counter(serve_metrics.Counter):
    """A Ray Serve counter whose increments are summed in the replica, per tag set, and recorded at most once every
    FLUSH_S. Ray records each increment through its metrics machinery (tags merged and checked, a call into its core
    worker): a profile of the Ingress on silent streams had put counting each message and each call at about a tenth
    of its CPU (the room benchmark on a saturated machine could not see the difference through its noise).
    Prometheus scrapes every few seconds; a total shows at most FLUSH_S later, and a replica that stops loses at most
    its last FLUSH_S of counts. Outside an event loop an increment is recorded at once."""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None) -> None:
        super().__init__(name, description=description, tag_keys=tag_keys)
        self._pending: dict[tuple[tuple[str, str], ...], float] = {}
        self._flush: asyncio.TimerHandle | None = None

    def inc(self, value: int | float = 1.0, tags: dict[str, str] | None = None) -> None:
        if value <= 0:  # Ray refuses them; nothing to count
            return
        key = tuple(sorted(tags.items())) if tags else ()
        self._pending[key] = self._pending.get(key, 0.0) + value
        if self._flush is None:
            try:
                self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no event loop in this thread
                self.flush()

    def flush(self) -> None:
        """Record the increments summed so far."""
        self._flush = None
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            super().inc(value, tags=dict(key))


def payload_bytes(value: Any) -> int:
    """Bytes ``value`` takes on the wire between replicas, as Ray serializes it: pickle protocol 5, with numpy
    arrays as out-of-band buffers (counted, not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(buffer.raw().nbytes for buffer in buffers)


@dataclass
class PayloadBytes:
    """Bytes of the calls one replica made to the next deployment, and of their answers (``/metrics/summary``)."""

    route: str
    """Which calls: ``ingress->buffer_manager``, ``buffer_manager->whisper``."""
    sent: int = 0
    answered: int = 0
    calls: int = 0
    counter: Counter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counter = Counter(
            "asr_payload_bytes", description="Bytes of calls between deployments, and of their answers.",
            tag_keys=("route", "direction"),
        )

    def call(self, arguments: Any) -> None:
        size = payload_bytes(arguments)
        self.sent += size
        self.calls += 1
        self.counter.inc(size, tags={"route": self.route, "direction": "call"})

    def answer(self, result: Any) -> None:
        size = payload_bytes(result)
        self.answered += size
        self.counter.inc(size, tags={"route": self.route, "direction": "answer"})


class IngressMetrics:
    """Streams, audio, finals, their lag and the errors clients were sent (one set per Ingress replica)."""

    def __init__(self) -> None:
        self.open_streams = Gauge("asr_open_streams", description="WebSocket streams open on this Ingress replica.")
        self.streams = Counter("asr_streams", description="Streams accepted (sent 'ready').")
        self.audio_seconds = Counter("asr_audio_seconds", description="Seconds of audio received from clients.")
        self.finals = Counter("asr_finals", description="Final (committed) messages sent.")
        self.partials = Counter("asr_partials", description="Partial (tentative) messages sent.")
        self.final_lag = Histogram(
            "asr_final_lag_seconds",
            description="From the arrival of the audio a final ends with to the final being sent.",
            boundaries=LAG_BOUNDARIES_S,
        )
        self.errors = Counter("asr_errors", description="Error messages sent to clients, by code.", tag_keys=("code",))
        self.payload = PayloadBytes("ingress->buffer_manager")

    def error(self, code: str) -> None:
        self.errors.inc(tags={"code": code})


class WhisperMetrics:
    """Batches formed and what decoding them cost (one set per Whisper replica)."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "asr_batch_size", description="Windows decoded together in one engine call.", boundaries=BATCH_BOUNDARIES
        )
        self.decode_seconds = Histogram(
            "asr_decode_seconds", description="Time of one batched engine call.", boundaries=DECODE_BOUNDARIES_S
        )
        self.windows = Counter("asr_windows_decoded", description="Audio windows decoded.")
        self.partials_shed = Counter(
            "asr_partials_shed", description="Partial decodes refused because the replica was behind."
        )
        self.payload = PayloadBytes("buffer_manager->whisper")
        """Counted where the requests arrive: every BufferManager replica's calls to this replica."""
