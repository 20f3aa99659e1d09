"""CPU time this machine spent on processes other than a measurement's own, over a stretch of time: how much a shared host disturbed it.

Timings on a loaded host read slow: `CpuLoad.start()` snapshots every process's CPU time (`/proc/PID/stat`,
user + system) and each CPU's busy time (`/proc/stat`); `stop(ours)` gives the CPU-seconds per second of
wall time that went to anything but `ours` (pids and their descendants): every CPU's busy time less our
processes' (so processes that came and went meanwhile count, and so does kernel work such as the
network stack's on our behalf), and each CPU's busy share. Linux only; elsewhere it reports nothing (None).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["CpuLoad", "LoadReport", "process_cpu_s"]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class LoadReport:
    """Over `wall_s`: CPU-seconds per second used by other processes (`foreign_cores`) and each CPU's busy share."""

    wall_s: float
    foreign_cores: float
    cpu_busy: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"wall_s": round(self.wall_s, 2), "foreign_cores": round(self.foreign_cores, 3),
                "cpu_busy": [round(b, 3) for b in self.cpu_busy]}


def _processes() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds so far, its own and its reaped children's) for every process readable now."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) * _TICK_S)
    return out


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far; 0 when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def _cpus() -> list[tuple[float, float]]:
    """(busy, total) jiffies of each CPU."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in values]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            out.append((sum(v[:8]) - idle, sum(v[:8])))
    return out


class CpuLoad:
    """`start()`, then `stop(ours)`: what processes other than `ours` (and their children) took meanwhile."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._procs: dict[int, tuple[int, float]] = {}
        self._cpus: list[tuple[float, float]] = []

    def start(self) -> "CpuLoad":
        if Path("/proc/stat").exists():
            self._procs, self._cpus = _processes(), _cpus()
        self._t0 = time.perf_counter()
        return self

    def stop(self, ours: Iterable[int] = ()) -> Optional[LoadReport]:
        if not self._cpus:
            return None
        wall = time.perf_counter() - self._t0
        now, cpus = _processes(), _cpus()
        mine = {os.getpid(), *ours}
        grew = True
        while grew:  # descendants of ours are ours
            grew = False
            for pid, (parent, _) in now.items():
                if parent in mine and pid not in mine:
                    mine.add(pid)
                    grew = True
        ours_s = sum(cpu - self._procs.get(pid, (0, 0.0))[1] for pid, (_, cpu) in now.items() if pid in mine)
        busy_s = sum(b1 - b0 for (b0, _), (b1, _) in zip(self._cpus, cpus)) * _TICK_S
        busy = tuple((b1 - b0) / max(1, t1 - t0) for (b0, t0), (b1, t1) in zip(self._cpus, cpus))
        return LoadReport(wall, max(0.0, busy_s - ours_s) / wall if wall > 0 else 0.0, busy)
