"""OpenAI's Realtime transcription session (GA shape) over the stream core, without I/O.

Served at ``/v1/realtime?intent=transcription``, so OpenAI's SDKs reach it with ``base_url=http://HOST:8000/v1``.
The mapping (README "Use it from a Deepgram or OpenAI client"):
- ``session.update`` sets the audio format (``audio/pcm`` at any rate, resampled; OpenAI sends 24 kHz), the
  language, the vocabulary (``transcription.prompt`` and ``keywords``) and turn detection (``server_vad`` is the
  service's VAD; ``null`` leaves turns to the client's commits); ``session.updated`` answers with what is in effect;
- ``input_audio_buffer.append`` is audio, ``.commit`` ends the turn (v1 ``finalize``) and is answered
  ``input_audio_buffer.committed`` at once, ``.clear`` drops the audio not yet transcribed;
- a v1 ``final`` is a ``conversation.item.input_audio_transcription.delta``: append-only, never revised (partials
  are not sent). ``.completed`` closes an item with the concatenation of its deltas, at the end of an utterance
  (the VAD's pause: ``speech_stopped`` and ``committed`` come first) or once a commit's audio is transcribed;
- errors are ``error`` events (``type``, ``code``, ``message``, ``param``, ``event_id``); a fatal one is followed by a
  close, with reason ``<type>.<code>`` (a bad key closes with 3000, as OpenAI does).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from serve.core.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from serve.core.dialects.protocol import Activity, Control, primary_language, vocabulary
from serve.core.errors import CLOSE_POLICY, ProtocolError
from serve.core.messages import Final, Partial
from serve.core.session import StreamParams
from serve.core.stream import StreamState

PATH = "/v1/realtime"
OPENAI_RATE = 24_000
"""The rate OpenAI's ``audio/pcm`` is sent at, and the default here."""
CLOSE_UNAUTHORIZED = 3000
"""What OpenAI closes with after ``invalid_api_key`` (IANA's registered 'Unauthorized')."""
MIN_COMMIT_S = 0.1
"""OpenAI refuses to commit less audio than this (``input_audio_buffer_commit_empty``)."""
KNOWN_QUERY = {"intent", "model", "token"}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class RealtimeError(ProtocolError):
    """An error as OpenAI reports it: an ``error`` event with its ``type``, ``code`` and ``param``."""

    def __init__(
        self, code: str, message: str, *, param: str | None = None, kind: str = "invalid_request_error",
        event_id: str | None = None, close_code: int | None = None,
    ) -> None:
        super().__init__(code, message, close_code)
        self.param, self.kind, self.event_id = param, kind, event_id


def as_realtime(exc: ProtocolError) -> RealtimeError:
    """A protocol v1 error (a limit, the auth gate, the recognizer) in OpenAI's terms."""
    if isinstance(exc, RealtimeError):
        return exc
    if exc.code == "unauthorized":
        return RealtimeError("invalid_api_key", exc.message, close_code=CLOSE_UNAUTHORIZED)
    kind = "server_error" if exc.code in ("overloaded", "internal") else "invalid_request_error"
    return RealtimeError(exc.code, exc.message, kind=kind, close_code=exc.close_code)


def check_query(items: Iterable[tuple[str, str]]) -> None:
    """The upgrade's query: a transcription session (``intent=transcription``); raises a fatal RealtimeError."""
    query = dict(items)
    unknown = sorted(set(query) - KNOWN_QUERY)
    if unknown:
        raise RealtimeError("unknown_parameter", f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], close_code=CLOSE_POLICY)
    if query.get("intent") != "transcription":
        raise RealtimeError(
            "invalid_value", "this server holds transcription sessions only: connect with ?intent=transcription",
            param="intent", close_code=CLOSE_POLICY,
        )


@dataclass(frozen=True)
class ClientEvent:
    """What one client event asks: audio to add, a control, and the events to answer with at once."""

    audio: bytes | None = None
    control: Control | None = None
    replies: list[str] = field(default_factory=list)


