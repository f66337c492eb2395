"""The Ingress deployment: holds the WebSocket sessions, speaks protocol v1."""

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.audio import SAMPLE_RATE
from serve.core.auth import Gate
from serve.core.dialects import deepgram, realtime
from serve.core.engine import ModelFacts
from serve.core.errors import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_LATER, ProtocolError
from serve.core.messages import Ready
from serve.core.session import Session, StreamParams
from serve.core.settings import IngressOptions
from serve.deploy import compat
from serve.deploy.buffer_manager import SharedCalls, Unavailable
from serve.deploy.metrics import IngressMetrics
from serve.deploy.retry import answer_within
from serve.deploy.socket_stream import SocketStream, StreamClosed, send_error

log = logging.getLogger("ray.serve")

WEB_DIR = Path(__file__).resolve().parents[2] / "web"

app = FastAPI(title="Real-time speech recognition", version="1")


def behind_haproxy(env: Mapping[str, str] = os.environ) -> bool:
    """Whether clients reach this replica through Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1 on the nodes,
    README: "The high-throughput ingress"). The replica then serves HTTP and WebSockets itself, and every client's TCP
    peer is HAProxy: HAProxy adds no X-Forwarded-For, and one a client sends reaches the replica's uvicorn from
    127.0.0.1, which it trusts. So no client address can be told apart or trusted there."""
    return env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


HEALTH_TIMEOUT_S = 5.0
"""How long ``/healthz`` waits for the BufferManager and Whisper before it reports the service unavailable."""


