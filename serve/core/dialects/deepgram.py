"""Deepgram's live streaming API (``/v1/listen``) over the stream core, without I/O.

Served at ``/deepgram/v1/listen`` so that Deepgram's SDKs reach it with a base URL (``ws://HOST:8000/deepgram``) while
protocol v1 keeps ``/v1/listen``. The mapping (README "Use it from a Deepgram or OpenAI client"):
- the query is checked here; what cannot be served is refused at the upgrade with HTTP 400 and Deepgram's error
  body (``err_code``, ``err_msg``, ``request_id``; the ``dg-error`` header), never silently dropped;
- binary frames are linear16 PCM; ``KeepAlive`` does nothing, ``Finalize`` ends the turn (v1 ``finalize``),
  ``CloseStream`` ends the stream (v1 ``stop``), ``Configure`` replaces the keyterms;
- a v1 ``partial`` is an interim ``Results`` (is_final false) over the unfinalized range; a v1 ``final`` is an
  ``is_final`` one. ``Results`` ranges tile the audio: each starts where the last final ended. ``speech_final`` marks
  the last final of an utterance the VAD closed (the service's endpointing pause), ``SpeechStarted`` and
  ``UtteranceEnd`` come from the same VAD, ``Metadata`` ends the stream;
- a fatal error is a close frame with Deepgram's code and reason (``DATA-0000`` undecodable audio, ``NET-0001``
  no audio); a text message that is not one of the above gets an ``Error`` message (variant ``SchemaError``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from serve.core.dialects.protocol import Activity, Control, bare_word, primary_language, vocabulary
from serve.core.errors import CLOSE_INTERNAL, CLOSE_POLICY, ProtocolError
from serve.core.messages import Final, Partial
from serve.core.session import StreamParams

PATH = "/deepgram/v1/listen"
CHANNEL = [0, 1]
"""``channel_index``/``channel``: channel 0 of 1 (mono)."""

_FLAGS = {"interim_results", "vad_events", "punctuate", "smart_format"}
_IGNORED = {"model", "version", "tag", "mip_opt_out", "extra", "token"}
"""Accepted and without effect here: the model is the service's, tags and opt-outs concern Deepgram's account."""
_FEATURES_OFF_ONLY = {
    "diarize", "numerals", "profanity_filter", "dictation", "detect_entities", "filler_words", "multichannel",
    "measurements", "paragraphs", "utterances", "sentiment", "topics", "intents", "summarize", "detect_language",
}
"""Features this server does not have: ``=false`` is accepted, anything else is refused (never silently off)."""
_UNSUPPORTED = {"redact", "replace", "search", "callback", "callback_method", "diarize_model", "language_hint", "alternatives"}
KNOWN = _FLAGS | _IGNORED | _FEATURES_OFF_ONLY | _UNSUPPORTED | {
    "encoding", "sample_rate", "channels", "endpointing", "utterance_end_ms", "language", "keywords", "keyterm",
}


class Refusal(Exception):
    """The upgrade is refused with an HTTP answer, Deepgram's way: ``status`` and a JSON body."""

    def __init__(self, status: int, err_code: str, err_msg: str, request_id: str) -> None:
        super().__init__(err_msg)
        self.status, self.err_code, self.err_msg, self.request_id = status, err_code, err_msg, request_id

    def body(self) -> dict:
        return {"err_code": self.err_code, "err_msg": self.err_msg, "request_id": self.request_id}

    def headers(self) -> dict[str, str]:
        # Header values must be latin-1: the message is ASCII, but keep any stray character out.
        return {"dg-error": self.err_msg.encode("ascii", "replace").decode(), "dg-request-id": self.request_id}


def refusal(exc: ProtocolError, request_id: str) -> Refusal:
    """A refusal before the stream opened (auth, capacity, query) as Deepgram answers it."""
    if exc.code == "unauthorized":
        return Refusal(401, "INVALID_AUTH", f"Invalid credentials: {exc.message}", request_id)
    if exc.code == "overloaded":
        return Refusal(429, "TOO_MANY_REQUESTS", exc.message, request_id)
    return Refusal(400, "Bad Request", exc.message, request_id)


