"""The application graph: Ingress -> BufferManager -> Whisper, built from validated args.

    serve run serve.yaml              # serve.yaml's args go through build_app
    serve run serve.app:app           # all defaults
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve.buffer_manager import BufferManager
from serve.core.auth import hashed
from serve.core.settings import AppSettings, IngressOptions
from serve.ingress import Ingress
from serve.whisper import Whisper


def build_app(args: dict[str, Any]) -> Application:
    """Validate every knob once; live ones (batching, VAD/policy, limits, auth) travel as user_config."""
    settings = AppSettings.model_validate(args or {})
    whisper = Whisper.options(user_config=settings.batching.model_dump(mode="json")).bind(
        settings.engine.model_dump(mode="json")
    )
    buffer_manager = BufferManager.options(user_config=settings.streaming.model_dump(mode="json")).bind(whisper)
    # Keys travel (and show in Serve's config and logs) only as SHA-256 digests.
    ingress = IngressOptions(limits=settings.limits, auth=hashed(settings.auth))
    return Ingress.options(user_config=ingress.model_dump(mode="json")).bind(
        buffer_manager, whisper, settings.default_language
    )


app = build_app({})
