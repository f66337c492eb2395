"""Words and the text forms built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    """One recognised word; ``word`` keeps Whisper's leading space and punctuation."""

    word: str
    start: float
    end: float
    probability: float

    def shifted(self, seconds: float) -> Word:
        return Word(self.word, round(self.start + seconds, 3), round(self.end + seconds, 3), self.probability)

    def as_dict(self) -> dict[str, object]:
        return {
            "word": self.word.strip(),
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "probability": round(self.probability, 3),
        }


_NOT_WORD = re.compile(r"[^\w']+")


def comparable(word: str) -> str:
    """The form two hypotheses are compared in: lower case, no punctuation."""
    return _NOT_WORD.sub("", word.lower())


def join_words(words: list[Word]) -> str:
    return "".join(w.word for w in words).strip()