@dataclass(frozen=True)
class Options:
    """What the client asked for, beyond what protocol v1's ``StreamParams`` hold."""

    endpointing: bool = True
    """``speech_final`` is set at the end of an utterance (``endpointing=false``: never)."""
    utterance_end_ms: int | None = None
    """Send ``UtteranceEnd`` (at the service's own endpointing pause, whatever the value)."""
    vad_events: bool = False
    punctuate: bool = False
    """``transcript`` with punctuation and capitals (``punctuate`` or ``smart_format``); else bare words."""


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def parse_query(
    items: Iterable[tuple[str, str]], *, default_language: str, multilingual: bool, request_id: str
) -> tuple[StreamParams, Options]:
    """The upgrade's query as protocol v1's params and Deepgram's options; raises ``Refusal`` (HTTP 400)."""

    def bad(message: str) -> Refusal:
        return Refusal(400, "Bad Request", message, request_id)

    single: dict[str, str] = {}
    terms: list[str] = []
    for name, value in items:
        if name not in KNOWN:
            raise bad(f"unknown query parameter {name!r}")
        if name == "keyterm":
            terms.append(value)
        elif name == "keywords":
            terms.append(value.rsplit(":", 1)[0] if ":" in value else value)  # "word:boost": no boosts in Whisper
        else:
            single[name] = value
    try:
        flags = {name: _flag(name, single[name]) for name in _FLAGS & single.keys()}
        for name in (_FEATURES_OFF_ONLY & single.keys()):
            if _flag(name, single[name]):
                raise ValueError(f"{name} is not supported by this server")
    except ValueError as exc:
        raise bad(str(exc)) from None
    for name in sorted(_UNSUPPORTED & single.keys()):
        raise bad(f"{name} is not supported by this server")
    encoding = single.get("encoding")
    if encoding is None:
        raise bad("this server takes raw audio only: set encoding=linear16 and sample_rate")
    if encoding != "linear16":
        raise bad(f"encoding {encoding!r} is not supported by this server; send linear16")
    if "sample_rate" not in single:
        raise bad("sample_rate is required with encoding=linear16")
    if single.get("channels", "1") != "1":
        raise bad(f"channels={single['channels']} is not supported: send mono audio (channels=1)")
    endpointing = single.get("endpointing", "10")
    if endpointing.lower() not in ("true", "false") and not endpointing.isdigit():
        raise bad(f"endpointing must be false or a number of milliseconds, not {endpointing!r}")
    utterance_end = single.get("utterance_end_ms")
    if utterance_end is not None and not utterance_end.isdigit():
        raise bad(f"utterance_end_ms must be a number of milliseconds, not {utterance_end!r}")
    language = single.get("language", default_language)
    language = "auto" if language == "multi" else primary_language(language)
    try:
        prompt = vocabulary(terms)
        params = StreamParams.from_query(
            {
                "sample_rate": single["sample_rate"], "encoding": "s16le", "language": language,
                "interim_results": str(flags.get("interim_results", False)).lower(), "prompt": prompt,
            },
            default_language=default_language, multilingual=multilingual,
        )
    except (ValueError, ProtocolError) as exc:
        raise bad(exc.message if isinstance(exc, ProtocolError) else str(exc)) from None
    options = Options(
        endpointing=endpointing.lower() != "false",
        utterance_end_ms=int(utterance_end) if utterance_end is not None else None,
        vad_events=flags.get("vad_events", False),
        punctuate=flags.get("punctuate", False) or flags.get("smart_format", False),
    )
    return params, options


# -- the open stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    """A client text message: a control for the stream, a new vocabulary (``Configure``), or neither."""

    control: Control | None = None
    vocabulary: str | None = None
    reply: str | None = None


