"""Light calls: a stream's pending audio stays where it already is instead of travelling with every call.

The Ingress keeps each stream's state, its pending audio included: it is the stream's record, so a BufferManager
replica that dies loses nothing. A call sends the state without that audio (``without_audio``), the new PCM, and
how much audio the state had (``received``). The BufferManager replica that answered the stream's last call holds
that audio (``HeldAudio``) and puts it back (``fill``). Any other replica (another of several, a new one after a
restart or a scale-up, or one that let the stream's audio go) cannot, and says so: the caller sends the same call
once more with the audio (serve.deploy.buffer_manager.StreamCalls).

The answer carries no audio either. The stream policy only ever appends the new PCM and trims from the front, so the
caller rebuilds the pending audio from its own copy, the PCM and the answer's ``audio_start`` (``rebuild``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from serve.core.engine import MelFrames
from serve.core.stream import StreamState

NO_AUDIO = np.zeros(0, np.int16)
NO_AUDIO.flags.writeable = False


def without_audio(state: StreamState) -> StreamState:
    """A shallow copy of ``state`` without its pending audio (``audio_start`` stays)."""
    return replace(state, audio=NO_AUDIO)


def rebuild(before: StreamState, pcm: np.ndarray, after: StreamState) -> StreamState:
    """``after`` (an answer's state, without audio) with its pending audio: the suffix of ``before``'s audio plus
    ``pcm`` that starts at ``after.audio_start``."""
    received = before.received + pcm.size
    if not before.audio_start <= after.audio_start <= received:
        raise ValueError(
            f"an answer trimmed to sample {after.audio_start}, outside the audio it was sent "
            f"[{before.audio_start}, {received})"
        )
    audio = np.concatenate([before.audio, pcm])[after.audio_start - before.audio_start :]
    return replace(after, audio=audio)


@dataclass
class HeldAudio:
    """One stream's pending audio as its last answered call left it, on the replica that answered; and the frames of
    the features of its live window's last decode, which the next decode of that window reuses."""

    start: int = 0
    audio: np.ndarray = field(default_factory=lambda: NO_AUDIO)
    mel: MelFrames = field(default_factory=MelFrames)

    def fill(self, state: StreamState, received: int) -> bool:
        """Put the audio back into ``state`` (sent without it, from ``received`` samples); False when this is not
        the audio the caller holds (another replica answered since, or none yet)."""
        if received == state.audio_start:
            state.audio = NO_AUDIO  # nothing pending: any replica has that
            return True
        if (self.start, self.start + self.audio.size) != (state.audio_start, received):
            return False
        state.audio = self.audio
        return True

    def keep(self, state: StreamState) -> None:
        """Hold the audio of an answered call's state (the policy never writes into an array it was given). A quiet
        stream's window frames are let go: its next window starts elsewhere."""
        self.start, self.audio = state.audio_start, state.audio
        if state.quiet:
            self.mel = MelFrames()