@serve.deployment(name="Ingress", max_ongoing_requests=1000)
@serve.ingress(app)
class Ingress:
    def __init__(self, buffer_manager: DeploymentHandle, default_language: str = "en") -> None:
        self.buffer_manager = buffer_manager
        self.shared_calls = SharedCalls(buffer_manager)
        """Quiet streams' calls, many per trip to the BufferManager."""
        self.default_language = default_language
        self.sessions: dict[str, Session] = {}
        self._facts: ModelFacts | None = None
        self.metrics = IngressMetrics()
        self.metrics.open_streams.set(0)
        self.client_addresses = not behind_haproxy()
        """False behind HAProxy: limits.max_streams_per_client has no address to count by, and is not applied."""
        self.reconfigure({})

    def reconfigure(self, config: dict) -> None:
        """Live limits and auth from ``user_config``: they apply to streams opened from now on."""
        options = IngressOptions.model_validate(config or {})
        self.limits = options.limits
        self.gate = Gate(options.auth)
        if not self.client_addresses and self.gate.keyless and self.limits.max_streams_per_client:
            log.warning(
                "Behind Serve's HAProxy ingress every client has HAProxy's address: limits.max_streams_per_client "
                "is not applied. Set auth.api_keys on a service others can reach."
            )

    async def model_facts(self) -> ModelFacts:
        """The served model's facts, asked once (through the BufferManager, which asks Whisper)."""
        if self._facts is None:
            self._facts = await self.buffer_manager.ping.remote(HEALTH_TIMEOUT_S)
        return self._facts

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when a stream could be served now: the BufferManager answers within HEALTH_TIMEOUT_S, once Whisper
        has answered it (the path of a stream's call). Else 503 with the reason, while Serve replaces a dead
        replica. Open to probes: no key, no placement details."""
        try:
            facts = await answer_within(self.buffer_manager.ping.remote(0.8 * HEALTH_TIMEOUT_S), HEALTH_TIMEOUT_S)
        except TimeoutError:
            reason = f"BufferManager: no answer within {HEALTH_TIMEOUT_S:g} s"
        except Exception as exc:  # a RayTaskError carries the BufferManager's own reason (Whisper's state)
            cause = getattr(exc, "cause", None) or exc
            reason = str(cause) if isinstance(cause, Unavailable) else f"BufferManager: {type(cause).__name__}"
        else:
            return JSONResponse({
                "status": "ok", "model": facts.model, "device": facts.device, "streams": len(self.sessions),
                "languages": list(facts.languages), "default_language": self.default_language,  # the page's choices
            })
        log.warning("healthz: unavailable (%s)", reason)
        return JSONResponse({"status": "unavailable", "reason": reason, "streams": len(self.sessions)}, status_code=503)

    @app.get("/metrics/summary")
    async def summary(self, request: Request) -> Any:
        """What the Whisper replica answering this call has done, and this replica's open streams.

        It names nodes and GPUs: with API keys set, it takes a key as a stream does (Bearer or ?token=)."""
        try:
            self.gate.check(request.headers, request.query_params)
        except ProtocolError as exc:
            return JSONResponse(
                {"code": exc.code, "message": exc.message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return {
            "whisper": await self.buffer_manager.whisper_info.remote(),
            "buffer_manager": await self.buffer_manager.info.remote(),
            "ingress": {
                "open_streams": len(self.sessions), "max_streams": self.limits.max_streams,
                "payload_bytes": {
                    "to_buffer_manager": self.metrics.payload.sent, "from_buffer_manager": self.metrics.payload.answered,
                    "calls": self.metrics.payload.calls,
                },
                "shared_trips": dict(sorted(self.shared_calls.trips.items())),
            },
        }

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/{name}", include_in_schema=False)
    async def page_file(self, name: str) -> FileResponse:
        """The page's own files (web/, one level, nothing outside it)."""
        path = (WEB_DIR / name).resolve()
        if path.parent != WEB_DIR or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path)

    def open_session(self, ws: WebSocket, facts: ModelFacts) -> Session:
        """Check who is asking, what they ask for and whether there is room; raises a fatal ProtocolError."""
        self.gate.check(ws.headers, ws.query_params)
        params = StreamParams.from_query(
            ws.query_params, default_language=self.default_language, multilingual=facts.multilingual
        )
        return self.admit(ws, params)

    def admit(self, ws: WebSocket, params: StreamParams) -> Session:
        """Open a session if there is room (per replica, and per client address with auth off); raises a fatal
        ProtocolError. Every endpoint's streams share these caps (v1 and the compatible dialects)."""
        languages = self._facts.languages if self._facts else ()
        if languages and params.language not in (*languages, "auto", None):  # e.g. large-v3's "yue" on base
            raise ProtocolError(
                "bad_message", f"the model {self._facts.model} does not know language {params.language!r}",  # type: ignore[union-attr]
                CLOSE_POLICY,
            )
        if len(self.sessions) >= self.limits.max_streams:
            raise ProtocolError(
                "overloaded", f"this server holds its maximum of {self.limits.max_streams} streams; try again later",
                CLOSE_TRY_LATER,
            )
        # What Serve's proxy (uvicorn) reports: the TCP peer, or X-Forwarded-For when that peer is a proxy it trusts
        # (FORWARDED_ALLOW_IPS, by default 127.0.0.1 only). Behind HAProxy, nothing to count by (behind_haproxy).
        client = ws.client.host if ws.client else "unknown"
        per_client = self.limits.max_streams_per_client if self.client_addresses else 0
        if per_client and self.gate.keyless and sum(s.client == client for s in self.sessions.values()) >= per_client:
            raise ProtocolError(
                "overloaded", f"{client} holds its maximum of {per_client} streams (limits.max_streams_per_client)",
                CLOSE_TRY_LATER,
            )
        session = Session(params, client=client)
        self.sessions[session.id] = session  # no await since the count: the limit holds
        self.metrics.open_streams.set(len(self.sessions))
        return session

    @app.websocket(deepgram.PATH)
    async def deepgram_listen(self, ws: WebSocket) -> None:
        """Deepgram's live API, for Deepgram's SDKs with base URL ``ws://HOST:8000/deepgram`` (serve/deploy/compat.py)."""
        await compat.serve_deepgram(self, ws)

    @app.websocket(realtime.PATH)
    async def realtime_transcription(self, ws: WebSocket) -> None:
        """OpenAI's Realtime transcription session, for OpenAI's SDKs with ``base_url=http://HOST:8000/v1``."""
        await compat.serve_realtime(self, ws)

    @app.websocket("/v1/listen")
    async def listen(self, ws: WebSocket) -> None:
        await ws.accept()
        session: Session | None = None
        try:
            facts = await self.model_facts()
            session = self.open_session(ws, facts)
            ready = Ready(session=session.id, model=facts.model, sample_rate=SAMPLE_RATE, language=session.state.language)
            await ws.send_text(ready.to_json())
            self.metrics.streams.inc()
            await SocketStream(ws, session, self.buffer_manager, self.limits, self.metrics, self.shared_calls).run()
        except ProtocolError as exc:  # refused before any audio was accepted
            self.metrics.error(exc.code)
            await send_error(ws, exc)
            await ws.close(exc.close_code or CLOSE_POLICY)
        except (StreamClosed, WebSocketDisconnect):
            pass
        except Exception:  # nothing a client sends may take the replica's handler down unanswered
            log.exception("stream %s: unexpected failure", session.id if session else "-")
            self.metrics.error("internal")
            try:
                await send_error(ws, ProtocolError("internal", "the server failed on this stream"))
                await ws.close(CLOSE_INTERNAL)
            except Exception:  # the socket is already gone
                pass
        finally:
            if session is not None:
                del self.sessions[session.id]
                self.metrics.open_streams.set(len(self.sessions))
