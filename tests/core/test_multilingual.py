"""Whisper base, the multilingual model two packages ship: assembled once, language detection, translation.

The non-English speech is synthesized by espeak-ng (tests/core/conftest.py): a weaker test than human speech, and
the reason for checking translations by key words, not exact text. English is a real recording of the eval set.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from serve.core.audio import SAMPLE_RATE
from serve.core.engine import DecodeRequest, DecodeResult
from serve.core.messages import Final, Partial
from serve.core.models import WHISPER_BASE, assemble
from serve.core.stream import DecodeJob, StreamingOptions, StreamProcessor, StreamState, Window, WindowKind, drive
from tests.conftest import REPO, pcm16

LEAD_S = 1.0
"""Silence before the speech of every test stream: never decoded, so never the source of a detection."""
ENGLISH_CLIP = "ls-1089-134686-0001"  # "Stuff it into you, his belly counselled him." (3.3 s, LibriSpeech)


# -- the model: assembled from two packages, once, at first use ----------------------------------------------------


def _package_parts() -> list[Path]:
    import importlib.metadata

    parts = []
    for number, package in enumerate(WHISPER_BASE.packages, start=1):
        [part] = [f for f in importlib.metadata.distribution(package).files or () if f.name == f"model.bin.part{number}"]
        parts.append(Path(str(part.locate())))
    return parts


def test_concurrent_first_uses_assemble_one_whole_model(tmp_path):
    """Four processes (replicas starting together) assemble into one empty cache at once: each gets the same
    directory, holding the parts joined byte for byte, and no temporary file is left behind."""
    cache = tmp_path / "cache"
    start_at = time.time() + 2.0
    script = (
        "import sys, time; from pathlib import Path; from serve.core.models import WHISPER_BASE, assemble;"
        f"time.sleep(max(0.0, {start_at} - time.time())); print(assemble(WHISPER_BASE, Path(sys.argv[1])))"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(cache)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=120)[0].strip() for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert len(set(outputs)) == 1, outputs
    directory = Path(outputs[0])
    parts = _package_parts()
    model = directory / "model.bin"
    assert model.stat().st_size == sum(part.stat().st_size for part in parts)
    with open(model, "rb") as joined:
        for part in parts:
            assert joined.read(part.stat().st_size) == part.read_bytes()
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"]


def test_a_truncated_model_is_assembled_again(tmp_path):
    directory = assemble(WHISPER_BASE, tmp_path)
    size = (directory / "model.bin").stat().st_size
    with open(directory / "model.bin", "r+b") as model:
        model.truncate(size // 2)  # a crash mid-copy by some other tool, a disk that filled up
    assert assemble(WHISPER_BASE, tmp_path) == directory
    assert (directory / "model.bin").stat().st_size == size


def test_nothing_is_assembled_at_import(tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import serve.core.models, serve.core.engine, serve.core.settings, serve.deploy.app;"
        "from serve.core.engine import EngineOptions; EngineOptions(model='bundled-base')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "ASR_MODEL_CACHE": str(cache)})
    assert not cache.exists()


def test_the_model_facts_list_its_languages(base_engine, engine):
    facts = base_engine.facts
    assert facts.model == "base" and facts.multilingual
    assert {"en", "de", "fr", "es", "ja", "zh", "haw"} <= set(facts.languages) and len(facts.languages) == 99
    assert "yue" not in facts.languages  # large-v3's Cantonese: base has no token for it
    assert engine.facts.languages == ("en",) and not engine.facts.multilingual
    [refused] = base_engine.transcribe_batch([DecodeRequest(np.zeros(16_000, np.float32), language="yue")]).results
    assert isinstance(refused, ValueError) and "yue" in str(refused)


# -- streams: detection, pinning, translation -----------------------------------------------------------------------


@dataclass
class StreamRun:
    decodes: list[tuple[DecodeJob, DecodeResult]]
    messages: list[Partial | Final]
    state: StreamState

    @property
    def finals(self) -> list[Final]:
        return [m for m in self.messages if isinstance(m, Final)]

    @property
    def partials(self) -> list[Partial]:
        return [m for m in self.messages if isinstance(m, Partial) and m.text]


def stream(engine, vad, pcm: np.ndarray, task: str = "transcribe") -> StreamRun:  # type: ignore[no-untyped-def]
    """``pcm`` after LEAD_S of silence and before 1.5 s of it, with ``language=auto``, through the core in 1 s calls,
    the last one closing the stream. Eager decodes are off, to keep the test short: partials come from the agreement
    decodes."""
    processor = StreamProcessor(StreamingOptions(eager_step_s=0), vad=vad)
    audio = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE), np.int16), pcm, np.zeros(24_000, np.int16)])
    state = StreamState(language=None, task=task)  # type: ignore[arg-type]
    run = StreamRun([], [], state)

    def decode(job: DecodeJob) -> DecodeResult:
        result = engine.transcribe(job.request)
        run.decodes.append((job, result))
        return result

    for i in range(0, audio.size, SAMPLE_RATE):
        last = i + SAMPLE_RATE >= audio.size
        run.messages += drive(processor.steps(state, audio[i : i + SAMPLE_RATE], finalize=last), decode)
    return run


@pytest.fixture(scope="module")
def runs(base_engine, vad, foreign_speech, by_id) -> dict[str, StreamRun]:
    """One stream each, with language=auto: every synthetic sentence translated, the real English clip transcribed."""
    runs = {lang: stream(base_engine, vad, speech.pcm, task="translate") for lang, speech in foreign_speech.items()}
    runs["en"] = stream(base_engine, vad, pcm16(by_id[ENGLISH_CLIP].path))
    return runs


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-zà-ÿ']+", text.lower())


def said(words: list[str], key: str) -> bool:
    return any(word == key or word.startswith(key) for word in words)  # "friend(s)", "coffee(s)"


@pytest.mark.parametrize("language", ["de", "fr", "es", "en"])
def test_auto_detects_the_language_from_speech_then_pins_it(runs, language):
    run = runs[language]
    assert run.state.language == language, [(r.language, r.language_probability) for _, r in run.decodes]
    requested = [job.request.language for job, _ in run.decodes]
    pinned_at = next(i for i, code in enumerate(requested) if code is not None)
    # Detected by the first decodes, each on its window, then every later decode is asked for that language.
    assert pinned_at >= 1 and requested[:pinned_at] == [None] * pinned_at
    assert requested[pinned_at:] == [language] * (len(requested) - pinned_at)
    # Detected from voiced audio: the silence before the speech was never decoded (nor detected from).
    first_window = run.decodes[0][0].window
    assert first_window.start >= (LEAD_S - 0.5) * SAMPLE_RATE, first_window
    # Reported to the client: every final carries it, and every partial once it is known.
    assert run.finals and all(f.language == language for f in run.finals), [(f.text, f.language) for f in run.finals]
    assert any(p.language == language for p in run.partials)
    assert all(p.language in (None, language) for p in run.partials)


@pytest.mark.parametrize("language", ["de", "fr", "es"])
def test_translate_gives_english_in_partials_and_finals(runs, foreign_speech, language):
    sentence = foreign_speech[language].sentence
    run = runs[language]
    finals = words_of(" ".join(f.text for f in run.finals))
    partials = [words_of(p.text) for p in run.partials]
    shown = f"finals {finals}, partials {[p.text for p in run.partials]}; English: {sentence.english}"
    heard = [key for key in sentence.key_words if said(finals, key)]
    assert len(heard) >= math.ceil(len(sentence.key_words) / 2), shown
    assert partials and any(said(p, key) for p in partials for key in sentence.key_words), shown
    # English, not a transcription: none of the source sentence's own words, in any message.
    for words in [finals, *partials]:
        assert not [w for w in sentence.source_words if w in words], shown


def test_transcribe_with_auto_keeps_the_spoken_language(base_engine, vad, foreign_speech):
    run = stream(base_engine, vad, foreign_speech["es"].pcm)
    words = words_of(" ".join(f.text for f in run.finals))
    assert run.state.language == "es" and all(f.language == "es" for f in run.finals)
    assert {"playa", "amigos"} <= set(words), words


def test_the_english_clip_is_transcribed_in_english(runs):
    assert "belly" in words_of(" ".join(f.text for f in runs["en"].finals))


def test_a_decode_without_speech_pins_no_language(base_engine, vad, foreign_speech):
    """The VAD sends only voiced windows; a window Whisper still hears no words in (or an empty one) must not fix a
    stream's language either: detection on silence is a guess."""
    processor = StreamProcessor(vad=vad)
    silence = base_engine.transcribe(DecodeRequest(np.zeros(SAMPLE_RATE, np.float32)))
    empty = base_engine.transcribe(DecodeRequest(np.zeros(0, np.float32)))
    # Whisper still names a language for silence (English, at 0.51 here), but hears no words in it.
    assert silence.words == [] and silence.dropped and silence.language
    assert empty.words == [] and empty.language == ""
    state = StreamState(language=None)
    for result in (silence, empty):
        for kind in (WindowKind.PARTIAL, WindowKind.FORCE):  # a committing window pins whatever the probability
            processor.apply(state, Window(kind, 0, SAMPLE_RATE), result)
            assert state.language is None, (kind, result)
    speech = base_engine.transcribe(DecodeRequest(foreign_speech["es"].pcm))
    processor.apply(state, Window(WindowKind.PARTIAL, 0, foreign_speech["es"].pcm.size), speech)
    assert state.language == "es"


def test_the_language_is_an_optional_field_old_clients_never_see_missing():
    """Protocol v1 grows compatibly: ``language`` is added to ready, partial and final when known, and a message
    without it is exactly what it was before."""
    import json

    from serve.core.messages import Ready, server_message_adapter
    from serve.core.words import Word

    final = Final.from_words([Word(" Hallo", 0.5, 0.9, 0.9)], "de")
    assert json.loads(final.to_json())["language"] == "de"
    assert server_message_adapter.validate_json(final.to_json()) == final
    assert "language" not in json.loads(Final.from_words([Word(" hi", 0.5, 0.9, 0.9)]).to_json())
    assert json.loads(Ready(session="s", model="base", sample_rate=16_000, language="fr").to_json())["language"] == "fr"
    assert set(json.loads(Ready(session="s", model="base", sample_rate=16_000).to_json())) == {
        "type", "session", "model", "sample_rate"
    }
    assert json.loads(Partial(text="hola", start=0.0, end=0.4, language="es").to_json())["language"] == "es"
