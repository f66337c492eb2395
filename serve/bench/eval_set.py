"""The evaluation audio (../shared/eval or $ASR_EVAL_DIR), read by path, never copied."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EvalItem:
    """One manifest row: ``path`` is absolute, ``text`` the reference ("" for non-speech)."""

    id: str
    path: Path
    text: str
    subset: str
    duration_s: float
    speaker: str = ""


def eval_dir() -> Path:
    return Path(os.environ.get("ASR_EVAL_DIR", REPO.parent / "shared" / "eval")).resolve()


def load_items(manifest: Path | None = None, subsets: Sequence[str] | None = None) -> list[EvalItem]:
    """Rows of ``manifest`` (default: the eval set's), of the given subsets (default: all)."""
    manifest = manifest or eval_dir() / "manifest.jsonl"
    items = []
    with open(manifest) as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            subset = row.get("subset", "")
            if subsets is None or subset in subsets:
                items.append(
                    EvalItem(
                        row["id"], manifest.parent / row["path"], row["text"], subset, row["duration_s"],
                        row.get("speaker", ""),
                    )
                )
    return items
