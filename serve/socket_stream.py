"""One WebSocket stream: a receive loop and a process loop that never wait on each other."""

import asyncio
import logging
import time

import numpy as np
from fastapi import WebSocket
from ray.serve.handle import DeploymentHandle

from serve.core.audio import SAMPLE_RATE
from serve.core.errors import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_LARGE,
    CLOSE_TRY_LATER,
    ProtocolError,
)
from serve.core.messages import End, Error, Final, Finalize, parse_client_text
from serve.core.session import Session
from serve.core.settings import LimitOptions
from serve.faults import RETRYABLE, retry_dead_replica
from serve.metrics import ArrivalClock, IngressMetrics

log = logging.getLogger("ray.serve")

MESSAGE_BURST_S = 5.0
"""A stream may send ``limits.max_messages_per_s`` messages per second, in bursts of up to this many seconds' worth."""


class StreamClosed(Exception):
    """The stream is over (closed by us, or the client left)."""


async def send_error(ws: WebSocket, exc: ProtocolError) -> None:
    await ws.send_text(Error(code=exc.code, message=exc.message).to_json())


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


class SocketStream:
    """One connection's two loops: reading audio and processing it never wait on each other.

    Audio read from the socket waits in a bounded queue (``limits.max_pending_seconds``);
    everything that arrived while a call was in flight goes into the next call together,
    except across a ``finalize``: the audio before it is finalized in one call, the audio
    after it goes into the next.
    """

    def __init__(
        self, ws: WebSocket, session: Session, buffer_manager: DeploymentHandle, limits: LimitOptions,
        metrics: IngressMetrics,
    ) -> None:
        self.ws, self.session, self.buffer_manager, self.limits = ws, session, buffer_manager, limits
        self.metrics = metrics
        self.clock = ArrivalClock()
        self.pending: list[np.ndarray] = []
        self.queued = 0
        """Samples (16 kHz) put in ``pending`` since the stream began."""
        self.taken = 0
        """Samples (16 kHz) taken from ``pending`` into calls since the stream began."""
        self.turn_ends: list[int] = []
        """Where each ``finalize`` not yet processed arrived, in ``queued`` samples, oldest first."""
        self.stopped = False
        self.ending: ProtocolError | None = None
        """Why the server ends the stream after flushing it (idle, too long); None for a client's stop."""
        self.opened = self.last_audio = time.monotonic()
        self.messages = TokenBucket(limits.max_messages_per_s, limits.max_messages_per_s * MESSAGE_BURST_S, self.opened)
        self.audio_budget = TokenBucket(limits.max_speed, limits.speed_burst_s, self.opened)
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()

    @property
    def pending_samples(self) -> int:
        return self.queued - self.taken

    async def run(self) -> None:
        receiver = asyncio.create_task(self.receive_loop())
        processor = asyncio.create_task(self.process_loop())
        try:
            done, _ = await asyncio.wait({receiver, processor}, return_when=asyncio.FIRST_EXCEPTION)
            if processor in done and processor.exception() is None:
                return  # flushed, sent end and closed
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in (receiver, processor):
                task.cancel()  # a client gone mid-call cancels the in-flight Ray call too
            await asyncio.gather(receiver, processor, return_exceptions=True)

    async def send(self, text: str) -> None:
        async with self.send_lock:
            await self.ws.send_text(text)

    async def fail(self, exc: ProtocolError) -> None:
        self.metrics.error(exc.code)
        async with self.send_lock:
            await send_error(self.ws, exc)
            if exc.fatal:
                await self.ws.close(exc.close_code)  # type: ignore[arg-type]
        if exc.fatal:
            raise StreamClosed(exc.code)

    def end_with(self, reason: ProtocolError) -> None:
        """Flush what was heard, then report ``reason`` and close (instead of ``end``)."""
        self.ending, self.stopped = reason, True
        self.wake.set()

    async def next_message(self) -> dict:
        """The client's next message, or ``idle`` (no audio for ``idle_timeout_s``) or ``too_long`` (the stream
        has been open ``max_stream_s``), whichever comes first."""
        if self.stopped:
            return await self.ws.receive()
        idle_at = self.last_audio + self.limits.idle_timeout_s
        over_at = self.opened + self.limits.max_stream_s
        try:
            return await asyncio.wait_for(self.ws.receive(), timeout=max(min(idle_at, over_at) - time.monotonic(), 0.0))
        except TimeoutError:
            return {"type": "too_long" if over_at <= idle_at else "idle"}

    def too_long(self) -> ProtocolError:
        return ProtocolError(
            "max_duration", f"a stream may send {self.limits.max_stream_s:g} s of audio and stay open as long", CLOSE_POLICY
        )

    async def receive_loop(self) -> None:
        limits = self.limits
        max_pending = int(limits.max_pending_seconds * SAMPLE_RATE)
        while True:
            message = await self.next_message()
            if message["type"] == "idle":
                self.end_with(ProtocolError("idle_timeout", f"no audio for {limits.idle_timeout_s:g} s", CLOSE_POLICY))
                continue
            if message["type"] == "too_long":
                self.end_with(self.too_long())
                continue
            if message["type"] == "websocket.disconnect":
                raise StreamClosed("client disconnected")
            data, text = message.get("bytes"), message.get("text")
            # What the client sent: text arrives decoded, so count its UTF-8 bytes, not its characters.
            size = len(data) if data is not None else len((text or "").encode("utf-8", "surrogatepass"))
            try:
                if not self.messages.take(1, time.monotonic()):
                    raise ProtocolError(
                        "rate_limited",
                        f"more than {limits.max_messages_per_s:g} messages per second; send fewer, longer audio frames",
                        CLOSE_POLICY,
                    )
                if size > limits.max_frame_bytes:
                    raise ProtocolError(
                        "too_large", f"message of {size} bytes exceeds the {limits.max_frame_bytes}-byte limit",
                        CLOSE_TOO_LARGE,
                    )
                if data is not None:
                    if self.ending is not None:
                        continue  # sent before the client could know the server is ending the stream
                    if self.stopped:
                        raise ProtocolError("bad_message", "audio after stop is ignored")
                    if not data:
                        continue  # an empty frame is no audio: the stream stays idle
                    pcm = self.session.decoder.decode(data)
                    if not self.audio_budget.take(pcm.size / SAMPLE_RATE, time.monotonic()):
                        raise ProtocolError(
                            "rate_limited",
                            f"audio is arriving faster than {limits.max_speed:g}x real time (after a "
                            f"{limits.speed_burst_s:g} s burst); send at real time",
                            CLOSE_POLICY,
                        )
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
                        self.clock.received(pcm.size)
                        self.metrics.audio_seconds.inc(pcm.size / SAMPLE_RATE)
                    self.last_audio = time.monotonic()
                    if self.session.decoder.seconds_in >= limits.max_stream_s:
                        self.end_with(self.too_long())
                    self.wake.set()
                elif text is not None:
                    control = parse_client_text(text)
                    if self.ending is not None:
                        continue  # a stop that crossed the server's own ending (max_duration, idle_timeout)
                    if self.stopped:
                        raise ProtocolError("bad_message", "the stream is stopping")
                    if isinstance(control, Finalize):
                        if not self.turn_ends or self.turn_ends[-1] != self.queued:
                            self.turn_ends.append(self.queued)  # the turn ends here: later audio is the next turn's
                    else:
                        self.stopped = True
                    self.wake.set()
            except ProtocolError as exc:
                await self.fail(exc)

    def take(self, until: int) -> np.ndarray:
        """The pending audio up to sample ``until`` (in ``queued`` samples); the rest stays pending."""
        pcm = np.concatenate(self.pending) if self.pending else np.zeros(0, np.int16)
        count = until - self.taken
        self.pending = [pcm[count:]] if count < pcm.size else []
        self.taken = until
        return pcm[:count]

    async def process_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.turn_ends:  # each finalize with the audio that came before it, in order
                await self.process(self.take(self.turn_ends[0]), finalize=True)
                self.turn_ends.pop(0)
            stopping = self.stopped
            pcm = self.take(self.queued)
            if stopping:
                pcm = np.concatenate([pcm, self.session.decoder.flush()])
            if pcm.size or stopping:
                await self.process(pcm, finalize=stopping)
            if stopping:
                if self.ending is not None:
                    await self.fail(self.ending)
                await self.send(End(duration=round(self.session.decoder.seconds_in, 3)).to_json())
                async with self.send_lock:
                    await self.ws.close(CLOSE_NORMAL)
                return

    async def process(self, pcm: np.ndarray, finalize: bool) -> None:
        session = self.session
        try:
            processed = await retry_dead_replica(
                lambda: self.buffer_manager.process.remote(session.state, pcm, finalize),
                budget_s=self.limits.retry_s, what=f"stream {session.id}: BufferManager",
            )
        except RETRYABLE:
            await self.fail(ProtocolError("internal", "the recognizer is unavailable; try again", CLOSE_INTERNAL))
            return
        except Exception:  # a bug or a failed decode: tell the client, never drop it silently
            log.exception("stream %s: processing failed", session.id)
            await self.fail(ProtocolError("internal", "the recognizer failed on this stream", CLOSE_INTERNAL))
            return
        session.state = processed.state
        for message in processed.messages:
            if isinstance(message, Final):
                self.metrics.finals.inc()
                self.metrics.final_lag.observe(self.clock.lag(message.end))
            elif not session.params.interim_results:
                continue
            else:
                self.metrics.partials.inc()
            await self.send(message.to_json())
        # Nothing before the stream's window can end a later final: the clock forgets it.
        self.clock.forget(session.state.audio_start)
