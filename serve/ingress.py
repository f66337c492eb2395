"""The Ingress deployment: holds the WebSocket sessions, speaks protocol v1."""

import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.auth import Gate
from serve.core.errors import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_LATER, ProtocolError
from serve.core.messages import Ready
from serve.core.session import Session, StreamParams
from serve.core.settings import IngressOptions
from serve.metrics import IngressMetrics
from serve.socket_stream import SocketStream, StreamClosed, send_error

log = logging.getLogger("ray.serve")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

app = FastAPI(title="Real-time speech recognition", version="1")


@serve.deployment(name="Ingress", max_ongoing_requests=1000)
@serve.ingress(app)
class Ingress:
    def __init__(self, buffer_manager: DeploymentHandle, whisper: DeploymentHandle, default_language: str = "en") -> None:
        self.buffer_manager = buffer_manager
        self.whisper = whisper
        self.default_language = default_language
        self.sessions: dict[str, Session] = {}
        self._model: dict | None = None
        self.metrics = IngressMetrics()
        self.metrics.open_streams.set(0)
        self.reconfigure({})

    def reconfigure(self, config: dict) -> None:
        """Live limits and auth from ``user_config``: they apply to streams opened from now on."""
        options = IngressOptions.model_validate(config or {})
        self.limits = options.limits
        self.gate = Gate(options.auth)

    async def model_info(self) -> dict:
        if self._model is None:
            self._model = await self.whisper.info.remote()
        return self._model

    @app.get("/healthz")
    async def healthz(self) -> dict:
        info = await self.model_info()
        return {"status": "ok", "model": info["model"], "device": info["device"], "streams": len(self.sessions)}

    @app.get("/metrics/summary")
    async def summary(self) -> dict:
        """What the Whisper replica answering this call has done, and this replica's open streams."""
        return {
            "whisper": await self.whisper.info.remote(),
            "ingress": {"open_streams": len(self.sessions), "max_streams": self.limits.max_streams},
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

    def open_session(self, ws: WebSocket, info: dict) -> Session:
        """Check who is asking, what they ask for and whether there is room; raises a fatal ProtocolError."""
        self.gate.check(ws.headers, ws.query_params)
        params = StreamParams.from_query(
            ws.query_params, default_language=self.default_language, multilingual=info["multilingual"]
        )
        if len(self.sessions) >= self.limits.max_streams:
            raise ProtocolError(
                "overloaded", f"this server holds its maximum of {self.limits.max_streams} streams; try again later",
                CLOSE_TRY_LATER,
            )
        session = Session(params)
        self.sessions[session.id] = session  # no await since the count: the limit holds
        self.metrics.open_streams.set(len(self.sessions))
        return session

    @app.websocket("/v1/listen")
    async def listen(self, ws: WebSocket) -> None:
        await ws.accept()
        session: Session | None = None
        try:
            info = await self.model_info()
            session = self.open_session(ws, info)
            await ws.send_text(Ready(session=session.id, model=info["model"], sample_rate=16_000).to_json())
            self.metrics.streams.inc()
            await SocketStream(ws, session, self.buffer_manager, self.limits, self.metrics).run()
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
