"""Every knob of the service in one validated model: what serve.yaml's ``args`` hold."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serve.core.engine import EngineOptions
from serve.core.stream import StreamingOptions


class BatchOptions(BaseModel):
    """How the Whisper deployment gathers requests of many streams into one call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(16, ge=1, le=256, description="Most windows decoded in one engine call.")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, le=1.0, description="How long a batch waits to fill before it runs anyway."
    )


class LimitOptions(BaseModel):
    """What one client may do; beyond it the stream gets an error and a close."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_frame_bytes: int = Field(1 << 20, ge=1024, description="Largest WebSocket message accepted (close 1009 beyond).")
    max_pending_seconds: float = Field(
        30.0, ge=1.0, le=600.0,
        description="Audio read from the socket but not yet processed; past it the server stops reading (backpressure).",
    )


class AppSettings(BaseModel):
    """The application's arguments (serve.yaml ``args``), validated once by the app builder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineOptions = Field(default_factory=EngineOptions)
    streaming: StreamingOptions = Field(default_factory=StreamingOptions)
    batching: BatchOptions = Field(default_factory=BatchOptions)
    limits: LimitOptions = Field(default_factory=LimitOptions)
    default_language: str = Field("en", description="Language when the client names none ('auto' to detect).")
