"""Protocol v1's rules for one open stream, without I/O: what to do with each client message and when.

In the style of websockets' ``Protocol``: the socket layer feeds it what the client sent (``receive``) and the
passing of time (``expire``), asks it for the next call to make (``next_call``), hands it each call's result
(``deliver``) and, once it is ``done``, sends what ``finish`` gives. It never awaits, never touches a socket and
takes the clock as an argument, so every rule is tested in-process, exactly (tests/core/test_protocol.py).

The rules (README "Protocol v1", "Security and limits"):
- binary frames are PCM; text frames are JSON control messages (``finalize``, ``stop``);
- a message over ``max_frame_bytes`` (text counted in UTF-8 bytes) is ``too_large``, more than
  ``max_messages_per_s`` messages a second (bursts of ``MESSAGE_BURST_S``' worth) or audio faster than
  ``max_speed`` after ``speed_burst_s`` is ``rate_limited``, more than ``max_pending_seconds`` waiting is
  ``overloaded``: all fatal;
- an empty frame is no audio: it neither resets the idle timer nor counts as audio;
- audio that arrives during a call waits and goes into the next call, merged, except across a ``finalize``: the
  audio before it is finalized in one call, the audio after it is the next turn's;
- ``stop`` flushes and ends the stream with ``end``; the server ends it the same way, with an error instead of
  ``end``, after ``idle_timeout_s`` without audio or ``max_stream_s`` of audio or of time open; a ``stop`` (or
  audio) that crosses the server's own ending is ignored; audio or a control after ``stop`` is ``bad_message``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from serve.core.audio import SAMPLE_RATE
from serve.core.errors import CLOSE_POLICY, CLOSE_TOO_LARGE, CLOSE_TRY_LATER, ProtocolError
from serve.core.messages import End, Final, Finalize, Partial, parse_client_text
from serve.core.session import Session
from serve.core.settings import LimitOptions

MESSAGE_BURST_S = 5.0
"""A stream may send ``limits.max_messages_per_s`` messages per second, in bursts of up to this many seconds' worth."""


class TokenBucket:
    """At most ``capacity`` plus ``rate`` per second since it was made: what a client may send.

    A take is allowed while the bucket is not in debt, so one item larger than the capacity (a long audio
    frame) still passes when the bucket is full; the items after it wait for the debt to be repaid.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.at = capacity, now

    def take(self, amount: float, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens <= 0.0:
            return False
        self.tokens -= amount
        return True


class ArrivalClock:
    """When each stretch of a stream's audio arrived, to measure a final's lag from its ``end``.

    Bounded, however long the stream: frames that arrive within ``RESOLUTION_S`` of the stretch before share its
    entry (a lag is then up to that much longer than exact), and after every call it forgets what lies before the
    stream's window (``forget``): no later final can end there.
    """

    RESOLUTION_S = 0.1

    def __init__(self) -> None:
        self.samples = 0
        self._arrivals: deque[tuple[int, float]] = deque()
        """(samples received up to the end of a stretch, when its first frame arrived), oldest first."""

    def __len__(self) -> int:
        return len(self._arrivals)

    def received(self, samples: int, now: float) -> None:
        self.samples += samples
        if self._arrivals and now - self._arrivals[-1][1] < self.RESOLUTION_S:
            self._arrivals[-1] = (self.samples, self._arrivals[-1][1])
        else:
            self._arrivals.append((self.samples, now))

    def forget(self, before: int) -> None:
        """Drop the stretches that end before sample ``before``: no final can end there any more."""
        while len(self._arrivals) > 1 and self._arrivals[0][0] <= before:
            self._arrivals.popleft()

    def lag(self, end_s: float, now: float) -> float:
        """Seconds since the audio holding stream time ``end_s`` arrived (older audio is forgotten)."""
        end = round(end_s * SAMPLE_RATE)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < end:
            self._arrivals.popleft()
        arrived = self._arrivals[0][1] if self._arrivals else now
        return max(now - arrived, 0.0)


@dataclass(frozen=True)
class Call:
    """One call to make: this audio (16 kHz int16), then finalize if asked."""

    pcm: np.ndarray
    finalize: bool


@dataclass(frozen=True)
class Outgoing:
    """A message of a call's result to send, with the lag of a final (None for a partial)."""

    message: Partial | Final
    lag: float | None


