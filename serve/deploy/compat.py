"""The Deepgram- and OpenAI-compatible endpoints' sockets: protocol v1's stream loops speaking another dialect.

Each stream is a ``SocketStream`` (the same receive and call loops, the same BufferManager calls, the same limits
through ``DialectProtocol``) whose client messages and results go through a dialect's translator
(``serve.core.dialects``). Opening one goes through the Ingress's own auth gate and stream caps.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fastapi import WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from serve.core.audio import Encoding, PcmDecoder
from serve.core.dialects import deepgram, realtime
from serve.core.dialects.protocol import Activity, Control, DialectProtocol
from serve.core.errors import CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY, ProtocolError
from serve.core.messages import End, Final, Partial
from serve.core.protocol import Call, Outgoing
from serve.core.session import Session, StreamParams
from serve.deploy.socket_stream import SocketStream, StreamClosed

if TYPE_CHECKING:
    from serve.deploy.ingress import Ingress

log = logging.getLogger("ray.serve")


class DialectSocket(SocketStream):
    """A ``SocketStream`` (its loops, calls and limits) whose client speaks a dialect: ``receive`` translates a client
    message, ``results`` a call's messages, ``fail`` reports an error the dialect's way, ``ended`` closes a stream the
    client ended."""

    def __init__(self, ws: WebSocket, session: Session, ingress: Ingress) -> None:
        super().__init__(ws, session, ingress.buffer_manager, ingress.limits, ingress.metrics, ingress.shared_calls)
        self.protocol: DialectProtocol = DialectProtocol(session, ingress.limits, time.monotonic())

    async def close(self, code: int, reason: str = "") -> None:
        async with self.send_lock:
            await self.ws.close(code, reason)


class DeepgramSocket(DialectSocket):
    def __init__(self, ws: WebSocket, session: Session, ingress: Ingress, stream: deepgram.DeepgramStream) -> None:
        super().__init__(ws, session, ingress)
        self.dialect = stream
        self.last_text = ""

    async def receive(self, data: bytes | None, text: str | None) -> float:
        now = time.monotonic()
        if data is not None:
            self.protocol.admit(len(data), now)
            if not data:  # Deepgram's own rule: an empty binary message closes the stream, as CloseStream does
                return self.protocol.apply(now, control=Control.STOP)
            seconds = self.protocol.apply(now, audio=data)
            self.dialect.audio(data)
            return seconds
        self.last_text = text or ""
        self.protocol.admit(len(self.last_text.encode("utf-8", "surrogatepass")), now)
        event = self.dialect.client_text(self.last_text)
        if event.vocabulary is not None:
            self.session.params = self.session.params.model_copy(update={"prompt": event.vocabulary})
        if event.reply:
            await self.send(event.reply)
        return self.protocol.apply(now, control=event.control)

    def before_call(self) -> None:
        self.session.state.vocabulary = self.session.params.prompt

    def results(self, call: Call, messages: list[Partial | Final], outgoing: list[Outgoing]) -> list[str]:
        from_finalize = call.finalize and not self.protocol.done  # the flush of CloseStream is not a Finalize
        return self.dialect.results(messages, Activity.of(self.session.state), from_finalize=from_finalize)

    async def fail(self, exc: ProtocolError) -> None:
        self.metrics.error(exc.code)
        if not exc.fatal:
            await self.send(self.dialect.schema_error(exc, self.last_text))
            return
        await self.close(*self.dialect.close_frame(exc))
        raise StreamClosed(exc.code)

    async def ended(self, end: End) -> None:
        await self.send(self.dialect.metadata(end.duration))
        await self.close(CLOSE_NORMAL)


class RealtimeSocket(DialectSocket):
    def __init__(self, ws: WebSocket, session: Session, ingress: Ingress, dialect: realtime.RealtimeSession) -> None:
        super().__init__(ws, session, ingress)
        self.dialect = dialect

    async def receive(self, data: bytes | None, text: str | None) -> float:
        now = time.monotonic()
        if data is not None:
            self.protocol.admit(len(data), now)
            raise realtime.RealtimeError("invalid_value", "send events as JSON text messages, audio base64 in input_audio_buffer.append")
        text = text or ""
        self.protocol.admit(len(text.encode("utf-8", "surrogatepass")), now)
        event = self.dialect.client_text(text)
        if self.dialect.sample_rate != self.session.decoder.resampler.input_rate:
            self.session.decoder = PcmDecoder(Encoding.S16LE, self.dialect.sample_rate)  # no audio yet: checked
        for reply in event.replies:
            await self.send(reply)
        return self.protocol.apply(now, audio=event.audio, control=event.control)

    def before_call(self) -> None:
        self.dialect.configure(self.session.state)

    def results(self, call: Call, messages: list[Partial | Final], outgoing: list[Outgoing]) -> list[str]:
        flush = self.protocol.done
        return self.dialect.results(
            messages, Activity.of(self.session.state), turn_end=call.finalize and not flush, flush=flush
        )

    async def fail(self, exc: ProtocolError) -> None:
        self.metrics.error(exc.code)
        await self.send(self.dialect.error(exc))
        if exc.fatal:
            await self.close(*self.dialect.close_reason(exc))
            raise StreamClosed(exc.code)

    async def ended(self, end: End) -> None:
        await self.close(CLOSE_NORMAL)


# -- opening ------------------------------------------------------------------------------------------


def deepgram_credentials(ws: WebSocket) -> tuple[dict[str, str], str | None]:
    """The headers as the auth gate reads them, with Deepgram's forms: ``Authorization: Token KEY`` and a browser's
    ``Sec-WebSocket-Protocol: token, KEY``; and the subprotocol to accept (``token``) when the latter was used."""
    headers = {k.lower(): v for k, v in ws.headers.items()}
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "token" and credential.strip():
        headers["authorization"] = f"Bearer {credential.strip()}"
    subprotocols = list(ws.scope.get("subprotocols") or [])
    if len(subprotocols) == 2 and subprotocols[0].lower() == "token":
        headers.setdefault("authorization", f"Bearer {subprotocols[1]}")
        return headers, subprotocols[0]
    return headers, None


async def serve_deepgram(ingress: Ingress, ws: WebSocket) -> None:
    """``WS /deepgram/v1/listen``: refused at the upgrade (HTTP 4xx, Deepgram's error body), or served until closed."""
    stream: deepgram.DeepgramStream | None = None
    session: Session | None = None
    try:
        try:
            facts = await ingress.model_facts()
            headers, subprotocol = deepgram_credentials(ws)
            stream = deepgram.DeepgramStream(deepgram.Options(), model=facts.model)
            ingress.gate.check(headers, ws.query_params)
            params, options = deepgram.parse_query(
                ws.query_params.multi_items(), default_language=ingress.default_language,
                multilingual=facts.multilingual, request_id=stream.request_id,
            )
            stream.options = options
            session = ingress.admit(ws, params)
        except ProtocolError as exc:
            raise deepgram.refusal(exc, stream.request_id if stream else "") from None
        await ws.accept(subprotocol=subprotocol, headers=[(b"dg-request-id", stream.request_id.encode())])
        ingress.metrics.streams.inc()
        await DeepgramSocket(ws, session, ingress, stream).run()
    except deepgram.Refusal as refused:
        ingress.metrics.error({401: "unauthorized", 429: "overloaded"}.get(refused.status, "bad_message"))
        await deny(ws, refused.status, refused.body(), refused.headers())
    except (StreamClosed, WebSocketDisconnect):
        pass
    except Exception:  # nothing a client sends may take the replica's handler down unanswered
        log.exception("deepgram stream %s: unexpected failure", session.id if session else "-")
        ingress.metrics.error("internal")
        if ws.client_state is WebSocketState.CONNECTING:  # e.g. the recognizer did not answer before the upgrade
            failed = deepgram.Refusal(503, "INTERNAL_SERVER_ERROR", "the recognizer is unavailable; try again", "")
            await deny(ws, failed.status, failed.body(), failed.headers())
        else:
            await close_quietly(ws, CLOSE_INTERNAL, "internal: the server failed on this stream")
    finally:
        release(ingress, session)


async def serve_realtime(ingress: Ingress, ws: WebSocket) -> None:
    """``WS /v1/realtime?intent=transcription``: OpenAI answers over the socket, so it is accepted first; a refusal
    is an ``error`` event and a close."""
    subprotocols = list(ws.scope.get("subprotocols") or [])
    await ws.accept(subprotocol="realtime" if "realtime" in subprotocols else None)
    dialect: realtime.RealtimeSession | None = None
    session: Session | None = None
    try:
        facts = await ingress.model_facts()
        dialect = realtime.RealtimeSession(
            model=facts.model, default_language=ingress.default_language, multilingual=facts.multilingual
        )
        try:
            ingress.gate.check(realtime_credentials(ws, subprotocols), ws.query_params)
            realtime.check_query(ws.query_params.multi_items())
            # Partials are decoded (their agreement makes words final mid-utterance: deltas as one speaks), not sent.
            params = StreamParams.from_query(
                {"sample_rate": str(realtime.OPENAI_RATE), "encoding": "s16le", "interim_results": "true"},
                default_language=ingress.default_language, multilingual=facts.multilingual,
            )
            session = ingress.admit(ws, params)
        except ProtocolError as exc:
            ingress.metrics.error(exc.code)
            await ws.send_text(dialect.error(exc))
            await ws.close(*dialect.close_reason(exc))
            return
        await ws.send_text(dialect.created())
        ingress.metrics.streams.inc()
        await RealtimeSocket(ws, session, ingress, dialect).run()
    except (StreamClosed, WebSocketDisconnect):
        pass
    except Exception:
        log.exception("realtime stream %s: unexpected failure", session.id if session else "-")
        ingress.metrics.error("internal")
        if dialect is not None:
            try:
                await ws.send_text(dialect.error(ProtocolError("internal", "the server failed on this stream", CLOSE_INTERNAL)))
            except Exception:
                pass
        await close_quietly(ws, CLOSE_INTERNAL, "server_error.internal")
    finally:
        release(ingress, session)


def realtime_credentials(ws: WebSocket, subprotocols: list[str]) -> dict[str, str]:
    """The headers as the auth gate reads them, with a browser's key in ``openai-insecure-api-key.KEY``."""
    headers = {k.lower(): v for k, v in ws.headers.items()}
    for protocol in subprotocols:
        if protocol.startswith("openai-insecure-api-key."):
            headers.setdefault("authorization", f"Bearer {protocol.removeprefix('openai-insecure-api-key.')}")
    return headers


async def deny(ws: WebSocket, status: int, body: dict, headers: dict[str, str]) -> None:
    """Answer the upgrade with an HTTP error, or, where the server cannot, accept and close with the reason."""
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=status, headers=headers))
    except RuntimeError:  # no websocket.http.response extension on this server
        await ws.accept()
        await close_quietly(ws, CLOSE_POLICY, f"{status}: {body.get('err_msg', '')}"[:123])


async def close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code, reason)
    except Exception:  # the socket is already gone
        pass


def release(ingress: Ingress, session: Session | None) -> None:
    if session is not None:
        ingress.sessions.pop(session.id, None)
        ingress.metrics.open_streams.set(len(ingress.sessions))