@dataclass
class RealtimeSession:
    """One open transcription session's settings and translation state."""

    model: str
    default_language: str
    multilingual: bool
    id: str = field(default_factory=lambda: _id("sess"))
    sample_rate: int = OPENAI_RATE
    language: str = ""
    prompt: str = ""
    keywords: list[str] = field(default_factory=list)
    server_vad: bool = True
    audio_bytes: int = 0
    """Audio appended since the session began (the format may change only before any)."""
    uncommitted_bytes: int = 0
    """Audio appended since the last commit or clear."""
    item: str | None = None
    """The item the words heard now belong to (made when first needed)."""
    previous_item: str | None = None
    item_text: list[str] = field(default_factory=list)
    item_start: float | None = None
    turns: deque[tuple[str, str | None]] = field(default_factory=deque)
    """(``commit`` or ``clear``, its item) for each turn end whose call has not come back yet, oldest first."""
    in_speech: bool = False

    def __post_init__(self) -> None:
        self.language = self.language or self.default_language

    # -- settings ------------------------------------------------------------------------------
    @property
    def vocabulary(self) -> str:
        return vocabulary([self.prompt, *self.keywords])

    def configure(self, state: StreamState) -> None:
        """Put the session's language and vocabulary into the stream state before a call (they may change)."""
        state.language = None if self.language == "auto" else self.language
        state.vocabulary = self.vocabulary

    def effective(self) -> dict[str, Any]:
        """The session as it is in effect (``session.created``/``.updated``)."""
        transcription: dict[str, Any] = {"model": self.model, "language": self.language, "prompt": self.prompt}
        if self.keywords:
            transcription["keywords"] = self.keywords
        return {
            "type": "transcription", "id": self.id, "object": "realtime.transcription_session",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": self.sample_rate},
                "noise_reduction": None,
                "transcription": transcription,
                "turn_detection": {"type": "server_vad"} if self.server_vad else None,
            }},
            "include": None,
        }

    def created(self) -> str:
        return _event("session.created", session=self.effective())

    # -- client -> server ----------------------------------------------------------------------
    def client_text(self, text: str) -> ClientEvent:
        """One client event; raises a non-fatal RealtimeError for one that cannot be used."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RealtimeError("invalid_json", f"The event is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RealtimeError("invalid_json", "An event must be a JSON object.")
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        try:
            return self._client_event(data)
        except RealtimeError as exc:
            exc.event_id = event_id
            raise

    def _client_event(self, data: dict) -> ClientEvent:
        kind = data.get("type")
        if kind == "input_audio_buffer.append":
            audio = data.get("audio")
            if not isinstance(audio, str):
                raise RealtimeError("missing_required_parameter", "Missing required parameter: 'audio'.", param="audio")
            try:
                pcm = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise RealtimeError("invalid_value", "audio is not valid base64.", param="audio") from None
            self.audio_bytes += len(pcm)
            self.uncommitted_bytes += len(pcm)
            return ClientEvent(audio=pcm)
        if kind == "input_audio_buffer.commit":
            return self._commit()
        if kind == "input_audio_buffer.clear":
            return self._clear()
        if kind == "session.update":
            self._update(data.get("session"))
            return ClientEvent(replies=[_event("session.updated", session=self.effective())])
        raise RealtimeError(
            "invalid_value", f"event type {kind!r} is not supported in a transcription session", param="type"
        )

    def _commit(self) -> ClientEvent:
        seconds = self.uncommitted_bytes / 2 / self.sample_rate
        if seconds < MIN_COMMIT_S:
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_S * 1000:.0f}ms "
                f"of audio, but buffer only has {seconds * 1000:.2f}ms of audio.",
            )
        self.uncommitted_bytes = 0
        item = self._current_item()
        self.turns.append(("commit", item))
        committed = _event("input_audio_buffer.committed", item_id=item, previous_item_id=self.previous_item)
        return ClientEvent(control=Control.FINALIZE, replies=[committed])

    def _clear(self) -> ClientEvent:
        cleared = _event("input_audio_buffer.cleared")
        if not self.uncommitted_bytes:
            return ClientEvent(replies=[cleared])
        self.uncommitted_bytes = 0
        # The audio so far is decoded once more, as a turn, and its words dropped: they were never committed.
        self.turns.append(("clear", self.item))
        return ClientEvent(control=Control.FINALIZE, replies=[cleared])

    def _update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise RealtimeError("missing_required_parameter", "Missing required parameter: 'session'.", param="session")
        _known(session, "session", {"type", "audio", "include", "id", "object"})
        if session.get("type", "transcription") != "transcription":
            raise RealtimeError(
                "invalid_value", "this server holds transcription sessions only: session.type must be 'transcription'",
                param="session.type",
            )
        audio = _section(session, "audio", "session")
        _known(audio, "session.audio", {"input"})
        entry = _section(audio, "input", "session.audio")
        _known(entry, "session.audio.input", {"format", "transcription", "turn_detection", "noise_reduction"})
        # Check everything first, then apply: a refused update changes nothing.
        rate = self._format(entry["format"]) if "format" in entry else self.sample_rate
        language, prompt, keywords = self.language, self.prompt, self.keywords
        if "transcription" in entry:
            transcription = entry["transcription"] or {}
            if not isinstance(transcription, dict):
                raise RealtimeError("invalid_type", "transcription must be an object", param="session.audio.input.transcription")
            where = "session.audio.input.transcription"
            _known(transcription, where, {"model", "language", "prompt", "keywords", "languages", "delay"})
            if transcription.get("language") is not None:
                language = self._language(transcription["language"])
            prompt = _text(transcription.get("prompt", prompt) or "", f"{where}.prompt")
            keywords = transcription.get("keywords", keywords) or []
            if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
                raise RealtimeError("invalid_type", "keywords must be a list of strings", param=f"{where}.keywords")
        try:
            vocabulary([prompt, *keywords])
        except ValueError as exc:
            raise RealtimeError("string_above_max_length", str(exc), param="session.audio.input.transcription.prompt") from None
        server_vad = self.server_vad
        if "turn_detection" in entry:
            detection = entry["turn_detection"]
            if detection is not None and (not isinstance(detection, dict) or detection.get("type") not in ("server_vad", "semantic_vad")):
                raise RealtimeError(
                    "invalid_value", "turn_detection must be null, server_vad or semantic_vad",
                    param="session.audio.input.turn_detection.type",
                )
            server_vad = detection is not None  # semantic_vad: the service's VAD too, reported as server_vad
        self.sample_rate, self.language, self.prompt, self.keywords, self.server_vad = rate, language, prompt, keywords, server_vad

    def _format(self, audio_format: Any) -> int:
        where = "session.audio.input.format"
        if not isinstance(audio_format, dict):
            raise RealtimeError("invalid_type", "format must be an object", param=where)
        if audio_format.get("type", "audio/pcm") != "audio/pcm":
            raise RealtimeError(
                "invalid_value", f"format {audio_format.get('type')!r} is not supported by this server; send audio/pcm",
                param=f"{where}.type",
            )
        rate = audio_format.get("rate", OPENAI_RATE)
        if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise RealtimeError(
                "invalid_value", f"rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}", param=f"{where}.rate"
            )
        if rate != self.sample_rate and self.audio_bytes:
            raise RealtimeError("invalid_value", "the audio format cannot change once audio was appended", param=f"{where}.rate")
        return rate

    def _language(self, language: Any) -> str:
        where = "session.audio.input.transcription.language"
        if not isinstance(language, str):
            raise RealtimeError("invalid_type", "language must be a string", param=where)
        try:
            params = StreamParams.from_query(
                {"language": primary_language(language)}, default_language=self.default_language,
                multilingual=self.multilingual,
            )
        except ProtocolError as exc:
            raise RealtimeError("invalid_value", exc.message, param=where) from None
        return params.language or self.default_language

    # -- server -> client ----------------------------------------------------------------------
    def _current_item(self) -> str:
        if self.item is None:
            self.item = _id("item")
        return self.item

    def results(self, messages: list[Partial | Final], activity: Activity, *, turn_end: bool, flush: bool) -> list[str]:
        """A call's messages, and the VAD's view after it, as events. ``turn_end``: the call ended a turn (a commit
        or clear, in order); ``flush``: it was the stream's last call."""
        turn = self.turns.popleft() if turn_end and self.turns else None
        out: list[str] = []
        finals = [m for m in messages if isinstance(m, Final)]
        cleared = turn is not None and turn[0] == "clear"
        if cleared:
            finals = []  # the cleared audio's words: never committed
        if self.server_vad and not self.in_speech and not cleared and (activity.speech_start is not None or finals):
            self.in_speech = True
            start = min([f.start for f in finals[:1]] + ([activity.speech_start] if activity.speech_start is not None else []))
            out.append(_event("input_audio_buffer.speech_started", audio_start_ms=round(start * 1000), item_id=self._current_item()))
        for final in finals:
            item = self._current_item()
            if self.item_start is None:
                self.item_start = final.start
            delta = (" " if self.item_text else "") + final.text
            self.item_text.append(delta)
            out.append(_event("conversation.item.input_audio_transcription.delta", item_id=item, content_index=0, delta=delta))
        if turn is not None:
            if turn[0] == "commit" or self.item_text:
                out.append(self._completed(activity))
            self.in_speech = False
        elif self.server_vad and self.in_speech and activity.speech_start is None and not self.turns:
            # (a commit on its way ends this item itself, with every word before it)
            item = self._current_item()
            out.append(_event("input_audio_buffer.speech_stopped", audio_end_ms=round(activity.last_voiced * 1000), item_id=item))
            out.append(_event("input_audio_buffer.committed", item_id=item, previous_item_id=self.previous_item))
            out.append(self._completed(activity))
            self.in_speech = False
        elif flush and self.item_text:
            out.append(self._completed(activity))
        return out

    def _completed(self, activity: Activity) -> str:
        item = self._current_item()
        seconds = max(activity.last_final_end - (self.item_start or activity.last_final_end), 0.0)
        event = _event(
            "conversation.item.input_audio_transcription.completed", item_id=item, content_index=0,
            transcript="".join(self.item_text), usage={"type": "duration", "seconds": round(seconds, 3)},
        )
        self.previous_item, self.item, self.item_text, self.item_start = item, None, [], None
        return event

    def error(self, exc: ProtocolError) -> str:
        """The ``error`` event for ``exc``."""
        error = as_realtime(exc)
        return _event("error", error={
            "type": error.kind, "code": error.code, "message": error.message, "param": error.param,
            "event_id": error.event_id,
        })

    @staticmethod
    def close_reason(exc: ProtocolError) -> tuple[int, str]:
        error = as_realtime(exc)
        return error.close_code or CLOSE_POLICY, f"{error.kind}.{error.code}"[:123]


def _known(section: dict, where: str, known: set[str]) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        raise RealtimeError("unknown_parameter", f"Unknown parameter: '{where}.{unknown[0]}'.", param=f"{where}.{unknown[0]}")


def _section(parent: dict, name: str, where: str) -> dict:
    value = parent.get(name) or {}
    if not isinstance(value, dict):
        raise RealtimeError("invalid_type", f"{name} must be an object", param=f"{where}.{name}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RealtimeError("invalid_type", "must be a string", param=where)
    return value


def _event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "event_id": _id("event"), **fields}, separators=(",", ":"))