@dataclass
class DeepgramStream:
    """One open Deepgram stream's translation state."""

    options: Options
    model: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    cursor: float = 0.0
    """Where the last final ended: the unfinalized range (interim ``Results``) starts here."""
    in_speech: bool = False
    words_since_speech_final: bool = False
    words_since_utterance_end: bool = False
    _audio_hash: Any = field(default_factory=hashlib.sha256, repr=False)

    @property
    def model_uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"asr-model:{self.model}"))

    def audio(self, data: bytes) -> None:
        """Audio the client sent (for ``Metadata``'s sha256)."""
        self._audio_hash.update(data)

    # -- client -> server ----------------------------------------------------------------------
    def client_text(self, text: str) -> ClientEvent:
        """A text message; raises a non-fatal ``bad_message`` for what Deepgram would answer with a SchemaError."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ProtocolError("bad_message", f"text message is not JSON: {exc}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "KeepAlive":
            return ClientEvent()
        if kind == "Finalize":
            return ClientEvent(control=Control.FINALIZE)
        if kind == "CloseStream":
            return ClientEvent(control=Control.STOP)
        if kind == "Configure":
            return self._configure(data)
        raise ProtocolError(
            "bad_message", f"unknown message type {kind!r}; expected KeepAlive, Finalize, CloseStream or Configure"
        )

    def _configure(self, data: dict) -> ClientEvent:
        def failure(code: str, description: str) -> ClientEvent:
            return ClientEvent(reply=_dump(
                {"type": "ConfigureFailure", "request_id": self.request_id, "code": code, "description": description}
            ))

        features = data.get("features") or {}
        if not isinstance(features, dict) or any(features.values()):
            return failure("CONFIGURE_INTERNAL_ERROR", "formatting features cannot be changed on this server")
        keyterms = data.get("keyterms")
        if keyterms is None:
            return ClientEvent(reply=_dump({"type": "ConfigureSuccess", "request_id": self.request_id}))
        if not isinstance(keyterms, list) or not all(isinstance(k, str) for k in keyterms):
            raise ProtocolError("bad_message", "Configure keyterms must be a list of strings")
        try:
            prompt = vocabulary(keyterms)
        except ValueError as exc:
            return failure("CONFIGURE_KEYTERM_LIMIT_EXCEEDED", str(exc))
        reply = {"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": keyterms}
        return ClientEvent(vocabulary=prompt, reply=_dump(reply))

    def schema_error(self, exc: ProtocolError, text: str) -> str:
        """The ``Error`` message for a text message that could not be used (the stream goes on)."""
        return _dump({"type": "Error", "variant": "SchemaError", "description": exc.message, "message": text[:1000]})

    # -- server -> client ----------------------------------------------------------------------
    def results(self, messages: list[Partial | Final], activity: Activity, *, from_finalize: bool) -> list[str]:
        """A call's messages, and the VAD's view after it, as Deepgram's messages."""
        out: list[str] = []
        finals = [m for m in messages if isinstance(m, Final)]
        if not self.in_speech and (activity.speech_start is not None or finals):
            self.in_speech = True  # an utterance may begin and end within one call: its start is its first word
            if self.options.vad_events:
                starts = [f.start for f in finals[:1]] + ([activity.speech_start] if activity.speech_start is not None else [])
                out.append(_dump({"type": "SpeechStarted", "channel": CHANNEL, "timestamp": min(starts)}))
        ended = self.in_speech and activity.speech_start is None
        last_final = finals[-1] if finals else None
        for message in messages:
            if isinstance(message, Final):
                self.words_since_speech_final = self.words_since_utterance_end = True
                speech_final = ended and message is last_final and self.options.endpointing
                out.append(self._final(message, speech_final=speech_final, from_finalize=from_finalize))
            else:
                out.append(self._interim(message))
        if ended:
            self.in_speech = False
            if self.options.endpointing and last_final is None and self.words_since_speech_final:
                # The utterance's words were final already (by agreement): an empty final marks its end.
                out.append(self._results(self.cursor, self.cursor, "", [], is_final=True, speech_final=True,
                                         from_finalize=from_finalize))
            if self.options.endpointing:
                self.words_since_speech_final = False
            if self.options.utterance_end_ms is not None and self.words_since_utterance_end:
                out.append(_dump({"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": activity.last_final_end}))
                self.words_since_utterance_end = False
        return out

    def _final(self, final: Final, *, speech_final: bool, from_finalize: bool) -> str:
        words = [
            {"word": bare_word(w.word), "start": w.start, "end": w.end, "confidence": round(w.probability, 4),
             "punctuated_word": w.word.strip()}
            for w in final.words
        ]
        start, self.cursor = self.cursor, max(self.cursor, final.end)
        return self._results(start, self.cursor, self._transcript(words), words, is_final=True,
                             speech_final=speech_final, from_finalize=from_finalize)

    def _interim(self, partial: Partial) -> str:
        # A partial carries no word times: each word gets a share of the partial's span by its length.
        tokens = partial.text.split()
        total = sum(len(t) for t in tokens) or 1
        span, at, words = max(partial.end - partial.start, 0.0), partial.start, []
        for token in tokens:
            end = at + span * len(token) / total
            words.append({"word": bare_word(token), "start": round(at, 3), "end": round(end, 3), "confidence": 0.0,
                          "punctuated_word": token})
            at = end
        return self._results(self.cursor, max(self.cursor, partial.end), self._transcript(words), words,
                             is_final=False, speech_final=False, from_finalize=False)

    def _transcript(self, words: list[dict]) -> str:
        return " ".join(w["punctuated_word"] if self.options.punctuate else w["word"] for w in words)

    def _results(self, start: float, end: float, transcript: str, words: list[dict], *, is_final: bool,
                 speech_final: bool, from_finalize: bool) -> str:
        confidence = sum(w["confidence"] for w in words) / len(words) if words and is_final else 0.0
        return _dump({
            "type": "Results", "channel_index": CHANNEL, "duration": round(end - start, 3), "start": round(start, 3),
            "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": round(confidence, 4), "words": words}]},
            "metadata": {"request_id": self.request_id, "model_uuid": self.model_uuid,
                         "model_info": {"name": self.model, "version": "1", "arch": "whisper"}},
        })

    def metadata(self, duration: float) -> str:
        """The last message of a stream the client closed (``CloseStream``)."""
        return _dump({
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
            "sha256": self._audio_hash.hexdigest(), "created": self.created, "duration": round(duration, 3),
            "channels": 1, "models": [self.model_uuid],
            "model_info": {self.model_uuid: {"name": self.model, "version": "1", "arch": "whisper"}},
        })

    def close_frame(self, exc: ProtocolError) -> tuple[int, str]:
        """A fatal error as Deepgram reports it: a close code and a reason that starts with its error code."""
        code, close = {
            "bad_audio": ("DATA-0000", CLOSE_POLICY),
            "idle_timeout": ("NET-0001", CLOSE_INTERNAL),
        }.get(exc.code, (exc.code, exc.close_code or CLOSE_POLICY))
        return close, _reason(f"{code}: {exc.message}")


def _reason(text: str) -> str:
    """A close reason: at most 123 bytes of UTF-8 (RFC 6455)."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


def _dump(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))
