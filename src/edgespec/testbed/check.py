"""What this machine lets the testbed do: root, iproute2, network namespaces, veth, bridges, tbf, netem, cgroup v1 CPU quotas."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Optional

from edgespec.testbed.cgroup import cpu_quota_available
from edgespec.testbed.netns import PREFIX, TestbedError, run_cmd, tbf_args

__all__ = ["Capabilities", "probe", "require"]


@dataclass(frozen=True)
class Capabilities:
    """The probe's findings: `missing` is None when the testbed can run, else the first reason it cannot."""

    missing: Optional[str]
    netem: bool  # the kernel has netem (delay/loss in tc); without it the user-space relay adds them
    cpu_quota: Optional[str]  # None when cgroup v1 CPU quotas work, else why not (slow devices need them)

    def summary(self) -> str:
        if self.missing:
            return f"testbed unavailable: {self.missing}"
        quota = "cgroup v1 CPU quota" if self.cpu_quota is None else f"no CPU quota ({self.cpu_quota})"
        delay = "netem" if self.netem else "no netem (delay, jitter and loss come from the user-space relay)"
        return f"testbed available: namespaces, veth, bridge, tbf; {delay}; {quota}"


def _probe_network() -> tuple[Optional[str], bool]:
    """Build and delete a scratch namespace pair; the first step that fails is the reason."""
    scratch = f"{PREFIX}probe{uuid.uuid4().hex[:6]}"
    steps = [
        (["ip", "netns", "add", scratch], "cannot create network namespaces"),
        (["ip", "-n", scratch, "link", "add", "pa", "type", "veth", "peer", "name", "pb"], "no veth support"),
        (["ip", "-n", scratch, "link", "add", "pbr", "type", "bridge"], "no bridge support"),
        (["tc", "-n", scratch, "qdisc", "add", "dev", "pa", "root", *tbf_args(1e6)], "no tbf qdisc in tc"),
    ]
    try:
        for args, reason in steps:
            done = run_cmd(args, check=False)
            if done.returncode != 0:
                return f"{reason} (`{' '.join(args)}`: {(done.stderr or done.stdout).strip()})", False
        netem = run_cmd(["tc", "-n", scratch, "qdisc", "add", "dev", "pb", "root", "netem", "delay", "1ms"], check=False)
        return None, netem.returncode == 0
    finally:
        run_cmd(["ip", "netns", "del", scratch], check=False)


def probe() -> Capabilities:
    """Check, without leaving anything behind, what the testbed can use here."""
    if os.geteuid() != 0:
        return Capabilities("must run as root (network namespaces, tc and cgroups need it)", False, "not root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return Capabilities(f"`{tool}` not found (install iproute2)", False, None)
    missing, netem = _probe_network()
    return Capabilities(missing, netem, cpu_quota_available())


def require(*, cpu_quota: bool = False) -> Capabilities:
    """`probe()`, raising `TestbedError` with the reason when the testbed (or a CPU quota, if asked) is unavailable."""
    caps = probe()
    if caps.missing:
        raise TestbedError(f"the testbed cannot run here: {caps.missing}")
    if cpu_quota and caps.cpu_quota:
        raise TestbedError(f"slow devices need a CPU quota, which is unavailable: {caps.cpu_quota}")
    return caps
