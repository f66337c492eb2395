"""One WebSocket stream's I/O: frames in and out of its ``StreamProtocol``, calls to the BufferManager.

The rules (limits, turn ends, the end of the stream) are the core's (``serve.core.protocol``); this layer only
moves frames between the socket and that object, in two loops of one ``asyncio.TaskGroup`` that never wait on
each other: one receives, one makes the calls.
"""

import asyncio
import logging
import time

from fastapi import WebSocket
from ray.serve.handle import DeploymentHandle

from serve.core.errors import CLOSE_INTERNAL, CLOSE_NORMAL, ProtocolError
from serve.core.messages import End, Error, Final, Partial
from serve.core.protocol import Call, Outgoing, StreamProtocol
from serve.core.session import Session
from serve.core.settings import LimitOptions
from serve.deploy.buffer_manager import SharedCalls, StreamCalls
from serve.deploy.metrics import IngressMetrics
from serve.deploy.retry import dead_replica

log = logging.getLogger("ray.serve")


class StreamClosed(Exception):
    """The stream is over (closed by us, or the client left)."""


async def send_error(ws: WebSocket, exc: ProtocolError) -> None:
    await ws.send_text(Error(code=exc.code, message=exc.message).to_json())


class SocketStream:
    """One connection: a receive loop feeding the protocol, a call loop draining it."""

    def __init__(
        self, ws: WebSocket, session: Session, buffer_manager: DeploymentHandle, limits: LimitOptions,
        metrics: IngressMetrics, shared: SharedCalls | None = None,
    ) -> None:
        self.ws, self.session, self.limits = ws, session, limits
        self.metrics = metrics
        self.calls = StreamCalls(
            buffer_manager, session.id, retry_s=limits.retry_s, payload=metrics.payload, shared=shared
        )
        self.protocol = StreamProtocol(session, limits, time.monotonic())
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()

    async def run(self) -> None:
        """Until the stream ends: flushed and closed, closed for an error, or the client gone (StreamClosed).
        Leaving cancels both loops, and with them a call in flight (a client gone mid-call)."""
        try:
            async with asyncio.TaskGroup() as group:
                receiving = group.create_task(self.receive_loop())
                group.create_task(self.call_loop(receiving))
        except ExceptionGroup as failed:  # the first loop to fail ends the stream, as it would alone
            raise failed.exceptions[0] from None

    async def send(self, text: str) -> None:
        async with self.send_lock:
            await self.ws.send_text(text)

    async def fail(self, exc: ProtocolError) -> None:
        """Report ``exc``; a fatal one also closes the socket and ends the stream."""
        self.metrics.error(exc.code)
        async with self.send_lock:
            await send_error(self.ws, exc)
            if exc.fatal:
                await self.ws.close(exc.close_code)  # type: ignore[arg-type]
        if exc.fatal:
            raise StreamClosed(exc.code)

    async def next_message(self) -> dict | None:
        """The client's next message, or None when the protocol's deadline (idle, open too long) passed first."""
        deadline = self.protocol.deadline()
        if deadline is None:
            return await self.ws.receive()
        try:
            return await asyncio.wait_for(self.ws.receive(), timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            return None

    async def receive_loop(self) -> None:
        while True:
            message = await self.next_message()
            if message is None:
                self.protocol.expire(time.monotonic())
            elif message["type"] == "websocket.disconnect":
                raise StreamClosed("client disconnected")
            else:
                try:
                    seconds = await self.receive(message.get("bytes"), message.get("text"))
                except ProtocolError as exc:
                    await self.fail(exc)
                    continue
                if seconds:
                    self.metrics.audio_seconds.inc(seconds)
            self.wake.set()

    async def call_loop(self, receiving: asyncio.Task) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while (call := self.protocol.next_call()) is not None:
                self.before_call()
                await self.process(call)
            if self.protocol.done:
                receiving.cancel()  # nothing the client sends now matters
                ending = self.protocol.finish()
                if isinstance(ending, ProtocolError):
                    await self.fail(ending)
                assert isinstance(ending, End)
                await self.ended(ending)
                return

    # -- what a dialect's socket (serve/deploy/compat.py) does its own way ---------------------------------------
    async def receive(self, data: bytes | None, text: str | None) -> float:
        """One client message (a binary frame's ``data`` or a text frame's ``text``) into the protocol; returns the
        seconds of audio it added, raises ProtocolError."""
        return self.protocol.receive(data, text, time.monotonic())

    def before_call(self) -> None:
        """Settings the client changed mid-stream go into the stream state that travels with the next call."""

    async def ended(self, end: End) -> None:
        """The stream was flushed: protocol v1's ``end``, then close 1000."""
        await self.send(end.to_json())
        async with self.send_lock:
            await self.ws.close(CLOSE_NORMAL)

    async def process(self, call: Call) -> None:
        session = self.session
        try:
            processed = await self.calls.process(session.state, call.pcm, call.finalize)
        except Exception as exc:  # never drop a stream silently: tell the client why it ends
            if dead_replica(exc):
                reason = "the recognizer is unavailable; try again"
            else:
                log.exception("stream %s: processing failed", session.id)
                reason = "the recognizer failed on this stream"
            await self.fail(ProtocolError("internal", reason, CLOSE_INTERNAL))
            return
        session.state = processed.state
        await self.deliver(call, processed.messages)

    async def deliver(self, call: Call, messages: list[Partial | Final]) -> None:
        """Count a call's results and send them (``results``)."""
        outgoing = self.protocol.deliver(messages, time.monotonic())
        for out in outgoing:
            if isinstance(out.message, Final):
                self.metrics.finals.inc()
                self.metrics.final_lag.observe(out.lag)
            else:
                self.metrics.partials.inc()
        for text in self.results(call, messages, outgoing):
            await self.send(text)

    def results(self, call: Call, messages: list[Partial | Final], outgoing: list[Outgoing]) -> list[str]:
        """What to send for a call's ``messages``: protocol v1's, each one the client asked for (``outgoing``)."""
        return [out.message.to_json() for out in outgoing]

