"""A running testbed: the network, the delay relay, verifier and drafter node processes in their namespaces, CPU quotas, and faults.

`with Testbed(spec) as bed:` brings everything up and always tears it down (also on Ctrl-C, SIGTERM or
an error while starting). Each verifier listens on its namespace's address with a bearer token (it is
beyond loopback); each drafter node reaches every verifier through its own relay link in the hub, so
its traffic crosses its shaped veth (bandwidth, tbf) and the relay (latency, jitter, loss). Users are
on the device: a drafter's OpenAI API listens on 127.0.0.1 inside its namespace, and the workload
driver enters that namespace to call it (`Testbed.http_json`, `edgespec.testbed.workload`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import threading
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgespec.demo.nodes import NodeProcess, NodeStartError, start_node, stop_all
from edgespec.testbed.cgroup import CpuQuota, delete_cpu_groups
from edgespec.testbed.check import require
from edgespec.testbed.netns import HUB_ADDRESS, PREFIX, Network, TestbedError, delete_netns, in_netns, netns_names
from edgespec.sim.links import LinkModel
from edgespec.testbed.relay import RelayLink, RelayProcess, link_model
from edgespec.testbed.spec import DrafterSpec, TestbedSpec

__all__ = ["Testbed", "VERIFIER_PORT", "parse_metrics", "teardown_all"]

VERIFIER_PORT = 7700
METRICS_PORT = 9700


def verifier_address(i: int) -> str:
    return f"10.88.1.{i + 1}"


def drafter_address(i: int) -> str:
    return f"10.88.2.{i + 1}"


def link_name(drafter: str, verifier: int) -> str:
    return f"{drafter}-v{verifier}"


def cpu_split(pin: bool) -> tuple[list[str], list[str]]:
    """`taskset` prefixes (verifier side, device side): the last CPU for verifiers, the rest for devices, the relay and users."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", str(cpus[-1])], ["taskset", "-c", ",".join(map(str, cpus[:-1]))]


@dataclass
class _Drafter:
    spec: DrafterSpec
    node: Optional[NodeProcess] = None
    quota: Optional[CpuQuota] = None