class StreamProtocol:
    """One stream's protocol state: pending audio, turn ends, the end of the stream, and the limits on all three."""

    def __init__(self, session: Session, limits: LimitOptions, now: float) -> None:
        self.session, self.limits = session, limits
        self.clock = ArrivalClock()
        self.pending: list[np.ndarray] = []
        self.queued = 0
        """Samples (16 kHz) put in ``pending`` since the stream began."""
        self.taken = 0
        """Samples (16 kHz) taken from ``pending`` into calls since the stream began."""
        self.turn_ends: list[int] = []
        """Where each ``finalize`` not yet processed arrived, in ``queued`` samples, oldest first."""
        self.stopped = False
        """No more audio: the flush is due (a client's stop, or the server's own ending)."""
        self.flushed = False
        """The last call (with the stop's flush) was handed out."""
        self.ending: ProtocolError | None = None
        """Why the server ends the stream after flushing it (idle, too long); None for a client's stop."""
        self.opened = self.last_audio = now
        self.messages = TokenBucket(limits.max_messages_per_s, limits.max_messages_per_s * MESSAGE_BURST_S, now)
        self.audio_budget = TokenBucket(limits.max_speed, limits.speed_burst_s, now)

    @property
    def pending_samples(self) -> int:
        return self.queued - self.taken

    # -- what the client sends, and time --------------------------------------------------------
    def deadline(self) -> float | None:
        """When ``expire`` must be called if no message comes first; None once the stream is stopping."""
        if self.stopped:
            return None
        return min(self.last_audio + self.limits.idle_timeout_s, self.opened + self.limits.max_stream_s)

    def expire(self, now: float) -> None:
        """No message came by ``deadline()``: the server ends the stream (idle, or open too long)."""
        if self.stopped:
            return
        if now >= self.opened + self.limits.max_stream_s:
            self._end_with(self._too_long())
        elif now >= self.last_audio + self.limits.idle_timeout_s:
            self._end_with(ProtocolError("idle_timeout", f"no audio for {self.limits.idle_timeout_s:g} s", CLOSE_POLICY))

    def receive(self, data: bytes | None, text: str | None, now: float) -> float:
        """One client message (``data`` for a binary frame, ``text`` for a text frame).

        Returns the seconds of audio it added. Raises ProtocolError: fatal ones end the stream, the others are
        reported and the stream goes on.
        """
        # Text arrives decoded: count its UTF-8 bytes, what the client sent, not its characters.
        size = len(data) if data is not None else len((text or "").encode("utf-8", "surrogatepass"))
        self.admit(size, now)
        if data is not None:
            return self._audio(data, now)
        self.control(finalize=isinstance(parse_client_text(text or ""), Finalize))
        return 0.0

    def admit(self, size: int, now: float) -> None:
        """The rules every message meets before it is read: the message rate, then its size as sent (bytes)."""
        limits = self.limits
        if not self.messages.take(1, now):
            raise ProtocolError(
                "rate_limited",
                f"more than {limits.max_messages_per_s:g} messages per second; send fewer, longer audio frames",
                CLOSE_POLICY,
            )
        if size > limits.max_frame_bytes:
            raise ProtocolError(
                "too_large", f"message of {size} bytes exceeds the {limits.max_frame_bytes}-byte limit", CLOSE_TOO_LARGE
            )

    def control(self, finalize: bool) -> None:
        """A turn end (``finalize``) or the end of the stream (``stop``), as the client asked."""
        if self.ending is not None:
            return  # a stop that crossed the server's own ending (max_duration, idle_timeout)
        if self.stopped:
            raise ProtocolError("bad_message", "the stream is stopping")
        if finalize:
            if not self.turn_ends or self.turn_ends[-1] != self.queued:
                self.turn_ends.append(self.queued)  # the turn ends here: later audio is the next turn's
        else:
            self.stopped = True

    def _audio(self, data: bytes, now: float) -> float:
        limits = self.limits
        if self.ending is not None:
            return 0.0  # sent before the client could know the server is ending the stream
        if self.stopped:
            raise ProtocolError("bad_message", "audio after stop is ignored")
        if not data:
            return 0.0  # an empty frame is no audio: the stream stays idle
        pcm = self.session.decoder.decode(data)
        if not self.audio_budget.take(pcm.size / SAMPLE_RATE, now):
            raise ProtocolError(
                "rate_limited",
                f"audio is arriving faster than {limits.max_speed:g}x real time (after a {limits.speed_burst_s:g} s "
                "burst); send at real time",
                CLOSE_POLICY,
            )
        max_pending = int(limits.max_pending_seconds * SAMPLE_RATE)
        if self.pending_samples and self.pending_samples + pcm.size > max_pending:
            raise ProtocolError(
                "overloaded",
                f"audio is arriving faster than it can be transcribed (over {limits.max_pending_seconds:g} s "
                "waiting); send at real time",
                CLOSE_TRY_LATER,
            )
        self.pending.append(pcm)
        self.queued += pcm.size
        if pcm.size:
            self.clock.received(pcm.size, now)
        self.last_audio = now
        if self.session.decoder.seconds_in >= limits.max_stream_s:
            self._end_with(self._too_long())
        return pcm.size / SAMPLE_RATE

    def _too_long(self) -> ProtocolError:
        return ProtocolError(
            "max_duration", f"a stream may send {self.limits.max_stream_s:g} s of audio and stay open as long", CLOSE_POLICY
        )

    def _end_with(self, reason: ProtocolError) -> None:
        """Flush what was heard, then report ``reason`` and close (instead of ``end``)."""
        self.ending, self.stopped = reason, True

    # -- calls ----------------------------------------------------------------------------------
    def next_call(self) -> Call | None:
        """The next call to make, or None when there is nothing to send now.

        Each ``finalize`` goes with the audio that came before it; then everything pending; once stopped, the last
        call brings the decoder's flush and finalizes. After that last call, ``done`` is true.
        """
        if self.flushed:
            return None
        if self.turn_ends:
            return Call(self._take(self.turn_ends.pop(0)), finalize=True)
        if self.stopped:
            self.flushed = True
            return Call(np.concatenate([self._take(self.queued), self.session.decoder.flush()]), finalize=True)
        if self.pending_samples:
            return Call(self._take(self.queued), finalize=False)
        return None

    @property
    def done(self) -> bool:
        """The last call was handed out: once its result is delivered, ``finish`` ends the stream."""
        return self.flushed

    def _take(self, until: int) -> np.ndarray:
        """The pending audio up to sample ``until`` (in ``queued`` samples); the rest stays pending."""
        pcm = np.concatenate(self.pending) if self.pending else np.zeros(0, np.int16)
        count = until - self.taken
        self.pending = [pcm[count:]] if count < pcm.size else []
        self.taken = until
        return pcm[:count]

    def deliver(self, messages: list[Partial | Final], now: float) -> list[Outgoing]:
        """A call's messages: the ones to send (partials only where the client asked for them), finals with their lag."""
        out = [
            Outgoing(m, self.clock.lag(m.end, now) if isinstance(m, Final) else None)
            for m in messages
            if isinstance(m, Final) or self.session.params.interim_results
        ]
        # Nothing before the stream's window can end a later final: the clock forgets it.
        self.clock.forget(self.session.state.audio_start)
        return out

    def finish(self) -> ProtocolError | End:
        """After the last call: the server's reason for ending (an error and its close), or the ``end`` (close 1000)."""
        return self.ending or End(duration=round(self.session.decoder.seconds_in, 3))
