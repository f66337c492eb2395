"""The stable-prefix streaming policy over VAD-gated audio windows.

One stream's life is a pure state machine: ``push`` audio (scored by the VAD as it
arrives), take the finals ``settle`` can give without a decode, ask ``next_window`` what
to decode, decode it anywhere (in a batch with other streams), hand the result to
``apply`` and get ``partial``/``final`` messages.
All of it lives in ``StreamState``, so the caller may keep nothing between calls.

Commit rules (LocalAgreement-2, as in ufal/whisper_streaming):
- a word is final once two consecutive decodes of the growing window agree on it, with ``commit_margin_s`` of
  audio after it in the older one. The window is decoded after ``eager_step_s`` of new speech while the decoder
  has room, else after ``min_step_s`` (a busy decoder sheds the sooner decodes: the stream's newer audio joins
  its next decode), so the cadence, and how soon words are final, follows capacity;
- when the VAD hears the speaker pause (endpointing) or the client sends
  ``finalize``, the whole utterance is decoded once more and everything is final;
- the window never grows past ``max_buffer_s``: before that, words are force-committed
  and the audio is trimmed at a committed word boundary;
- after a commit, up to ``context_s`` of committed audio stays at the window's start and
  its words are forced as the decoder's prefix, so the next words are heard in context
  and only new words come back.
With ``commit_on_agreement`` off (finals at pauses, as cloud APIs make them) decodes do
not commit by agreement. Instead, once the VAD hears ``speech_pad_ms`` of silence the
utterance is decoded up to that pause at once (a ``pause`` window). If the pause becomes an
endpoint, that decode, which heard the whole utterance, is its final (``settle``), so the
final waits for the endpoint alone, not for a decode after it. Once ``pause_commit_s`` of
speech waits uncommitted, such a pause commits everything before it, and a forced window
reaches the audio just received.
Finals are never revised, never overlap and their timestamps only increase.

(Over 500 lines on purpose: the rules above share one state and are read together; split, each part would need
the others to be understood.)
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serve.core.audio import SAMPLE_RATE, to_float32
from serve.core.engine import DecodeRequest, DecodeResult
from serve.core.messages import Final, Partial
from serve.core.vad import SileroVad, SpeechSegment, VadOptions, VadState, segment
from serve.core.words import Word, comparable, join_words

REPEAT_TOLERANCE_S = 0.3
"""A first new word equal to the last committed one and starting this soon after it is a repeat."""
PREFIX_RETRY_S = 1.0
"""A final/forced decode that returns nothing after its prefix with this much audio past it is decoded again without."""
UNHEARD_RETRY_S = 2.0
"""A final decode whose words end this long before the utterance's last voiced sample stopped early: the rest is
decoded again after its words, instead of being trimmed away unheard."""
LANGUAGE_PIN_PROBABILITY = 0.5
"""With language=auto, a decode that heard words pins its detected language for the stream when the detector is
at least this sure (faster-whisper's threshold too); else a later, longer window detects again, and the decode that
commits the first utterance pins it whatever the probability."""


class StreamingOptions(BaseModel):
    """When to decode, when to commit, how much audio a stream may hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vad: VadOptions = Field(default_factory=VadOptions)
    min_step_s: float = Field(
        1.5, ge=0.1, le=10.0,
        description="New voiced audio after which the window is decoded again even when the decoder is busy (a "
        "partial decode, shed only past shed_partials_wait_s): the cadence under load, the floor of the step.",
    )
    eager_step_s: float = Field(
        0.5, ge=0.0, le=10.0,
        description="New voiced audio after which the window is decoded sooner, when the decoder has room (an eager "
        "decode): shown as a partial at once and compared for agreement like any partial decode, so words are seen "
        "and become final at the cadence the decoder has room for. Shed first under load, so the step grows with "
        "load by itself, up to min_step_s. 0: off.",
    )
    max_buffer_s: float = Field(
        15.0, ge=3.0, le=29.0, description="Uncommitted audio is force-committed before it grows past this."
    )
    commit_margin_s: float = Field(
        0.5, ge=0.0, le=3.0, description="Agreed words ending this close to the end of the older of the two agreeing windows wait for one more decode."
    )
    force_margin_s: float = Field(
        1.0, ge=0.0, le=2.0, description="On a forced commit, words ending this close to the window's end stay tentative."
    )
    context_s: float = Field(
        5.0, ge=0.0, le=10.0,
        description="Committed audio kept at the start of the next window (its words forced as the decoder's prefix), "
        "so a new utterance is heard in context.",
    )
    context_gap_s: float = Field(
        2.0, ge=0.0, le=10.0, description="Silence after which that context is dropped instead of decoded again."
    )
    agree_window_s: float = Field(
        3.0, ge=0.0, le=10.0,
        description="Words are committed on agreement only when the older of the two agreeing windows holds at least "
        "this much audio: on the first seconds of an utterance heard without context, tiny.en's words change as it "
        "hears more ('and mister' heard as 'mister', 'but though on the whole' as 'but they'll want the hole'), "
        "and two short decodes can agree on them. Partials show them meanwhile; a pause commits them as before.",
    )
    prompt_chars: int = Field(
        400, ge=0, le=800,
        description="Committed text fed back to Whisper as its prompt (offline transcribe feeds up to 223 tokens).",
    )
    commit_on_agreement: bool = Field(
        True,
        description="Commit the words two consecutive partial decodes agree on. Off: words become final only at a "
        "pause (an endpoint, or a shorter pause once pause_commit_s of speech waits), a finalize, or a forced "
        "commit; partials carry everything else.",
    )
    pause_commit_s: float = Field(
        8.0, ge=1.0, le=29.0,
        description="With commit_on_agreement off: once the uncommitted part of an utterance is this long, a pause "
        "of speech_pad_ms commits all of it, without waiting for min_silence_ms, so run-on speech gets finals at its "
        "short pauses instead of at the max_buffer_s bound.",
    )
    skip_partials_behind_s: float = Field(
        3.0, ge=0.5, le=600.0,
        description="When one call brings more audio than this (the stream fell behind), only final and forced "
        "windows are decoded: partial decodes are skipped until it catches up, so finals keep coming under overload.",
    )


class WindowKind(str, Enum):
    PARTIAL = "partial"
    """Decode the live window; commit what two consecutive decodes agree on."""
    EAGER = "eager"
    """Decode the live window sooner than ``min_step_s``, when the decoder has room; otherwise as ``PARTIAL``."""
    FINAL = "final"
    """The speaker paused (or finalize): commit every word of the window."""
    FORCE = "force"
    """The window reached its bound: commit all but the last ``force_margin_s``."""
    PAUSE = "pause"
    """With commit_on_agreement off, the VAD heard a pause: decode the utterance up to it, so that if the pause
    becomes an endpoint its final is this decode; once ``pause_commit_s`` of speech waits, it commits all it
    heard. Not optional: it stands in for the final's decode."""


@dataclass(frozen=True)
class Window:
    """A span of the stream's pending audio to decode, in absolute samples."""

    kind: WindowKind
    start: int
    end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass
class StreamState:
    """Everything one stream needs between calls; compact (int16 audio, bounded)."""

    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    interim: bool = True
    """The client wants partials. Without them no partial or eager window is decoded: words become final at
    pauses, on finalize, or when the window is full, and no decode is spent on text nobody reads."""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    audio_start: int = 0
    """Absolute sample index of ``audio[0]``; audio before it is committed or silence."""
    vad: VadState = field(default_factory=VadState)
    closed: list[SpeechSegment] = field(default_factory=list)
    """Utterances the VAD closed that are not final yet, oldest first."""
    hypothesis: list[Word] = field(default_factory=list)
    """The last decode's uncommitted words (absolute times)."""
    committed: list[Word] = field(default_factory=list)
    """Committed words still inside the window: the decoder is made to begin with them (prefix)."""
    prompt: str = ""
    vocabulary: str = ""
    """Names and jargon the client expects (a ``prompt``, ``keyterm``s): always at the head of Whisper's prompt."""
    last_final_end: float = 0.0
    decoded_until: int = 0
    """End sample of the last decode of the window that agreement compares with."""
    heard_until: int = 0
    """End sample of the window whose decode gave ``hypothesis``."""
    pause_decoded: int = 0
    """End sample of the last ``pause`` window decoded."""
    partial_text: str = ""

    @property
    def received(self) -> int:
        return self.audio_start + self.audio.size

    @property
    def duration(self) -> float:
        return self.received / SAMPLE_RATE

    @property
    def quiet(self) -> bool:
        """No speech pending: no utterance open or waiting, no tentative words. A call on a quiet stream decodes
        nothing unless its own audio brings speech, so it is quick (the VAD only): such calls can share a trip."""
        return self.vad.open_segment is None and not self.closed and not self.hypothesis

    def window_audio(self, window: Window) -> np.ndarray:
        return self.audio[window.start - self.audio_start : window.end - self.audio_start]

    def trim_to(self, sample: int) -> None:
        """Forget audio before ``sample``."""
        sample = min(max(sample, self.audio_start), self.received)
        self.audio = self.audio[sample - self.audio_start :].copy()
        self.audio_start = sample


Message = Partial | Final


@dataclass(frozen=True)
class DecodeJob:
    """A window one call needs decoded, and the request that decodes it."""

    window: Window
    request: DecodeRequest

    @property
    def optional(self) -> bool:
        """A partial or eager decode: tentative text, which a busy decoder may refuse (shed)."""
        return self.window.kind in (WindowKind.PARTIAL, WindowKind.EAGER)

    @property
    def eager(self) -> bool:
        """Wanted only if the decoder has room now: shed before any other."""
        return self.window.kind is WindowKind.EAGER


@dataclass(frozen=True)
class ScoreJob:
    """A call's new audio for the VAD, scored before anything else: answered with its frames' probabilities
    (``run`` scores it in-line; a BufferManager scores the jobs of concurrent calls together, ``score_batch``)."""

    vad: SileroVad
    state: VadState
    samples: np.ndarray

    def run(self) -> np.ndarray:
        return self.vad.score(self.state, self.samples)


Job = ScoreJob | DecodeJob
CallSteps = Generator[Job, np.ndarray | DecodeResult | None, list[Message]]
"""``StreamProcessor.steps``: yields its VAD job, then decode jobs; is sent the VAD's probabilities, then each
decode's result (None: shed); returns the messages."""


class StreamProcessor:
    """Runs the policy for any number of streams; holds models and options only."""

    def __init__(self, options: StreamingOptions | None = None, vad: SileroVad | None = None) -> None:
        self.options = options or StreamingOptions()
        self.vad = vad or SileroVad()

    # -- audio in -------------------------------------------------------------
    def push(self, state: StreamState, pcm: np.ndarray) -> None:
        """Append 16 kHz int16 audio; the VAD scores only the new samples."""
        self._scored(state, self._append(state, pcm).run())

    def _append(self, state: StreamState, pcm: np.ndarray) -> ScoreJob:
        if pcm.dtype != np.int16:
            raise TypeError("push takes 16 kHz int16 audio")
        state.audio = np.concatenate([state.audio, pcm])
        return ScoreJob(self.vad, state.vad, to_float32(pcm))

    def _scored(self, state: StreamState, probs: np.ndarray) -> None:
        state.closed.extend(segment(state.vad, probs, self.options.vad))
        self._drop_silence(state)

    def finalize(self, state: StreamState) -> None:
        """Close the open utterance at the end of the audio so far."""
        open_segment = state.vad.open_segment
        if open_segment is not None:
            state.vad.open_segment = None
            # A speaker still talking may be mid-word (the VAD lags): the utterance runs to the end of the audio.
            # If the VAD has heard a pause since the last voiced frame, the utterance ended at that frame.
            paused = state.vad.pause_at > state.vad.last_voiced >= open_segment.start
            state.closed.append(SpeechSegment(open_segment.start, state.vad.last_voiced if paused else state.received))
        elif state.hypothesis:
            # Tentative words after every utterance the VAD closed: a burst it dropped as too short. Words inside
            # an utterance it closed (in this very call, under load) are that utterance's and are decoded with it;
            # a second window over them would only hear its committed words and invent what follows.
            after = state.closed[-1].end + self.options.vad.pad_samples if state.closed else state.audio_start  # type: ignore[operator]
            if round(state.hypothesis[-1].start * SAMPLE_RATE) >= after:
                state.closed.append(SpeechSegment(after, state.received))

    def _drop_silence(self, state: StreamState) -> None:
        """With no speech pending, keep only the pre-roll pad (plus the context, during a short pause)."""
        if state.closed or state.vad.open_segment is not None:
            return
        state.hypothesis = []
        gap = state.received / SAMPLE_RATE - state.last_final_end
        if state.committed and gap <= self.options.context_gap_s:
            return  # a short pause: the next utterance is decoded after this context
        self._trim(state, state.received - self.options.vad.pad_samples)

    # -- what to decode -------------------------------------------------------
    def next_window(self, state: StreamState, partials: bool = True, eager: bool = True) -> Window | None:
        """The next window due for decoding; with ``partials=False`` only final and forced ones, with ``eager=False``
        no eager ones."""
        opts = self.options
        bound = int(opts.max_buffer_s * SAMPLE_RATE)
        if state.closed:
            return self._closed_window(state)
        open_segment = state.vad.open_segment
        if open_segment is None:
            return None
        if state.received - state.audio_start > bound:
            # Committing at pauses, the window reaches the audio just received (a chunk past the bound at most):
            # its words are final a chunk sooner.
            end = state.audio_start + bound if opts.commit_on_agreement else min(state.received, state.audio_start + bound + SAMPLE_RATE)
            return Window(WindowKind.FORCE, state.audio_start, end)
        if not opts.commit_on_agreement and (pause := self._pause_due(state, open_segment)) is not None:
            return Window(WindowKind.PAUSE, state.audio_start, pause)
        if not partials:
            return None
        fresh = state.received - max(state.decoded_until, open_segment.start)
        if fresh >= opts.min_step_s * SAMPLE_RATE:
            return Window(WindowKind.PARTIAL, state.audio_start, state.received)
        if eager and opts.eager_step_s and fresh >= opts.eager_step_s * SAMPLE_RATE:
            return Window(WindowKind.EAGER, state.audio_start, state.received)
        return None

    def _drop_heard(self, state: StreamState) -> list[Message]:
        """Close, without a decode, utterances whose voiced audio all lies before the last committed word's end: a
        window over them would hold nothing but its prefix and silence, which Whisper fills from its prompt."""
        heard = round(state.last_final_end * SAMPLE_RATE)
        if not state.closed or state.closed[0].end > heard:  # type: ignore[operator]
            return []
        while state.closed and state.closed[0].end <= heard:  # type: ignore[operator]
            state.closed.pop(0)
        self._drop_silence(state)
        if not state.partial_text or state.hypothesis:
            return []
        state.partial_text = ""
        return [Partial(text="", start=state.last_final_end, end=state.last_final_end, language=state.language)]

    def _closed_window(self, state: StreamState) -> Window:
        """The window of the oldest closed utterance: all of it (a final), or its first ``max_buffer_s`` (forced)."""
        bound = int(self.options.max_buffer_s * SAMPLE_RATE)
        end = min(state.closed[0].end + self.options.vad.pad_samples, state.received)  # type: ignore[operator]
        if end - state.audio_start > bound:
            return Window(WindowKind.FORCE, state.audio_start, state.audio_start + bound)
        return Window(WindowKind.FINAL, state.audio_start, end)

    def _pause_due(self, state: StreamState, utterance: SpeechSegment) -> int | None:
        """Where a ``pause`` window should end, if one is due: at the VAD's latest pause inside this utterance when
        the speaker is still silent and no decode heard it yet (its final may need no other decode), or when the
        uncommitted speech before it is ``pause_commit_s`` long (it is committed there)."""
        pause = state.vad.pause_at
        if pause <= max(state.audio_start, state.pause_decoded, utterance.start):
            return None
        silent_since = pause > state.vad.last_voiced
        if silent_since and state.heard_until < pause:
            return pause
        return pause if self._uncommitted_s(state, pause) >= self.options.pause_commit_s else None

    def _uncommitted_s(self, state: StreamState, end: int) -> float:
        """Seconds of the window up to ``end`` that are not committed yet."""
        return end / SAMPLE_RATE - max(state.last_final_end, state.audio_start / SAMPLE_RATE)

    def settle(self, state: StreamState) -> list[Message]:
        """Finals for closed utterances that the last decode already heard whole (a ``pause`` window): no decode.

        Call it after ``push``/``finalize`` and before asking ``next_window``. An utterance is settled only when
        that decode's window reached the end the final's window would have, heard no speech after it, and did
        not stop early; otherwise the final is decoded as usual.
        """
        if self.options.commit_on_agreement or not state.closed or state.heard_until <= state.audio_start:
            return []
        window = self._closed_window(state)
        following = state.closed[1] if len(state.closed) > 1 else state.vad.open_segment
        if (
            window.kind is not WindowKind.FINAL
            or state.heard_until < window.end
            or (following is not None and following.start < state.heard_until)
            or self._stopped_early(state, state.hypothesis or state.committed)
        ):
            return []
        messages: list[Message] = []
        self._close_utterance(state, window, state.hypothesis, messages)
        return messages

    def request(self, state: StreamState, window: Window) -> DecodeRequest:
        return DecodeRequest(
            state.window_audio(window),
            prompt=state.prompt,
            vocabulary=state.vocabulary,
            prefix=join_words(state.committed),
            language=state.language,
            task=state.task,
        )

    # -- results in -----------------------------------------------------------
    def apply(self, state: StreamState, window: Window, result: DecodeResult) -> list[Message]:
        """Fold one decode of ``window`` into the state; returns the messages to send."""
        if state.language is None and result.language and result.words and not result.dropped:
            # Detected from speech (a window the VAD heard voiced, and Whisper heard words in), then pinned.
            if result.language_probability >= LANGUAGE_PIN_PROBABILITY or window.kind not in (WindowKind.PARTIAL, WindowKind.EAGER):
                state.language = result.language
        # The committed words of the window were forced as the prefix: these are all new...
        words = [w.shifted(window.start / SAMPLE_RATE) for w in result.words]
        # ...except that Whisper sometimes says the prefix's last word again, at the same time.
        if words and state.committed and comparable(words[0].word) == comparable(state.committed[-1].word):
            if words[0].start < state.committed[-1].end + REPEAT_TOLERANCE_S:
                words = words[1:]
        if window.kind not in (WindowKind.PARTIAL, WindowKind.EAGER):
            # Words that start after the voiced audio (and its pad) were heard in silence: the decoder continued
            # its prompt there. A window's end clamps them to zero length. They are never committed.
            voiced = (state.closed[0].end if state.closed else state.vad.last_voiced) + self.options.vad.pad_samples  # type: ignore[operator]
            words = [w for w in words if round(w.start * SAMPLE_RATE) < voiced]
        if not words and window.kind in (WindowKind.FINAL, WindowKind.FORCE) and self._prefix_stopped(state, window):
            # Nothing after the forced prefix although speech follows it: the prefix, not the audio, ended
            # the decode (a committed "2" continued as "2." and then end-of-text). Drop the context and
            # let the same audio be decoded again without it, instead of trimming it away unheard.
            self._trim(state, int(state.committed[-1].end * SAMPLE_RATE))
            return []
        messages: list[Message] = []
        if window.kind is WindowKind.FINAL:
            self._close_utterance(state, window, words, messages)
            return messages
        agreed = _common_prefix(state.hypothesis, words) if self.options.commit_on_agreement else 0
        older_end = min(window.end, state.decoded_until)
        if (older_end - window.start) / SAMPLE_RATE < self.options.agree_window_s:
            agreed = 0  # the older window is too short to agree from (agree_window_s)
        # Both decodes must have heard the whole word: it ends well before the older window's end.
        edge = older_end / SAMPLE_RATE - self.options.commit_margin_s
        while agreed and (words[agreed - 1].end > edge or _glued(words, agreed)):
            agreed -= 1
        paused = window.kind is WindowKind.PAUSE and self._pause_ends_long_utterance(state, window, words)
        if paused:
            agreed = len(words)
        if window.kind is WindowKind.FORCE:
            limit = window.end / SAMPLE_RATE - self.options.force_margin_s
            while agreed < len(words) and words[agreed].end <= limit:
                agreed += 1
            while agreed and _glued(words, agreed):
                agreed -= 1
        self._commit(state, words[:agreed], messages)
        state.hypothesis = words[agreed:]
        state.heard_until = window.end
        state.decoded_until = max(state.decoded_until, window.end)
        if window.kind is WindowKind.PAUSE:
            state.pause_decoded = window.end
        if paused:  # as for a forced commit: never trim past the last committed word
            self._trim(state, self._context_cut(state, round(state.last_final_end * SAMPLE_RATE)))
        if window.kind is WindowKind.FORCE:
            # Trim at the last committed word, never past it: words the decoder left tentative, or audio it stopped
            # before, are decoded again next time.
            heard = round(state.last_final_end * SAMPLE_RATE)
            cut = self._context_cut(state, heard) if agreed else window.end - int(self.options.force_margin_s * SAMPLE_RATE)
            self._trim(state, max(cut, window.start + SAMPLE_RATE // 2))
        return messages + self._show(state, state.hypothesis)

    def _show(self, state: StreamState, words: list[Word]) -> list[Message]:
        """The partial for ``words``, if it differs from the one shown last (an empty one clears it)."""
        text = join_words(words)
        if text == state.partial_text:
            return []
        state.partial_text = text
        if words:
            return [Partial(text=text, start=words[0].start, end=words[-1].end, language=state.language)]
        return [Partial(text="", start=state.last_final_end, end=state.last_final_end, language=state.language)]

    def _close_utterance(self, state: StreamState, window: Window, words: list[Word], messages: list[Message]) -> None:
        """Commit every word of the utterance ``window`` (a final) and trim past it."""
        stopped_early = bool(words) and self._stopped_early(state, words)
        self._commit(state, words, messages)
        if stopped_early:
            # The decoder ended (end-of-text) well before the utterance did: the utterance stays open and the
            # rest of it is decoded again, after these words, rather than trimmed away unheard.
            end = round(state.last_final_end * SAMPLE_RATE)
        else:
            state.closed.pop(0)
            following = state.closed[0] if state.closed else state.vad.open_segment
            end = window.end if following is None else min(window.end, following.start - self.options.vad.pad_samples)
        self._trim(state, self._context_cut(state, end))
        state.hypothesis = []
        state.partial_text = ""
        self._drop_silence(state)

    def _stopped_early(self, state: StreamState, words: list[Word], voiced_end: int | None = None) -> bool:
        """Whether the utterance (being finalized, or up to ``voiced_end``) has ``UNHEARD_RETRY_S`` of voiced audio
        after the last of ``words`` (no words: all of it is unheard)."""
        voiced = (state.closed[0].end if voiced_end is None else voiced_end) / SAMPLE_RATE  # type: ignore[operator]
        return not words or voiced - words[-1].end >= UNHEARD_RETRY_S

    def _pause_ends_long_utterance(self, state: StreamState, window: Window, words: list[Word]) -> bool:
        """Whether a pause decode commits all it heard: the uncommitted speech before the pause is ``pause_commit_s``
        long and the decode heard it to the pause (did not stop early)."""
        voiced_end = window.end - self.options.vad.pad_samples
        return self._uncommitted_s(state, window.end) >= self.options.pause_commit_s and not self._stopped_early(
            state, words, voiced_end=voiced_end
        )

    def _prefix_stopped(self, state: StreamState, window: Window) -> bool:
        """Whether the window holds at least ``PREFIX_RETRY_S`` of audio after its committed (prefix) words."""
        return bool(state.committed) and window.end / SAMPLE_RATE - state.committed[-1].end >= PREFIX_RETRY_S

    def _commit(self, state: StreamState, words: list[Word], messages: list[Message]) -> None:
        if not words:
            return
        final_words: list[Word] = []
        floor = state.last_final_end
        for w in words:
            start = max(w.start, floor)
            end = max(w.end, start)
            final_words.append(Word(w.word, round(start, 3), round(end, 3), w.probability))
            floor = end
        state.committed.extend(final_words)
        state.last_final_end = final_words[-1].end
        messages.append(Final.from_words(final_words, state.language))

    def _context_cut(self, state: StreamState, end: int) -> int:
        """Where to trim so that only the committed words of the last ``context_s`` before ``end`` stay."""
        keep_from = end / SAMPLE_RATE - self.options.context_s
        previous_end = state.audio_start / SAMPLE_RATE
        for w in state.committed:
            # At a word boundary before it, never inside a word Whisper wrote in two tokens (" 1" + ",000,").
            if w.start >= keep_from and self.options.context_s > 0 and w.word.startswith(" "):
                return int(previous_end * SAMPLE_RATE)
            previous_end = w.end
        return end

    def _trim(self, state: StreamState, sample: int) -> None:
        """Trim the window; committed words before the cut become the prompt."""
        state.trim_to(sample)
        cut = state.audio_start / SAMPLE_RATE
        # A word of zero length at the cut goes too: kept, it would be a prefix with no audio left under it.
        gone = [w for w in state.committed if w.start < cut or w.end <= cut]
        state.committed = state.committed[len(gone) :]
        if gone and self.options.prompt_chars:
            state.prompt = (state.prompt + "".join(w.word for w in gone))[-self.options.prompt_chars :]

    # -- one call, without I/O --------------------------------------------------
    def steps(self, state: StreamState, pcm: np.ndarray, finalize: bool = False) -> CallSteps:
        """One call of a stream as a generator that owns the loop, in the style of a sans-I/O parser.

        It appends ``pcm`` and yields a ``ScoreJob`` for the VAD, expecting its frames' probabilities back
        (finalizing after it if asked), then yields a ``DecodeJob`` for every window that is due and expects that
        job's ``DecodeResult`` back, or ``None`` when an optional (partial or eager) job was shed by a busy decoder.
        It returns the call's messages. Whether partials are decoded at all is decided here, once:
        not when the call brings more than ``skip_partials_behind_s`` of audio (the stream is behind), nor after a
        partial was shed; no eager decode after any shed job.
        """
        probs = yield self._append(state, pcm)
        assert isinstance(probs, np.ndarray), "a ScoreJob is answered with the VAD's probabilities"
        self._scored(state, probs)
        if finalize:
            self.finalize(state)
        partials = state.interim and pcm.size <= self.options.skip_partials_behind_s * SAMPLE_RATE
        eager = partials
        messages = self._drop_heard(state) + self.settle(state)
        while (window := self.next_window(state, partials=partials, eager=eager)) is not None:
            job = DecodeJob(window, self.request(state, window))
            result = yield job
            assert not isinstance(result, np.ndarray)
            if result is None:
                if not job.optional:
                    raise ValueError(f"a {window.kind.value} decode cannot be shed")
                # The decoder has no room: this call's newer audio waits for the next call (coalescing). Shed an
                # agreement decode and the decoder is behind: finals only for the rest of this call.
                eager, partials = False, partials and job.eager
                continue
            messages.extend(self.apply(state, window, result))
            messages.extend(self._drop_heard(state))
        return messages

    def run(
        self, state: StreamState, pcm: np.ndarray, decode: Callable[[DecodeRequest], DecodeResult], finalize: bool = False
    ) -> list[Message]:
        """One call with ``decode`` run in-line for every job (in-process use: tests, simulate, benchmarks)."""
        return drive(self.steps(state, pcm, finalize), lambda job: decode(job.request))

    def process(
        self, state: StreamState, pcm: np.ndarray, decode: Callable[[DecodeRequest], DecodeResult]
    ) -> list[Message]:
        """push + decode every window that is due, with ``decode`` run in-line."""
        return self.run(state, pcm, decode)

    def close(self, state: StreamState, decode: Callable[[DecodeRequest], DecodeResult]) -> list[Message]:
        """finalize + decode: commit everything heard."""
        return self.run(state, np.zeros(0, np.int16), decode, finalize=True)


def advance(call: CallSteps, answer: np.ndarray | DecodeResult | None) -> Job | list[Message]:
    """Send ``answer`` into the call (None starts it, or reports a shed job): its next job, or its messages once
    it is done. Every driver steps a call with this, in-line (``drive``) or across awaits (the BufferManager)."""
    try:
        return call.send(answer)
    except StopIteration as done:
        return done.value


def drive(call: CallSteps, decode: Callable[[DecodeJob], DecodeResult | None]) -> list[Message]:
    """Run one call in-line: the VAD scores its audio, ``decode`` answers each decode job (None sheds an optional
    one)."""
    step = advance(call, None)
    while not isinstance(step, list):
        step = advance(call, step.run() if isinstance(step, ScoreJob) else decode(step))
    return step


def _common_prefix(previous: list[Word], current: list[Word]) -> int:
    n = 0
    for a, b in zip(previous, current):
        if comparable(a.word) != comparable(b.word):
            break
        n += 1
    return n


def _glued(words: list[Word], n: int) -> bool:
    """Whether ``words[n]`` continues ``words[n - 1]`` (no leading space: "i" + ".e."), so they commit together."""
    return n < len(words) and not words[n].word.startswith(" ")
