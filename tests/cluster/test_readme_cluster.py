"""The README's "A cluster by hand" commands, run as written: ``ray start`` a head and a worker, ``serve deploy``.

The fenced bash block under "**A cluster by hand**" in README.md is read from the file, so the README cannot drift from
what works. Its full-line comments split it into machines: the section that runs ``ray start --head`` runs as the head,
the one with ``ray start --address`` as a worker, any other (``serve deploy``) as the machine deploying. Each section
runs in its own ``bash -euo pipefail`` with its own HOME (its own ``~/.ray``), from this
repository's directory, with the venv's ``ray`` and ``serve`` first on PATH and no RAY_* variable inherited.

Both nodes run on this one host, so only what must differ here is changed, each time the same way:
- ``HEAD_IP`` becomes this host's address as Ray picks it (``ray.util.get_node_ip_address()``);
- ``scp HEAD_IP:`` (copying the head's token) becomes ``cp HEAD_HOME/``;
- the ports 6379 (GCS) and 8265 (dashboard) become free ports wherever they appear, each node's
  ``--metrics-export-port=8080`` a free port of its own, and ``serve.yaml`` a copy whose ``http_options.port``
  is a free port (another test run may hold 8000);
- ``ray start`` lines get ``--port``/``--dashboard-port``/``--ray-client-server-port`` (head) and
  ``--dashboard-agent-listen-port`` (each node) set to free ports, and the worker's proxy its own HTTP port
  (``RAY_SERVE_WORKER_PROXY_HTTP_PORT``, what ``tests/cluster/test_cluster.py`` does too): Ray's defaults would collide;
- ``RAY_TMPDIR`` is a fresh short directory, so these nodes share no session, socket or lock with any other
  Ray on the host; ``RAY_USAGE_STATS_ENABLED=0`` keeps CI offline.

The head and the worker are machines where ``scripts/run.sh`` already ran (each HOME holds its own token in
``~/.ray/auth_token``, as ``serve run`` leaves it): the head keeps its token, the worker's is replaced by the head's.
The deploy runs on a third machine that holds the token in ``RAY_AUTH_TOKEN`` (the README's other way). (A second
variant, fresh machines deploying from the head, ran here until 2026-12-02: 45 s of CI for Ray's own token
generation and lookup, which this variant's head and worker go through too.) It streams a clip through the head's
and the worker's proxies, checks ``serve status``, that the dashboard refuses a request without the token and
that ``serve.bench``'s REST helpers get through with it, and that no command printed Ray's warning that token
authentication is disabled. Then ``serve shutdown`` and every process of these two nodes is ended by PID (found by a
marker in their environment and by the temp dir: never ``ray stop``, which would stop every Ray on the host).

``ASR_README=PATH`` runs another README text (e.g. an older one) through the same test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from serve.bench.scoring import word_errors
from serve.client import stream_file
from serve.core.audio import load_audio
from tests.conftest import REPO, end_ray_processes, free_port, serve_yaml

DISABLED_WARNINGS = ("token authentication is disabled", "authentication is disabled")
IMPLICIT_WARNING = "set ray_auth_mode=disabled to opt out"  # Ray turned auth on by itself: RAY_AUTH_MODE was not set
COMMAND_TIMEOUT_S = 240


def readme_block(readme: Path) -> str:
    """The first fenced bash block after the "**A cluster by hand**" heading."""
    text = readme.read_text()
    found = re.search(r"\*\*A cluster by hand\*\*.*?```bash\n(.*?)```", text, re.S)
    assert found, f"no ```bash block under **A cluster by hand** in {readme}"
    return found.group(1)


@dataclass
class Section:
    machine: str  # head, worker or client
    lines: list[str] = field(default_factory=list)


def sections(block: str) -> list[Section]:
    """Split at full-line comments; name each part by the ``ray start`` it runs."""
    parts: list[list[str]] = [[]]
    for line in block.splitlines():
        if line.strip().startswith("#"):
            if parts[-1]:
                parts.append([])
        elif line.strip():
            parts[-1].append(line)
    found = []
    for lines in filter(None, parts):
        starts = [line for line in lines if re.search(r"\bray start\b", line)]
        if any("--head" in line for line in starts):
            machine = "head"
        elif any("--address" in line for line in starts):
            machine = "worker"
        else:
            machine = "client"
        found.append(Section(machine, lines))
    return found


@dataclass
class OneHost:
    """The ports and paths that must differ from the README's when every node runs on this host."""

    ip: str
    config: Path
    head_home: Path
    gcs: int = field(default_factory=free_port)
    dashboard: int = field(default_factory=free_port)
    client_server: int = field(default_factory=free_port)
    proxies: list[int] = field(default_factory=list)
    """HTTP port of each worker's proxy, in the order the workers start."""

    def line(self, line: str) -> str:
        line = line.replace("scp HEAD_IP:", f"cp {self.head_home}/").replace("HEAD_IP", self.ip)
        line = re.sub(r"\b6379\b", str(self.gcs), line)
        line = re.sub(r"\b8265\b", str(self.dashboard), line)
        line = re.sub(r"(?<![\w/.-])serve\.yaml\b", str(self.config), line)
        if not re.search(r"\bray start\b", line):
            return line
        line = re.sub(r"\s+#\s.*$", "", line)  # flags are appended: not into a trailing comment
        line = re.sub(r"(--metrics-export-port[= ])8080\b", rf"\g<1>{free_port()}", line)
        line += f" --dashboard-agent-listen-port={free_port()}"
        if "--head" in line:
            return line + f" --port={self.gcs} --dashboard-port={self.dashboard} --ray-client-server-port={self.client_server}"
        self.proxies.append(free_port())
        return re.sub(r"\bray start\b", f"RAY_SERVE_WORKER_PROXY_HTTP_PORT={self.proxies[-1]} ray start", line, count=1)


