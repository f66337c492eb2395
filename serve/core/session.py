"""A client's stream as the Ingress holds it: its query parameters, audio edge and state."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.core.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, Encoding, PcmDecoder
from serve.core.errors import CLOSE_POLICY, CLOSE_UNSUPPORTED, ProtocolError
from serve.core.stream import StreamState

# Languages Whisper knows (ISO 639-1 codes it was trained with), checked at the edge.
WHISPER_LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru "
    "sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo yue zh".split()
)
KNOWN_PARAMS = frozenset({"sample_rate", "encoding", "language", "task", "interim_results", "token", "prompt"})
MAX_PROMPT_CHARS = 400
"""A vocabulary prompt's bound: with ``streaming.prompt_chars`` of committed text it fits Whisper's 223-token prompt."""


class StreamParams(BaseModel):
    """The query parameters of ``/v1/listen`` (PROTOCOL.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(16_000, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    encoding: Encoding = Encoding.F32LE
    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    interim_results: bool = True
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    """Names and jargon to expect: they seed the stream's Whisper prompt (its vocabulary)."""
    token: str | None = Field(None, repr=False)
    """Checked by the Ingress's auth gate before the params; never shown."""

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, default_language: str, multilingual: bool) -> StreamParams:
        """Validate the query; raises a fatal ProtocolError (1008 or 1003), never silently defaults."""
        unknown = sorted(set(query) - KNOWN_PARAMS)
        if unknown:
            raise ProtocolError("bad_message", f"unknown query parameter(s): {', '.join(unknown)}", CLOSE_POLICY)
        raw = dict(query)
        flag = raw.get("interim_results")
        if flag is not None and flag.lower() not in ("true", "false", "1", "0"):
            raise ProtocolError("bad_message", f"interim_results must be true or false, not {flag!r}", CLOSE_POLICY)
        try:
            params = cls.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            code = CLOSE_UNSUPPORTED if where in ("sample_rate", "encoding") else CLOSE_POLICY
            error = "bad_audio" if code == CLOSE_UNSUPPORTED else "bad_message"
            raise ProtocolError(error, f"query parameter {where}: {problem['msg']}", code) from None
        if params.language is not None and not params.language:
            raise ProtocolError("bad_message", "query parameter language is empty; name one (or 'auto'), or leave it out", CLOSE_POLICY)
        language = (params.language or default_language).lower()
        if language != "auto" and language not in WHISPER_LANGUAGES:
            raise ProtocolError("bad_message", f"unknown language {language!r}", CLOSE_POLICY)
        if not multilingual and language not in ("en", "auto"):
            raise ProtocolError("bad_message", f"this model is English-only; language {language!r} is not available", CLOSE_POLICY)
        if not multilingual and params.task == "translate":
            raise ProtocolError("bad_message", "this model is English-only and cannot translate", CLOSE_POLICY)
        return params.model_copy(update={"language": language})


@dataclass
class Session:
    """One open stream on an Ingress replica."""

    params: StreamParams
    client: str = ""
    """The client's address as the Ingress saw it (for the per-address cap)."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: StreamState = field(init=False)
    decoder: PcmDecoder = field(init=False)

    def __post_init__(self) -> None:
        language = None if self.params.language == "auto" else self.params.language
        self.state = StreamState(
            language=language, task=self.params.task, interim=self.params.interim_results,
            vocabulary=" ".join(self.params.prompt.split()),
        )
        self.decoder = PcmDecoder(self.params.encoding, self.params.sample_rate)
