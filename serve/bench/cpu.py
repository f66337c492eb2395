"""CPU use of the service's process tree while a run goes on (``--server-pid``)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuUsage:
    """Over one run; 100% is one core fully busy."""

    mean_percent: float
    max_percent: float


class CpuSampler:
    """CPU% of a process and all its descendants (Ray workers are), sampled each second from Linux /proc."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self._ticks = os.sysconf("SC_CLK_TCK")

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

    async def run(self) -> None:
        previous, then = self._cpu_seconds(), time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            current, now = self._cpu_seconds(), time.monotonic()
            busy = sum(max(0.0, t - previous.get(pid, 0.0)) for pid, t in current.items())
            self.samples.append(100.0 * busy / (now - then))
            previous, then = current, now

    def usage(self) -> CpuUsage | None:
        if not self.samples:
            return None
        return CpuUsage(sum(self.samples) / len(self.samples), max(self.samples))
