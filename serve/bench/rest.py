"""HTTP around a run: the service's ``/metrics/summary`` and ``/healthz``, and Serve's REST API on Ray's dashboard,
through which ``--compare-unbatched`` reconfigures the running application with Ray's token (what `serve deploy` does)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from serve.bench.scoring import flat_summary


async def fetch_json(http_url: str | None, path: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """GET a JSON object; None when there is no such endpoint (404) or it cannot be read."""
    if not http_url:
        return None

    def get() -> dict[str, Any] | None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(http_url.rstrip("/") + path, headers=headers or {})
        try:
            with opener.open(request, timeout=5) as response:
                data = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    return await asyncio.to_thread(get)


async def fetch_summary(http_url: str | None, token: str | None) -> dict[str, Any] | None:
    """``GET /metrics/summary``, with the API key where one is given (the service requires it when it has keys)."""
    return await fetch_json(http_url, "/metrics/summary", {"Authorization": f"Bearer {token}"} if token else None)


def http_base(ws_url: str) -> str:
    """ws://host:port/v1/listen -> http://host:port; an app under a route prefix keeps it (…/unbatched/v1/listen)."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    prefix = parts.path.removesuffix("/").removesuffix("/v1/listen")
    return urllib.parse.urlunsplit((scheme, parts.netloc, prefix, "", ""))


# -- the unbatched comparison: reconfigure the running application -----------------------------


def serve_api_base(ws_url: str) -> str:
    """The Ray dashboard (Serve's REST API): $RAY_DASHBOARD_ADDRESS, where `serve deploy` also looks (README: a
    cluster by hand), else the service's host at port 8265."""
    if address := os.environ.get("RAY_DASHBOARD_ADDRESS", "").strip():
        return address if "://" in address else f"http://{address}"
    host = urllib.parse.urlsplit(ws_url).hostname or "127.0.0.1"
    return f"http://{host}:8265"


def batching_configs(details: dict[str, Any], ws_url: str, max_batch_size: int = 1) -> tuple[str, dict, dict]:
    """From ``GET /api/serve/applications/``: the app serving ``ws_url``, the deploy body that
    restores today's config and the one whose Whisper ``user_config`` sets ``max_batch_size``.

    The app is the one whose route prefix is the longest prefix of the URL's path. Every
    application deployed from a config is kept in both bodies (a deploy replaces them all).
    """
    path = urllib.parse.urlsplit(ws_url).path.removesuffix("/v1/listen") or "/"
    apps = details.get("applications") or {}
    declared = {name: app for name, app in apps.items() if app.get("deployed_app_config")}
    if not declared:
        raise ValueError("no application deployed from a config (serve run/deploy serve.yaml) to reconfigure")

    def matches(app: dict[str, Any]) -> bool:
        prefix = (app.get("route_prefix") or "/").rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or not prefix

    serving = [name for name, app in declared.items() if matches(app)]
    if not serving:
        raise ValueError(f"no deployed application serves {path!r}")
    target = max(serving, key=lambda name: len(declared[name].get("route_prefix") or "/"))
    original = {"applications": [declared[name]["deployed_app_config"] for name in declared]}
    for key in ("proxy_location", "http_options"):
        if details.get(key) is not None:
            original[key] = details[key]
    changed = json.loads(json.dumps(original))
    for app in changed["applications"]:
        if app.get("name") == target:
            # In the Whisper deployment's user_config, not in args: args are part of the app's code version, so
            # changing them restarts every replica; a user_config change is applied by reconfigure() in place.
            batching = {**((app.get("args") or {}).get("batching") or {}), "max_batch_size": max_batch_size}
            deployments = app.setdefault("deployments", [])
            whisper = next((d for d in deployments if d.get("name") == "Whisper"), None)
            if whisper is None:
                deployments.append(whisper := {"name": "Whisper"})
            whisper["user_config"] = batching
    return target, original, changed


def ray_auth_headers() -> dict[str, str]:
    """Ray's own token for its dashboard, where token authentication is on: $RAY_AUTH_TOKEN, else the file at
    $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, in Ray's order (what `serve deploy` sends with RAY_AUTH_MODE=token).
    None found: no header."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


async def put_config(url: str, body: dict[str, Any]) -> None:
    """PUT a deploy config to Serve's REST API, as `serve deploy` does."""

    def put() -> None:
        headers = {"Content-Type": "application/json", **ray_auth_headers()}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT", headers=headers)
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise SystemExit(f"PUT {url} failed: {exc}") from exc

    await asyncio.to_thread(put)


async def wait_for_batch_size(http_url: str, size: int, token: str | None, timeout_s: float = 180.0) -> None:
    """Until ``/metrics/summary`` reports ``max_batch_size == size`` (every replica reconfigured)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        summary = await fetch_summary(http_url, token)
        if summary is not None and flat_summary(summary).get("max_batch_size") == size:
            return
        await asyncio.sleep(1.0)
    raise SystemExit(f"the service at {http_url} did not report max_batch_size {size} within {timeout_s:g} s")
