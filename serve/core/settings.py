"""Every knob of the service in one validated model: what serve.yaml's ``args`` hold."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.core.engine import EngineOptions
from serve.core.stream import StreamingOptions

KEY_DIGEST_PREFIX = "sha256:"
"""An API key written as its digest: ``sha256:<64 hex digits>``."""


class BatchOptions(BaseModel):
    """How the Whisper deployment gathers requests of many streams into one call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int | Literal["auto"] = Field(
        "auto", description="Most windows decoded in one engine call; auto: 64 on a GPU (where the engine's gain "
        "is, ../shared/DEVICE.md), 16 on a CPU (which gains little from batching).",
    )
    batch_wait_timeout_s: float | Literal["auto"] = Field(
        "auto", description="How long a batch waits to fill before it runs anyway; auto: 0.01 s on a GPU (a decode "
        "costs tens of ms there), 0.02 s on a CPU.",
    )
    shed_partials_wait_s: float = Field(
        1.0, ge=0.0, le=60.0,
        description="When a new request would wait longer than this, partial (tentative) decodes are refused; "
        "final ones always run. Keeps finals coming when decoding falls behind.",
    )
    eager_wait_s: float = Field(
        0.25, ge=0.0, le=60.0,
        description="An eager decode (a partial sooner than min_step_s) is taken only while a new request would wait "
        "at most this long: when the replica has room. Otherwise that audio joins the stream's next decode.",
    )


    @field_validator("max_batch_size")
    @classmethod
    def _batch_size_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("max_batch_size must be from 1 to 256, or auto")
        return value

    @field_validator("batch_wait_timeout_s")
    @classmethod
    def _wait_in_range(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0.0 <= value <= 1.0:
            raise ValueError("batch_wait_timeout_s must be from 0 to 1 s, or auto")
        return value

    def for_device(self, device: str) -> tuple[int, float]:
        """(max_batch_size, batch_wait_timeout_s) on ``device`` ("cuda" or "cpu"), ``auto`` resolved."""
        gpu = device == "cuda"
        size = self.max_batch_size if isinstance(self.max_batch_size, int) else 64 if gpu else 16
        wait = self.batch_wait_timeout_s if not isinstance(self.batch_wait_timeout_s, str) else 0.01 if gpu else 0.02
        return size, wait


class LimitOptions(BaseModel):
    """What one client, and one Ingress replica, may take; beyond it the stream gets an error and a close."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_streams: int = Field(
        200, ge=1, le=100_000,
        description="Open streams per Ingress replica; one more is refused with 'overloaded' and close 1013.",
    )
    max_frame_bytes: int = Field(1 << 20, ge=1024, description="Largest WebSocket message accepted (close 1009 beyond).")
    max_pending_seconds: float = Field(
        60.0, ge=1.0, le=600.0,
        description="Audio received but not yet processed, per stream (the bounded queue). A client that runs "
        "further ahead of the recognizer gets 'overloaded' and close 1013.",
    )
    idle_timeout_s: float = Field(
        60.0, gt=0.0, le=86_400.0,
        description="A stream that sends no audio for this long is flushed and closed ('idle_timeout', 1008).",
    )
    max_stream_s: float = Field(
        4 * 3600.0, gt=0.0, le=7 * 86_400.0,
        description="Seconds of audio one stream may send; then it is flushed and closed ('max_duration', 1008).",
    )
    retry_s: float = Field(
        30.0, ge=0.0, le=600.0,
        description="How long a stream's call is retried while a dead BufferManager replica is replaced.",
    )
    max_streams_per_client: int = Field(
        16, ge=0, le=100_000,
        description="With no API keys (auth off): open streams per client address on one Ingress replica; one more "
        "is refused with 'overloaded' and close 1013. 0: no cap. The address is the one Serve's proxy reports: the "
        "TCP peer, or X-Forwarded-For from a proxy it trusts (README: security and limits).",
    )
    max_messages_per_s: float = Field(
        200.0, ge=1.0, le=100_000.0,
        description="WebSocket messages (audio frames and control messages) a stream may send per second, in bursts "
        "of up to 5 s worth; beyond it: 'rate_limited' and close 1008.",
    )
    max_speed: float = Field(
        4.0, ge=1.0, le=10_000.0,
        description="Audio a stream may send, in times real time: at most speed_burst_s plus max_speed x the seconds "
        "it has been open (a token bucket). Beyond it: 'rate_limited' and close 1008, so one fast sender cannot "
        "take more than its share of the decoder.",
    )
    speed_burst_s: float = Field(
        60.0, ge=1.0, le=3600.0,
        description="Seconds of audio a stream may send ahead of max_speed (the bucket's size): a file sent at once, "
        "or audio sent again after a reconnect.",
    )


class AuthOptions(BaseModel):
    """Who may open a stream. No keys: anyone who can reach the port."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted keys, each as the key itself or as 'sha256:<hex of its SHA-256>' (keeps it out of the file).",
    )
    api_keys_env: str | None = Field(
        None, description="Also accept the comma-separated keys in this environment variable of the Ingress replicas."
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to connect (e.g. https://captions.example.com); empty: any. "
        "Clients that send no Origin header (non-browsers) are not affected.",
    )

    @field_validator("api_keys")
    @classmethod
    def _keys_not_empty(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not key.strip():
                raise ValueError("an API key must not be empty")
            if key.startswith(KEY_DIGEST_PREFIX) and not re.fullmatch(r"[0-9a-fA-F]{64}", key.removeprefix(KEY_DIGEST_PREFIX)):
                raise ValueError("a 'sha256:' key must be followed by 64 hex digits")
        return keys

    @field_validator("allowed_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if not origin.startswith(("http://", "https://")) or origin.rstrip("/").count("/") != 2:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return [origin.rstrip("/").lower() for origin in origins]


class IngressOptions(BaseModel):
    """The Ingress replicas' live config (``user_config``): limits and auth change without a restart."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limits: LimitOptions = Field(default_factory=LimitOptions)
    auth: AuthOptions = Field(default_factory=AuthOptions)


class PlacementOptions(BaseModel):
    """Where Ray puts the Whisper replicas (the Ingress and BufferManager are CPU-only and see no GPU)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    whisper_gpus: float | Literal["auto"] = Field(
        "auto",
        description="GPUs each Whisper replica reserves: 1 pins one replica per GPU; a fraction (0.5, 0.25) packs "
        "small models onto one GPU; 0 runs on CPU. auto: 1 when the cluster has GPUs when the app is deployed, else 0.",
    )
    whisper_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs each Whisper replica reserves.")
    whisper_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each Whisper replica needs, e.g. {'accelerator_type:A100': 0.001} or a "
        "resource your GPU nodes declare.",
    )

    @field_validator("whisper_gpus")
    @classmethod
    def _gpus_in_range(cls, gpus: float | str) -> float | str:
        if gpus != "auto" and not 0 <= float(gpus) <= 8:
            raise ValueError("whisper_gpus is 'auto' or a number of GPUs from 0 to 8")
        return gpus

    def whisper_gpus_for(self, cluster_gpus: float) -> float:
        """The GPUs a Whisper replica reserves on a cluster with ``cluster_gpus`` GPUs in all."""
        if self.whisper_gpus == "auto":
            return 1.0 if cluster_gpus >= 1 else 0.0
        return float(self.whisper_gpus)


class AppSettings(BaseModel):
    """The application's arguments (serve.yaml ``args``), validated once by the app builder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineOptions = Field(default_factory=EngineOptions)
    streaming: StreamingOptions = Field(default_factory=StreamingOptions)
    batching: BatchOptions = Field(default_factory=BatchOptions)
    limits: LimitOptions = Field(default_factory=LimitOptions)
    auth: AuthOptions = Field(default_factory=AuthOptions)
    placement: PlacementOptions = Field(default_factory=PlacementOptions)
    default_language: str = Field("en", description="Language when the client names none ('auto' to detect).")
