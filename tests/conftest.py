"""Shared fixtures: the evaluation audio (by path), the real model, the real VAD."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EvalItem:
    id: str
    path: Path
    text: str
    subset: str
    duration_s: float
    speaker: str


def eval_dir() -> Path:
    return Path(os.environ.get("ASR_EVAL_DIR", REPO.parent / "shared" / "eval")).resolve()


def load_manifest() -> list[EvalItem]:
    root = eval_dir()
    items = []
    with open(root / "manifest.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            items.append(
                EvalItem(row["id"], root / row["path"], row["text"], row.get("subset", ""), row["duration_s"], row.get("speaker", ""))
            )
    return items


@pytest.fixture(scope="session")
def manifest() -> list[EvalItem]:
    items = load_manifest()
    assert items, f"no evaluation audio under {eval_dir()} (set ASR_EVAL_DIR)"
    return items


@pytest.fixture(scope="session")
def by_id(manifest: list[EvalItem]) -> dict[str, EvalItem]:
    return {item.id: item for item in manifest}


@pytest.fixture(scope="session")
def engine():
    from serve.core.engine import BatchedWhisper

    return BatchedWhisper()


@pytest.fixture(scope="session")
def vad():
    from serve.core.vad import SileroVad

    return SileroVad()


@pytest.fixture
def processor(vad):
    from serve.core.stream import StreamProcessor

    return StreamProcessor(vad=vad)


def pcm16(path: Path) -> np.ndarray:
    from serve.core.audio import load_audio, to_int16

    return to_int16(load_audio(path))
