"""Protocol v1's stream rules for a dialect's messages, and what the dialects share.

A dialect's client message is not a protocol v1 frame: Deepgram's ``Finalize`` is a text frame v1 does not know,
OpenAI's audio arrives base64 inside JSON. ``DialectProtocol`` is ``StreamProtocol`` (same pending audio, turn ends,
idle and duration ends, speed and pending bounds) with one more entry, ``receive_event``: one client message, by
the size the client sent, carrying audio, a turn end, the end of the stream, or nothing the stream acts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from serve.core.audio import SAMPLE_RATE
from serve.core.protocol import StreamProtocol
from serve.core.session import MAX_PROMPT_CHARS
from serve.core.stream import StreamState


class Control(str, Enum):
    """What a dialect's control message asks of the stream, in protocol v1's terms."""

    FINALIZE = "finalize"
    """The turn ends here: commit what was heard (Deepgram ``Finalize``, OpenAI ``input_audio_buffer.commit``)."""
    STOP = "stop"
    """No more audio: flush and end (Deepgram ``CloseStream``)."""


class DialectProtocol(StreamProtocol):
    """``StreamProtocol`` fed by a dialect's messages."""

    def receive_event(self, size: int, now: float, *, audio: bytes | None = None, control: Control | None = None) -> float:
        """One client message of ``size`` bytes as sent (text in UTF-8), carrying ``audio`` (PCM in the session's
        encoding), a ``control``, or neither (a keep-alive, a settings update): ``admit`` then ``apply``. Returns the
        seconds of audio added.

        The same rules, in the same order and with the same errors, as ``StreamProtocol.receive`` applies to a v1
        frame: both use ``admit`` and ``control`` (tests/core/test_dialects.py checks them side by side).
        """
        self.admit(size, now)
        return self.apply(now, audio=audio, control=control)

    def apply(self, now: float, *, audio: bytes | None = None, control: Control | None = None) -> float:
        """What an admitted message carries: its audio, then its control. Returns the seconds of audio added."""
        seconds = self._audio(audio, now) if audio is not None else 0.0
        if control is not None:
            self.control(finalize=control is Control.FINALIZE)
        return seconds


@dataclass(frozen=True)
class Activity:
    """What the VAD says of a stream after a call: where its unfinished speech began, if any is pending."""

    speech_start: float | None
    """Stream time of the start of the earliest utterance not yet final; None when no speech is pending."""
    last_final_end: float
    last_voiced: float = 0.0
    """Stream time where the VAD last heard speech."""

    @classmethod
    def of(cls, state: StreamState) -> Activity:
        pending = state.closed[0] if state.closed else state.vad.open_segment
        return cls(
            speech_start=None if pending is None else round(pending.start / SAMPLE_RATE, 3),
            last_final_end=state.last_final_end,
            last_voiced=round(state.vad.last_voiced / SAMPLE_RATE, 3),
        )


def primary_language(tag: str) -> str:
    """``en-US`` -> ``en``: Whisper knows languages, not regions (BCP-47's primary subtag, lower case)."""
    return tag.split("-")[0].split("_")[0].lower()


def vocabulary(terms: list[str]) -> str:
    """Terms a client expects (keyterms, keywords, a prompt) as one Whisper prompt; raises ValueError past the bound."""
    text = ", ".join(" ".join(t.split()) for t in terms if t.strip())
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"the vocabulary is {len(text)} characters; at most {MAX_PROMPT_CHARS} fit Whisper's prompt")
    return text


_EDGE_PUNCTUATION = re.compile(r"^[^\w']+|[^\w']+$")


def bare_word(word: str) -> str:
    """A word without its punctuation and in lower case, as Deepgram's ``word`` and search engines want it."""
    return _EDGE_PUNCTUATION.sub("", word.strip()).lower()
