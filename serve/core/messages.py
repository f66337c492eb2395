"""Every wire message of protocol v1 (../shared/PROTOCOL.md), validated once here."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from serve.core.errors import ProtocolError
from serve.core.words import Word

# -- client -> server ---------------------------------------------------------


class Finalize(BaseModel):
    """Commit everything heard so far now (end of a turn)."""

    type: Literal["finalize"]


class Stop(BaseModel):
    """No more audio: flush, send ``end``, close with 1000."""

    type: Literal["stop"]


ClientMessage = Annotated[Finalize | Stop, Field(discriminator="type")]
_client_adapter: TypeAdapter[Finalize | Stop] = TypeAdapter(ClientMessage)


def parse_client_text(text: str) -> Finalize | Stop:
    """A client text frame as a message; raises a non-fatal ``bad_message`` error otherwise."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"text frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_message", "a control message must be a JSON object")
    kind = data.get("type")
    if kind not in ("finalize", "stop"):
        raise ProtocolError("bad_message", f"unknown message type {kind!r}; expected 'finalize' or 'stop'")
    try:
        return _client_adapter.validate_python(data)
    except ValidationError as exc:  # pragma: no cover - both types have only 'type'
        raise ProtocolError("bad_message", str(exc)) from None


# -- server -> client ---------------------------------------------------------


class _ServerMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class Ready(_ServerMessage):
    type: Literal["ready"] = "ready"
    session: str
    model: str
    sample_rate: int
    language: str | None = None
    """The stream's language when it is fixed from the start; left out for ``language=auto`` (partials and finals
    carry it once detected)."""


class Partial(_ServerMessage):
    type: Literal["partial"] = "partial"
    text: str
    start: float
    end: float
    language: str | None = None
    """The stream's language, once known (named by the client, or detected and pinned)."""


class WordTiming(BaseModel):
    model_config = ConfigDict(frozen=True)

    word: str
    start: float
    end: float
    probability: float


class Final(_ServerMessage):
    type: Literal["final"] = "final"
    text: str
    start: float
    end: float
    words: list[WordTiming]
    language: str | None = None
    """The stream's language, once known (named by the client, or detected and pinned)."""

    @classmethod
    def from_words(cls, words: list[Word], language: str | None = None) -> Final:
        return cls(
            text="".join(w.word for w in words).strip(),
            start=round(words[0].start, 3),
            end=round(words[-1].end, 3),
            words=[WordTiming(**w.as_dict()) for w in words],  # type: ignore[arg-type]
            language=language,
        )


class Error(_ServerMessage):
    type: Literal["error"] = "error"
    code: str
    message: str


class End(_ServerMessage):
    type: Literal["end"] = "end"
    duration: float


ServerMessage = Annotated[Ready | Partial | Final | Error | End, Field(discriminator="type")]
server_message_adapter: TypeAdapter[Ready | Partial | Final | Error | End] = TypeAdapter(ServerMessage)