@dataclass
class Run:
    command: str
    returncode: int
    output: str


class Machines:
    """Shell environments of the head, the worker and the deploying machine, all on this host."""

    def __init__(self, root: Path, ray_tmp: Path, marker: str) -> None:
        self.root, self.marker, self.runs = root, marker, []  # type: ignore[var-annotated]
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        base.update(RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", ASR_README_CLUSTER=marker)
        self.env = {}
        for machine in ("head", "worker", "client"):
            home = root / machine
            home.mkdir()
            self.env[machine] = {**base, "HOME": str(home)}

    def home(self, machine: str) -> Path:
        return Path(self.env[machine]["HOME"])

    def run(self, machine: str, lines: list[str]) -> Run:
        """Run ``lines`` in one bash on ``machine``; its environment afterwards (what the lines exported) stays."""
        saved = self.root / f"{machine}.env"
        script = "\n".join(["set -euo pipefail", *lines, f"env -0 > {saved}"])
        try:
            done = subprocess.run(
                ["bash", "-c", script], cwd=REPO, env=self.env[machine], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT_S,
            )
            run = Run("\n".join(lines), done.returncode, done.stdout)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            run = Run("\n".join(lines), -1, out + f"\n[timed out after {COMMAND_TIMEOUT_S} s]")
        if saved.exists():
            pairs = (item.split("=", 1) for item in saved.read_text().split("\0") if "=" in item)
            self.env[machine] = {k: v for k, v in pairs if k not in ("_", "SHLVL", "PWD", "OLDPWD")}
            saved.unlink()
        self.runs.append(run)
        print(f"--- [{machine}] $ {run.command}\n{run.output[-3000:]}")
        return run

    def stop(self, ray_tmp: Path) -> None:
        """Every process of these nodes, by the marker in their environment and the temp dir in their command line."""
        end_ray_processes(ray_tmp, "ASR_README_CLUSTER", self.marker)


def get(url: str, headers: dict[str, str] | None = None) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def check_output(run: Run) -> None:
    """No warning that token authentication is off, or was turned on by Ray itself; no authentication error."""
    lowered = run.output.lower()
    assert not any(w in lowered for w in DISABLED_WARNINGS), f"'authentication is disabled' from:\n{run.command}"
    assert IMPLICIT_WARNING not in lowered, f"Ray turned token auth on by itself (RAY_AUTH_MODE unset):\n{run.command}"
    assert "authenticationerror" not in lowered, f"{run.command}\n{run.output[-3000:]}"


def serve_status(machines: Machines) -> tuple[Run, dict]:
    run = machines.run("client", ["serve status"])
    try:
        status = yaml.safe_load(run.output[run.output.find("proxies:"):]) if "proxies:" in run.output else {}
    except yaml.YAMLError:
        status = {}
    return run, status or {}


def test_kuberay_rayservice_turns_on_token_auth_from_one_secret():
    """KubeRay's authOptions (v1.6.0+): mode token, with the token from a Secret the README has you create."""
    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    auth = manifest["spec"]["rayClusterConfig"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "realtime-asr-ray-token"}
    assert f"kubectl create secret generic {auth['secretName']} --from-literal=auth_token=" in (REPO / "README.md").read_text()


@pytest.mark.cluster
def test_readme_cluster_commands_deploy_with_token_auth(tmp_path: Path, by_id, monkeypatch):
    from ray.util import get_node_ip_address

    from serve.bench import rest

    readme = Path(os.environ.get("ASR_README") or REPO / "README.md")
    parts = sections(readme_block(readme))
    print(f"{readme}: " + ", ".join(f"{s.machine} ({len(s.lines)} lines)" for s in parts))
    assert parts and parts[0].machine == "head", "the block starts on the head"

    config = serve_yaml()
    config["http_options"]["port"] = http = free_port()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths live under it
    machines = Machines(tmp_path, ray_tmp, uuid.uuid4().hex)
    host = OneHost(get_node_ip_address(), tmp_path / "config" / "serve.yaml", machines.home("head"))
    dashboard = f"http://{host.ip}:{host.dashboard}"
    token_file = machines.home("head") / ".ray" / "auth_token"
    # What scripts/run.sh leaves: `serve run` starts a local Ray, which saves a new token in ~/.ray/auth_token
    # (Ray's generate_and_save_token; `ray get-auth-token --generate` is the same call). Here on both nodes, each its
    # own.
    for machine in ("head", "worker"):
        assert machines.run(machine, ["ray get-auth-token --generate > /dev/null"]).returncode == 0
    head_token = token_file.read_text()
    stale_worker_token = (machines.home("worker") / ".ray" / "auth_token").read_text()
    try:
        for section in parts:
            machine = section.machine
            if machine == "client":
                # A third machine; the README's other way to hold the token.
                assert token_file.is_file(), "the head section made no token in ~/.ray/auth_token"
                machines.env["client"]["RAY_AUTH_TOKEN"] = token_file.read_text().strip()
            run = machines.run(machine, [host.line(line) for line in section.lines])
            assert run.returncode == 0, f"[{machine}] failed:\n{run.command}\n{run.output[-4000:]}"
            check_output(run)

        deadline = time.monotonic() + 300
        while True:
            status_run, status = serve_status(machines)
            app = (status.get("applications") or {}).get("asr") or {}
            if app.get("status") == "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert status_run.returncode == 0 and app.get("status") == "RUNNING", status_run.output[-4000:]
        assert len(status.get("proxies") or {}) == 2, "expected a proxy on the head and one on the worker"

        # Ray's token authentication is on: the dashboard (Serve's REST API) refuses a request without the token,
        # and serve.bench's helpers (the live reconfigure of --compare-unbatched) find the token and the address
        # where the README's commands left them.
        assert get(f"{dashboard}/api/serve/applications/") == 401
        client = machines.env["client"]
        for name in ("HOME", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_DASHBOARD_ADDRESS"):
            if name in client:
                monkeypatch.setenv(name, client[name])
            else:
                monkeypatch.delenv(name, raising=False)
        headers = rest.ray_auth_headers()
        assert headers, "serve.bench found no Ray token on the deploying machine"
        details = asyncio.run(rest.fetch_json(dashboard, "/api/serve/applications/", headers))
        assert details and "asr" in details["applications"], details
        if "RAY_DASHBOARD_ADDRESS" in client:
            assert rest.serve_api_base(f"ws://{host.ip}:{http}/v1/listen").rstrip("/") == dashboard

        item = by_id["jfk"]
        audio = load_audio(item.path)
        for url in [f"ws://127.0.0.1:{http}/v1/listen", *(f"ws://127.0.0.1:{p}/v1/listen" for p in host.proxies)]:
            result = asyncio.run(stream_file(audio, url, speed=0))
            errors = word_errors(item.text, result.text)
            print(f"{url}: {result.text!r} (WER {errors.wer:.3f})")
            assert result.of_type("end") and result.close_code == 1000, (url, result.close_code)
            assert errors.wer <= 0.15, (url, result.text)

        worker_token = (machines.home("worker") / ".ray" / "auth_token").read_text()
        assert worker_token == token_file.read_text() != stale_worker_token, "the worker must hold the head's token"
        assert token_file.read_text() == head_token, "the head keeps the token scripts/run.sh left"
        assert (token_file.stat().st_mode & 0o077) == 0, "the token file is readable by other users"

        shutdown = machines.run("client", ["serve shutdown -y"])
        assert shutdown.returncode == 0, shutdown.output[-3000:]
    finally:
        machines.stop(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    for run in machines.runs:
        check_output(run)
