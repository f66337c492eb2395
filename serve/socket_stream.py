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


class StreamClosed(Exception):
    """The stream is over (closed by us, or the client left)."""


async def send_error(ws: WebSocket, exc: ProtocolError) -> None:
    await ws.send_text(Error(code=exc.code, message=exc.message).to_json())


class SocketStream:
    """One connection's two loops: reading audio and processing it never wait on each other.

    Audio read from the socket waits in a bounded queue (``limits.max_pending_seconds``);
    everything that arrived while a call was in flight goes into the next call together.
    """

    def __init__(
        self, ws: WebSocket, session: Session, buffer_manager: DeploymentHandle, limits: LimitOptions,
        metrics: IngressMetrics,
    ) -> None:
        self.ws, self.session, self.buffer_manager, self.limits = ws, session, buffer_manager, limits
        self.metrics = metrics
        self.clock = ArrivalClock()
        self.pending: list[np.ndarray] = []
        self.pending_samples = 0
        self.finalize = False
        self.stopped = False
        self.ending: ProtocolError | None = None
        """Why the server ends the stream after flushing it (idle, too long); None for a client's stop."""
        self.last_audio = time.monotonic()
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()

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
        if self.stopped:
            return await self.ws.receive()
        idle_left = self.last_audio + self.limits.idle_timeout_s - time.monotonic()
        try:
            return await asyncio.wait_for(self.ws.receive(), timeout=max(idle_left, 0.0))
        except TimeoutError:
            return {"type": "idle"}

    async def receive_loop(self) -> None:
        limits = self.limits
        max_pending = int(limits.max_pending_seconds * SAMPLE_RATE)
        while True:
            message = await self.next_message()
            if message["type"] == "idle":
                self.end_with(ProtocolError("idle_timeout", f"no audio for {limits.idle_timeout_s:g} s", CLOSE_POLICY))
                continue
            if message["type"] == "websocket.disconnect":
                raise StreamClosed("client disconnected")
            data, text = message.get("bytes"), message.get("text")
            size = len(data) if data is not None else len(text or "")
            try:
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
                    pcm = self.session.decoder.decode(data)
                    if self.pending_samples and self.pending_samples + pcm.size > max_pending:
                        raise ProtocolError(
                            "overloaded",
                            f"audio is arriving faster than it can be transcribed (over {limits.max_pending_seconds:g} s "
                            "waiting); send at real time",
                            CLOSE_TRY_LATER,
                        )
                    self.pending.append(pcm)
                    self.pending_samples += pcm.size
                    if pcm.size:
                        self.clock.received(pcm.size)
                        self.metrics.audio_seconds.inc(pcm.size / SAMPLE_RATE)
                    self.last_audio = time.monotonic()
                    if self.session.decoder.seconds_in >= limits.max_stream_s:
                        self.end_with(
                            ProtocolError("max_duration", f"a stream may send {limits.max_stream_s:g} s of audio", CLOSE_POLICY)
                        )
                    self.wake.set()
                elif text is not None:
                    control = parse_client_text(text)
                    if self.ending is not None:
                        continue  # a stop that crossed the server's own ending (max_duration, idle_timeout)
                    if self.stopped:
                        raise ProtocolError("bad_message", "the stream is stopping")
                    if isinstance(control, Finalize):
                        self.finalize = True
                    else:
                        self.stopped = True
                    self.wake.set()
            except ProtocolError as exc:
                await self.fail(exc)

    async def process_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            pcm = np.concatenate(self.pending) if self.pending else np.zeros(0, np.int16)
            self.pending, self.pending_samples = [], 0
            stopping = self.stopped
            if stopping:
                pcm = np.concatenate([pcm, self.session.decoder.flush()])
            finalize, self.finalize = self.finalize or stopping, False
            if pcm.size or finalize:
                await self.process(pcm, finalize)
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
