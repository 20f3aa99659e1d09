"""The testbed's network: one namespace per node, veth pairs into a hub namespace with a bridge, `tc tbf` bandwidth per direction.

Layout for a testbed tagged T (every name carries the prefix `estb-T`, so cleanup finds everything):

    estb-T-hub   bridge `br0` 10.88.0.1/16, the user-space relay (delay, jitter, loss), one veth end per node
    estb-T-vI    verifier I: `eth0` 10.88.1.(I+1)/16, unshaped (a wired backhaul)
    estb-T-dI    drafter I:  `eth0` 10.88.2.(I+1)/16, uplink tbf on its `eth0`, downlink tbf on the hub's end

All addresses live inside these namespaces: the host's own interfaces, routes and addresses are never
touched. Commands run through `ip` and `tc` (iproute2); a failure raises `TestbedError` with the command
and what it printed.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

__all__ = [
    "PREFIX", "TestbedError", "NodeLink", "Network", "netns_names", "delete_netns", "enter_netns", "in_netns", "run_cmd",
    "tbf_args", "HUB_ADDRESS",
]

PREFIX = "estb-"
HUB_ADDRESS = "10.88.0.1"
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/var/run/netns"


class TestbedError(RuntimeError):
    """A testbed command failed, or this machine lacks something the testbed needs."""

    __test__ = False  # not a pytest class


def run_cmd(args: Sequence[str], *, check: bool = True, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    """Run one iproute2 command; raise `TestbedError` with its output when it fails and `check` is set."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise TestbedError(f"{args[0]} is not installed (the testbed needs iproute2: ip and tc)") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(args)}` did not finish within {timeout_s:.0f} s") from None
    if check and done.returncode != 0:
        raise TestbedError(f"`{' '.join(args)}` failed: {(done.stderr or done.stdout).strip()}")
    return done


def tbf_args(rate_bps: float) -> list[str]:
    """`tc ... tbf` arguments for a rate: a burst of 2 ms of traffic (at least two MTUs) and up to 2 s of queue (no tail drops)."""
    rate = max(int(rate_bps), 8_000)
    burst_bytes = max(3_200, rate // 8 // 500)
    limit_bytes = max(64 * 1024, rate // 8 * 2)
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst_bytes), "limit", str(limit_bytes)]


@dataclass(frozen=True)
class NodeLink:
    """One node's place on the network: its namespace, address, the hub's end of its veth, and its shaping."""

    name: str  # node name, e.g. "d0" or "v1"
    netns: str
    address: str
    hub_ifname: str
    uplink_bps: Optional[float] = None  # node → hub; None = unshaped
    downlink_bps: Optional[float] = None  # hub → node; None = unshaped


