"""Device speed for testbed nodes: a cgroup v1 CPU quota (`cpu.cfs_quota_us`) that makes a process a slower device.

A drafter with `slowdown` s gets 1/s of one core, enforced every `PERIOD_US` (10 ms: short, so a 5 ms
draft step is stretched evenly rather than run at full speed and then stalled for a whole period).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

from edgespec.testbed.netns import PREFIX, TestbedError

__all__ = ["CPU_ROOT", "PERIOD_US", "CpuQuota", "cpu_quota_available", "delete_cpu_groups"]

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000


def cpu_quota_available(root: Path = CPU_ROOT) -> Optional[str]:
    """None when cgroup v1 CPU quotas can be used here, else why not."""
    if not (root / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {root} (cpu.cfs_quota_us missing)"
    if not os.access(root, os.W_OK):
        return f"cannot create cgroups under {root} (not writable; run as root)"
    return None


class CpuQuota:
    """One cgroup `estb-<tag>-<name>` holding processes to `cores` CPUs (`add(pid)`, `delete()`)."""

    def __init__(self, tag: str, name: str, cores: float, root: Path = CPU_ROOT) -> None:
        if not cores > 0:
            raise ValueError(f"cores must be > 0, got {cores}")
        problem = cpu_quota_available(root)
        if problem:
            raise TestbedError(problem)
        self.path = root / f"{PREFIX}{tag}-{name}"
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(max(1_000, int(PERIOD_US * cores))))

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Total time the group spent throttled so far."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":
                return int(value) / 1e9
        return 0.0

    def delete(self) -> None:
        _remove_group(self.path)


def _remove_group(path: Path) -> None:
    """Kill what is left in a group and remove it."""
    try:
        pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def delete_cpu_groups(prefix: str = PREFIX, root: Path = CPU_ROOT) -> int:
    """Remove every testbed cgroup whose name starts with `prefix`; how many there were."""
    if not root.is_dir():
        return 0
    groups = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix)]
    for path in groups:
        _remove_group(path)
    return len(groups)