class Testbed:
    """Brings up a `TestbedSpec` (`start()` / `stop()`, or a `with` block) and injects faults into it."""

    __test__ = False  # not a pytest class

    def __init__(self, spec: TestbedSpec, *, tag: Optional[str] = None, say: Callable[[str], None] = lambda _: None,
                 start_timeout_s: float = 180.0) -> None:
        self.spec = spec
        self.tag = tag or secrets.token_hex(2)
        self.say = say
        self.start_timeout_s = start_timeout_s
        self.net = Network(self.tag)
        self.relay: Optional[RelayProcess] = None
        self.verifiers: list[Optional[NodeProcess]] = [None] * spec.verifiers
        self.drafters = {d.name: _Drafter(d) for d in spec.drafters}
        self._dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.tag}-"))
        self.token_file = self._dir / "token"
        self._old_handlers: dict[int, object] = {}  # signal -> the handler `start` replaced
        self.verifier_cpus, self.device_cpus = cpu_split(spec.serving.pin_verifiers)

    # ------------------------------------------------------------ up and down

    def __enter__(self) -> "Testbed":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """1. check the machine, 2. network, 3. verifiers, 4. relay links, 5. drafter nodes (with CPU quotas)."""
        require(cpu_quota=any(d.slowdown != 1.0 for d in self.spec.drafters))
        if _main_thread():  # SIGINT too: a testbed started with SIGINT ignored (a script's background job) still tears down
            self._old_handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.token_file.write_text(secrets.token_urlsafe(24))
            self.token_file.chmod(0o600)
            self.say(f"network {self.net.prefix}*: hub, {self.spec.verifiers} verifier(s), {len(self.drafters)} drafter node(s)")
            self._network()
            for i in range(self.spec.verifiers):
                self.start_verifier(i)
            self._relay()
            with ThreadPoolExecutor(max_workers=2) as pool:  # model loading overlaps on two cores
                list(pool.map(self.start_drafter, self.drafters))
        except NodeStartError as exc:
            self.stop()
            raise TestbedError(str(exc)) from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process, delete the namespaces and cgroups; safe to call twice."""
        stop_all([d.node for d in self.drafters.values() if d.node] + [v for v in self.verifiers if v], timeout_s=10.0)
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        self.net.down()
        delete_cpu_groups(self.net.prefix)
        for d in self.drafters.values():
            d.node = d.quota = None
        self.verifiers = [None] * self.spec.verifiers
        if self._old_handlers and _main_thread():
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            self._old_handlers = {}

    def _network(self) -> None:
        self.net.up()
        for i in range(self.spec.verifiers):
            self.net.add_node(f"v{i}", verifier_address(i))
        for i, d in enumerate(self.spec.drafters):
            self.net.add_node(d.name, drafter_address(i), uplink_bps=d.uplink.rate_bps, downlink_bps=d.downlink.rate_bps)

    def _relay(self) -> None:
        links = [RelayLink(link_name(d.name, v), verifier_address(v), VERIFIER_PORT, listen_host=HUB_ADDRESS, listen_port=0,
                           up=_delay_only(d.uplink), down=_delay_only(d.downlink), seed=1000 * i + v)
                 for i, d in enumerate(self.spec.drafters) for v in range(self.spec.verifiers)]
        self.relay = RelayProcess(links, prefix=self.net.exec_prefix("hub") + self.device_cpus).start()

    # ------------------------------------------------------------ nodes

    def start_verifier(self, i: int) -> NodeProcess:
        """Start (or restart) verifier `i` on its address, with the token."""
        s = self.spec.serving
        args = ["--host", verifier_address(i), "--port", str(VERIFIER_PORT), "--metrics-port", str(METRICS_PORT),
                "--auth-token-file", str(self.token_file), "--batch-window-ms", str(s.batch_window_ms),
                "--merge-share", str(s.merge_share),
                "--max-batch-tokens", str(s.max_batch_tokens), *s.extra_serve_args]
        if s.max_batch_size:
            args += ["--max-batch-size", str(s.max_batch_size)]
        if s.kv_budget_tokens:
            args += ["--kv-budget-tokens", str(s.kv_budget_tokens)]
        if s.target_dir is not None:
            args += ["--target", str(s.target_dir)]
        self.say(f"starting verifier v{i} at {verifier_address(i)}:{VERIFIER_PORT}")
        node = start_node(f"v{i}", "serve", args, threads=s.verifier_threads, timeout_s=self.start_timeout_s,
                          prefix=self.net.exec_prefix(f"v{i}") + self.verifier_cpus)
        self.verifiers[i] = node
        return node

    def start_drafter(self, name: str) -> NodeProcess:
        """Start (or restart) drafter node `name`: HTTP on 127.0.0.1 in its namespace, verifiers through its relay links."""
        d, s = self.drafters[name], self.spec.serving
        assert self.relay is not None
        verifiers = ",".join(f"{HUB_ADDRESS}:{self.relay.ports[link_name(name, v)]}" for v in range(self.spec.verifiers))
        args = ["--verifier", verifiers, "--http-host", "127.0.0.1", "--http-port", "0", "--node-id", name,
                "--auth-token-file", str(self.token_file), "--q-mode", s.q_mode, "--top-k", str(s.top_k),
                "--gamma-policy", s.gamma_policy, "--gamma", str(s.gamma), "--max-gamma", str(s.max_gamma),
                "--pipeline" if s.pipeline else "--no-pipeline", *s.extra_edge_args]
        if s.draft_dir is not None:
            args += ["--draft", str(s.draft_dir)]
        self.say(f"starting drafter {name} ({d.spec.group}: up {d.spec.uplink.rate_bps / 1e6:g} Mbit/s, "
                 f"{d.spec.uplink.latency_s * 1e3:g} ms one way, slowdown {d.spec.slowdown:g})")
        node = start_node(name, "edge", args, threads=s.drafter_threads, timeout_s=self.start_timeout_s,
                          prefix=self.net.exec_prefix(name) + self.device_cpus)
        if d.spec.slowdown != 1.0:
            d.quota = d.quota or CpuQuota(self.tag, name, s.drafter_threads / d.spec.slowdown)
            d.quota.add(node.proc.pid)
        d.node = node
        return node

    def kill(self, name: str) -> None:
        """SIGKILL a node (`v0`, `d1`, ...): no clean shutdown, as when a device loses power."""
        node = self._node(name)
        node.proc.kill()
        node.proc.wait()

    def _node(self, name: str) -> NodeProcess:
        node = self.verifiers[int(name[1:])] if name.startswith("v") else self.drafters[name].node
        if node is None:
            raise TestbedError(f"node {name} is not running")
        return node

    # ------------------------------------------------------------ faults on links

    def cut(self, name: str, down: bool = True) -> None:
        """Take a node's veth down (every packet lost, connections stall) or back up."""
        self.net.cut(name, down)

    # ------------------------------------------------------------ talking to nodes

    def http_json(self, name: str, path: str, body: Optional[dict] = None, timeout_s: float = 600.0) -> dict:
        """GET (or POST `body`) a node's HTTP endpoint from inside its namespace; drafters: the OpenAI API, verifiers: metrics."""
        node = self._node(name)
        port = node.port if node.role == "edge" else METRICS_PORT
        url = f"http://127.0.0.1:{port}{path}"  # both listen on loopback in their namespace (a verifier's /metrics: --metrics-host)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with in_netns(self.net.netns_of(name)), urllib.request.urlopen(request, timeout=timeout_s) as reply:
            raw = reply.read()
        return json.loads(raw) if path != "/metrics" else {"text": raw.decode()}

    def metrics(self, verifier: int = 0) -> dict[str, float]:
        """A verifier's Prometheus metrics as {name{labels}: value} (samples only)."""
        return parse_metrics(self.http_json(f"v{verifier}", "/metrics")["text"])

    def relay_stats(self) -> dict:
        assert self.relay is not None
        return self.relay.stats()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus exposition text as {name{labels}: value} (samples only)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _delay_only(link: LinkModel) -> LinkModel:
    """The relay's part of a link: latency, jitter, loss; tc does the bandwidth."""
    return link_model(link.latency_s, link.jitter_s, link.loss, link.retransmit_s)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def teardown_all(tag: Optional[str] = None) -> tuple[int, int]:
    """Remove the namespaces (and what runs in them) and cgroups of one testbed, or of every testbed; how many of each."""
    prefix = f"{PREFIX}{tag}-" if tag else PREFIX
    names = netns_names(prefix)
    for netns in names:
        delete_netns(netns)
    return len(names), delete_cpu_groups(prefix)