def netns_names(prefix: str = PREFIX) -> list[str]:
    """The network namespaces whose name starts with `prefix`."""
    done = run_cmd(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def netns_pids(netns: str) -> list[int]:
    """Processes running in a namespace."""
    done = run_cmd(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def delete_netns(netns: str) -> None:
    """Kill what runs in a namespace, then delete it (its veth ends go with it)."""
    for pid in netns_pids(netns):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    run_cmd(["ip", "netns", "del", netns], check=False)


def enter_netns(netns: str) -> None:
    """Move the calling thread into `netns` for good: sockets it creates from now on belong there (setns(2) is per thread)."""
    _setns_path(os.path.join(_NETNS_DIR, netns), netns)


def _setns_path(path: str, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise TestbedError(f"no network namespace {what}") from None
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise TestbedError(f"cannot enter network namespace {what}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


@contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the body with the calling thread in `netns`, then return it to the namespace it was in."""
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        enter_netns(netns)
        try:
            yield
        finally:
            ctypes.CDLL(None, use_errno=True).setns(own, _CLONE_NEWNET)
    finally:
        os.close(own)


class Network:
    """Creates and deletes one testbed's namespaces, veth pairs, bridge and shaping (`up()`, `shape()`, `cut()`, `down()`)."""

    def __init__(self, tag: str) -> None:
        if not tag.isalnum() or len(tag) > 6:
            raise ValueError(f"testbed tag must be 1-6 letters or digits, got {tag!r}")
        self.tag = tag
        self.prefix = f"{PREFIX}{tag}-"
        self.hub = f"{self.prefix}hub"
        self.nodes: dict[str, NodeLink] = {}

    # ------------------------------------------------------------ building

    def up(self) -> None:
        """The hub namespace with its bridge; nodes are added with `add_node`."""
        if shutil.which("ip") is None or shutil.which("tc") is None:
            raise TestbedError("the testbed needs iproute2 (ip and tc) on PATH")
        self.down()  # what a crashed run with this tag left behind
        run_cmd(["ip", "netns", "add", self.hub])
        hub = ["ip", "-n", self.hub]
        run_cmd([*hub, "link", "set", "lo", "up"])
        run_cmd([*hub, "link", "add", "br0", "type", "bridge"])
        run_cmd([*hub, "addr", "add", f"{HUB_ADDRESS}/16", "dev", "br0"])
        run_cmd([*hub, "link", "set", "br0", "up"])

    def add_node(self, name: str, address: str, *, uplink_bps: Optional[float] = None, downlink_bps: Optional[float] = None) -> NodeLink:
        """A namespace for node `name` at `address`, wired to the hub's bridge, shaped per direction."""
        netns = f"{self.prefix}{name}"
        hub_if = f"t{self.tag}{name}"[:15]
        link = NodeLink(name, netns, address, hub_if, uplink_bps, downlink_bps)
        run_cmd(["ip", "netns", "add", netns])
        self.nodes[name] = link
        node = ["ip", "-n", netns]
        run_cmd(["ip", "-n", self.hub, "link", "add", hub_if, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run_cmd(["ip", "-n", self.hub, "link", "set", hub_if, "master", "br0"])
        run_cmd(["ip", "-n", self.hub, "link", "set", hub_if, "up"])
        run_cmd([*node, "link", "set", "lo", "up"])
        run_cmd([*node, "addr", "add", f"{address}/16", "dev", "eth0"])
        run_cmd([*node, "link", "set", "eth0", "up"])
        self.shape(name, uplink_bps, downlink_bps)
        return link

    def shape(self, name: str, uplink_bps: Optional[float], downlink_bps: Optional[float]) -> None:
        """Set (or clear, with None) a node's bandwidth per direction."""
        link = self.nodes[name]
        for netns, ifname, rate in ((link.netns, "eth0", uplink_bps), (self.hub, link.hub_ifname, downlink_bps)):
            run_cmd(["tc", "-n", netns, "qdisc", "del", "dev", ifname, "root"], check=False)
            if rate is not None:
                run_cmd(["tc", "-n", netns, "qdisc", "add", "dev", ifname, "root", *tbf_args(rate)])
        self.nodes[name] = NodeLink(link.name, link.netns, link.address, link.hub_ifname, uplink_bps, downlink_bps)

    def cut(self, name: str, down: bool) -> None:
        """Take a node's link down (every packet to and from it is lost) or bring it back up."""
        link = self.nodes[name]
        run_cmd(["ip", "-n", self.hub, "link", "set", link.hub_ifname, "down" if down else "up"])

    def wire_bytes(self, name: str) -> tuple[int, int]:
        """Bytes a node's interface sent and received so far, as on the wire: Ethernet/IP/TCP headers and ACKs included."""
        stats = json.loads(run_cmd(["ip", "-n", self.nodes[name].netns, "-s", "-j", "link", "show", "eth0"]).stdout)[0]["stats64"]
        return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])

    def exec_prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program in a node's namespace (`hub` for the hub)."""
        netns = self.hub if name == "hub" else self.nodes[name].netns
        return ["ip", "netns", "exec", netns]

    def netns_of(self, name: str) -> str:
        return self.hub if name == "hub" else self.nodes[name].netns

    # ------------------------------------------------------------ tearing down

    def down(self) -> None:
        """Delete every namespace of this testbed (also ones a crashed run left behind)."""
        for netns in netns_names(self.prefix):
            delete_netns(netns)
        self.nodes.clear()
