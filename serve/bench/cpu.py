"""CPU use of the service's process tree while a run goes on (``--server-pid``), in all and per process role."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CpuUsage:
    """Over one run; 100% is one core fully busy."""

    mean_percent: float
    max_percent: float


# -- roles ---------------------------------------------------------------------------------------

ROLES = (
    "Ingress", "BufferManager", "Whisper", "ProxyActor", "HAProxy", "ServeController", "ray::IDLE", "raylet",
    "gcs_server", "dashboard", "driver", "other",
)
"""The roles ``role_of`` knows; a Serve replica of a deployment with another name is ``replica:<name>``."""

MODEL_ROLE = "Whisper"

_REPLICA = re.compile(r"ServeReplica:[^:\s]*:([A-Za-z_][\w-]*)")


def role_of(cmdline: str | Sequence[str]) -> str:
    """What a process of a Serve application's tree is, from its /proc/PID/cmdline (argv, or argv joined).

    Ray sets a worker's title: ``ray::ServeReplica:asr:Whisper`` (with the method it runs while it runs one,
    ``ray::ServeReplica:asr:Whisper.handle_request``), ``ray::ProxyActor``, ``ray::ServeController``, ``ray::IDLE``
    for a worker with no actor yet. With HAProxy in front (Serve's RAY_SERVE_ENABLE_HA_PROXY), its binary and the
    ``ray::HAProxyManager`` actor that configures it are ``HAProxy``. Ray's own daemons are found by their executable
    (``raylet``, ``gcs_server``) or module (the dashboard, its agent and its modules); ``serve run`` itself is the
    ``driver``.
    """
    argv = [cmdline] if isinstance(cmdline, str) else list(cmdline)
    text = " ".join(a for a in argv if a).strip()
    head = text.split(" ", 1)[0] if text else ""
    if head.startswith("ray::"):
        title = head[len("ray::"):]
        if replica := _REPLICA.search(title):
            name = replica.group(1)
            return name if name in ("Ingress", "BufferManager", "Whisper") else f"replica:{name}"
        actor = re.split(r"[.:\s(]", title, maxsplit=1)[0]
        if actor in ("ProxyActor", "HTTPProxyActor"):
            return "ProxyActor"
        if actor == "HAProxyManager":
            return "HAProxy"
        if actor == "ServeController":
            return "ServeController"
        if actor == "IDLE":
            return "ray::IDLE"
        if actor.startswith(("Dashboard", "dashboard")):
            return "dashboard"
        return "other"
    executable = os.path.basename(head)
    if executable in ("raylet", "gcs_server"):
        return executable
    if executable == "haproxy":
        return "HAProxy"
    if "dashboard" in text.lower():
        return "dashboard"
    if re.search(r"(^|[\s/])serve run(\s|$)", text) or re.search(r"/serve\s+run(\s|$)", text):
        return "driver"
    return "other"


def read_cmdline(pid: int) -> list[str]:
    """A process's argv (empty when it is gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@dataclass(frozen=True)
class RoleCpu:
    """CPU-seconds each role used over ``wall_s`` seconds."""

    wall_s: float
    seconds: dict[str, float] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        """CPU-seconds per wall second, per role (1.0 is one core busy)."""
        return {role: s / self.wall_s for role, s in self.seconds.items()} if self.wall_s > 0 else {}


# -- sampling ------------------------------------------------------------------------------------


class CpuSampler:
    """CPU% of a process and all its descendants (Ray workers are), sampled each second from Linux /proc.

    Besides the percent samples (``usage``), it adds each process's CPU-seconds between two samples to its role
    (``role_of`` its cmdline at that sample: a Ray worker's title changes when it gets an actor): ``roles()``. A
    process that ends between two samples loses what it used since the last one; ``stop()`` takes a last sample.
    """

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self.role_seconds: dict[str, float] = {}
        self.titles: dict[str, set[str]] = {}
        """Per role, the process titles (cmdline heads) seen: what the classification was made from."""
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._previous: dict[int, float] | None = None
        self._then = self._began = 0.0

    def _cpu_seconds(self) -> dict[int, float]:
        children: dict[int, list[int]] = {}
        times: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry)
            children.setdefault(int(fields[1]), []).append(pid)
            times[pid] = (int(fields[11]) + int(fields[12])) / self._ticks
        tree, todo = {}, [self.pid]
        while todo:
            pid = todo.pop()
            if pid in times:
                tree[pid] = times[pid]
            todo.extend(children.get(pid, []))
        return tree

    def start(self) -> None:
        """The baseline every later sample counts from (``run`` calls it if nothing did)."""
        self._previous, self._then = self._cpu_seconds(), time.monotonic()
        self._began = self._then

    def tick(self) -> float:
        """One sample: adds each process's CPU since the last one to its role; returns the tree's CPU% since then."""
        if self._previous is None:
            self.start()
            return 0.0
        current, now = self._cpu_seconds(), time.monotonic()
        busy = 0.0
        for pid, seconds in current.items():
            used = max(0.0, seconds - self._previous.get(pid, 0.0))
            busy += used
            argv = read_cmdline(pid)
            role = "driver" if pid == self.pid and role_of(argv) == "other" else role_of(argv)
            self.role_seconds[role] = self.role_seconds.get(role, 0.0) + used
            if argv:
                self.titles.setdefault(role, set()).add(" ".join(argv)[:120])
        percent = 100.0 * busy / max(now - self._then, 1e-9)
        self._previous, self._then = current, now
        return percent

    async def run(self) -> None:
        if self._previous is None:
            self.start()
        while True:
            await asyncio.sleep(self.interval_s)
            self.samples.append(self.tick())

    def stop(self) -> RoleCpu:
        """A last sample (the time since the last tick), then ``roles()``."""
        if self._previous is not None:
            self.tick()
        return self.roles()

    def roles(self) -> RoleCpu:
        """CPU-seconds per role from ``start`` to the last sample."""
        return RoleCpu(max(self._then - self._began, 0.0), dict(self.role_seconds))

    def usage(self) -> CpuUsage | None:
        if not self.samples:
            return None
        return CpuUsage(sum(self.samples) / len(self.samples), max(self.samples))
