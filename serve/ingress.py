"""The Ingress deployment: holds the WebSocket sessions, speaks protocol v1."""

import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.core.errors import CLOSE_POLICY, ProtocolError
from serve.core.messages import Ready
from serve.core.session import Session, StreamParams
from serve.core.settings import LimitOptions
from serve.socket_stream import SocketStream, StreamClosed, send_error

log = logging.getLogger("ray.serve")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

app = FastAPI(title="Real-time speech recognition", version="1")


@serve.deployment(name="Ingress", max_ongoing_requests=1000)
@serve.ingress(app)
class Ingress:
    def __init__(
        self, buffer_manager: DeploymentHandle, whisper: DeploymentHandle, limits: dict | None = None,
        default_language: str = "en",
    ) -> None:
        self.buffer_manager = buffer_manager
        self.whisper = whisper
        self.limits = LimitOptions.model_validate(limits or {})
        self.default_language = default_language
        self.sessions: dict[str, Session] = {}
        self._model: dict | None = None

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
        return {"whisper": await self.whisper.info.remote(), "ingress": {"open_streams": len(self.sessions)}}

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

    @app.websocket("/v1/listen")
    async def listen(self, ws: WebSocket) -> None:
        await ws.accept()
        info = await self.model_info()
        try:
            params = StreamParams.from_query(
                ws.query_params, default_language=self.default_language, multilingual=info["multilingual"]
            )
            session = Session(params)
        except ProtocolError as exc:
            await send_error(ws, exc)
            await ws.close(exc.close_code or CLOSE_POLICY)
            return
        self.sessions[session.id] = session
        try:
            await ws.send_text(Ready(session=session.id, model=info["model"], sample_rate=16_000).to_json())
            await SocketStream(ws, session, self.buffer_manager, self.limits).run()
        except (StreamClosed, WebSocketDisconnect):
            pass
        finally:
            del self.sessions[session.id]
