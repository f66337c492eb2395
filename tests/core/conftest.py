"""Multilingual fixtures: the real Whisper base model (assembled from its packages) and speech synthesized with
Debian's espeak-ng at test time (no package ships non-English recordings with transcripts)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class Sentence:
    """One synthetic utterance and what its English translation must (and must not) say."""

    language: str
    voice: str
    """espeak-ng voice and variant; chosen per language for speech that Whisper base hears clearly."""
    speed: int
    text: str
    english: str
    """The source sentence in English: what a translation says."""
    key_words: tuple[str, ...]
    """Words of ``english`` a translation must carry (half of them, at least)."""
    source_words: tuple[str, ...]
    """Words of ``text`` a translation must not carry (it would be a transcription)."""


SENTENCES = (
    Sentence(
        "de", "de+m7", 140, "Guten Morgen. Ich trinke jeden Tag eine Tasse Kaffee.",
        "Good morning. I drink a cup of coffee every day.", ("morning", "cup", "coffee"), ("morgen", "tasse", "kaffee"),
    ),
    Sentence(
        "fr", "fr", 130, "Je voudrais un café, s'il vous plaît. Merci beaucoup, madame.",
        "I would like a coffee, please. Thank you very much, madam.", ("coffee", "thank", "please"),
        ("voudrais", "merci", "beaucoup"),
    ),
    Sentence(
        "es", "es+klatt2", 140, "Hoy hace mucho calor, vamos a la playa con nuestros amigos.",
        "It is very hot today, let's go to the beach with our friends.", ("today", "hot", "beach", "friends"),
        ("playa", "amigos", "calor"),
    ),
)


@dataclass(frozen=True)
class Speech:
    sentence: Sentence
    pcm: np.ndarray
    """16 kHz int16."""


@pytest.fixture(scope="session")
def base_engine():
    """Whisper base (multilingual), loaded once for every test that needs it."""
    from serve.core.engine import BatchedWhisper, EngineOptions

    return BatchedWhisper(EngineOptions(model="bundled-base", cpu_threads=1))


@pytest.fixture(scope="session")
def foreign_speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Speech]:
    """Each sentence spoken by espeak-ng, by language. Synthetic speech is a weaker test than human speech."""
    from serve.core.audio import load_audio, to_int16

    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: scripts/install-test-deps.sh installs it (apt-get install espeak-ng)"
    folder = tmp_path_factory.mktemp("espeak")
    speech = {}
    for sentence in SENTENCES:
        path = Path(folder) / f"{sentence.language}.wav"
        subprocess.run([espeak, "-v", sentence.voice, "-s", str(sentence.speed), "-w", str(path), sentence.text], check=True)
        speech[sentence.language] = Speech(sentence, to_int16(load_audio(path)))
    return speech
