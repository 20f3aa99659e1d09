"""Measure a serving verifier node and drafter node into a serving profile (edgespec-pair-profile/2): what a round costs beyond bare forwards.

Steps (docs/profile.md#serving-profile):
1. Bare forwards in this process, as `edgespec profile` does (a small grid: the pair profile's `draft` and
   `target`), and the acceptance curve of the setting for every answer length asked, from static-γ SD of the
   profile's own prompts (`PROFILE_PROMPTS`: not the benchmark prompts the testbed sends).
2. Serving nodes: a testbed (`edgespec.testbed`) with one verifier on a CPU of its own and four drafter nodes
   sharing the others, on links with no latency; or nodes already running (`Attach`).
3. The verifier probe (`edgespec.models.serving_probe`): target forwards in the serving process against batch
   size and new tokens, prefill of the first round, the open handshake, and the cost of a draft that arrives
   while a forward runs.
4. Users on the drafter nodes (streamed /v1/completions, as the testbed's users): one session on one node; one
   session on each of 2 and of 4 nodes at once (devices sharing a core; with 4 the verifier rarely idles); one
   node under each CPU quota asked. From the nodes' own counters (drafter /stats, verifier /metrics), the users'
   clocks and the host's CPU counters: the draft pass per drafted token, the verifier's time outside forwards,
   the drafter's and the wire's time per round outside the pass and the verifier (the steady round at the user,
   less the pass and the verifier's time for its verdict), the devices' CPU per round off that path, the HTTP
   request (user TTFT − engine TTFT), the first round, the pass and the devices' CPU per round against devices
   at once, what messages handled during a busy verifier's forwards cost, and the pass under each quota.
Nothing is fitted: every number is a median, a mean or a difference of measured times.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from edgespec.bench.sd_vs_ad import prompt_ids
from edgespec.models.profiling import AcceptanceSetting, ProfileGrid, _monotone, measure_acceptance, measure_step_profile
from edgespec.models.runtime import CausalLM, check_same_tokenizer
from edgespec.models.serving_probe import ProbeGrid, ProbeResult, probe_verifier
from edgespec.plan.pairprofile import AcceptanceCurve, PairProfile, shrunk_per_prompt
from edgespec.plan.profile import Profile, StepTable
from edgespec.plan.servingprofile import BatchSeries, ServingProfile, ServingSetting
from edgespec.testbed.cpuload import CpuLoad, LoadReport

__all__ = ["PROFILE_PROMPTS", "ServingPlan", "Attach", "measure_serving_pair", "plan_from_scenario", "serving_summary"]

Progress = Callable[[str, int, int], None]

# Python openings in the style of the bundled pair's training data, other than the benchmark prompts the testbed sends
PROFILE_PROMPTS = (
    "def parse_args(argv=None):\n    parser = argparse.ArgumentParser(",
    "class Node:\n    def __init__(self, value, next=None):\n",
    "with open(path) as f:\n    for line in f:\n",
    "import json\n\n\ndef load(path):\n",
    "    def __len__(self):\n        return ",
    "if __name__ == \"__main__\":\n    ",
    "def __eq__(self, other):\n    if not isinstance(other, ",
    "result = []\nfor key, value in sorted(",
    "import logging\n\nlogger = logging.getLogger(",
    "def flatten(items):\n    \"\"\"Flatten a nested list.\"\"\"\n",
    "    @property\n    def name(self):\n",
    "class Config(object):\n    \"\"\"Settings read from the environment.\"\"\"\n",
    "except KeyError:\n    raise ValueError(",
    "def test_parse_empty():\n    ",
    "    for i, item in enumerate(self.items):\n",
    "from collections import defaultdict\n\n\ndef group_by(",
)


@dataclass(frozen=True)
class ServingPlan:
    """What to measure: the drafting setting the nodes serve, answer lengths, batch sizes, quotas, and how much."""

    gamma: int = 4  # static γ of the drafter nodes (the acceptance curves' length)
    q_mode: str = "tokens"  # how q travels (greedy always sends tokens only)
    temperature: float = 0.0
    top_k: int = 8
    answer_tokens: tuple[int, ...] = (64,)  # one acceptance curve per length; the node phases use the first
    batch_sizes: tuple[int, ...] = (1, 2, 4)  # sessions drafted together on one drafter node
    slowdowns: tuple[float, ...] = ()  # CPU quotas of 1/slowdown core to measure a draft pass under (testbed only)
    rounds: int = 96  # about this many rounds per node phase
    batch_window_ms: Optional[float] = None  # the verifier's batch window (the scenario's); None: `edgespec serve`'s default
    max_host_load: float = 0.1  # cores other processes of the host may take during a node phase before it is measured again
    seed: int = 0
    prompts: tuple[str, ...] = PROFILE_PROMPTS
    probe: ProbeGrid = ProbeGrid()

    def __post_init__(self) -> None:
        if self.gamma < 1 or not self.answer_tokens or min(self.answer_tokens) < 2 or not self.batch_sizes:
            raise ValueError("need gamma >= 1, answer lengths >= 2 and at least one batch size")
        if self.q_mode not in ("full", "topk", "tokens") or self.temperature < 0 or any(s <= 1 for s in self.slowdowns):
            raise ValueError("q_mode must be full, topk or tokens; temperature >= 0; slowdowns > 1")
        if list(self.batch_sizes) != sorted(set(self.batch_sizes)) or self.batch_sizes[0] < 1:
            raise ValueError(f"batch_sizes must be strictly increasing integers >= 1, got {self.batch_sizes!r}")

    @property
    def probe_grid(self) -> ProbeGrid:
        """The probe's grid with γ + 1 among its new tokens."""
        return replace(self.probe, new_tokens=tuple(sorted({*self.probe.new_tokens, self.gamma + 1})), q_mode=self.q_mode,
                       temperature=self.temperature, top_k=self.top_k)

    @property
    def setting(self) -> AcceptanceSetting:
        if self.temperature == 0:
            return AcceptanceSetting("tokens", 0.0)
        return AcceptanceSetting(self.q_mode, self.temperature, self.top_k if self.q_mode == "topk" else None)


@dataclass(frozen=True)
class Attach:
    """Nodes already running: the verifier's protocol address and metrics URL, drafter nodes' HTTP addresses, the token."""

    verifier: str  # host:port
    metrics_url: str  # http://host:port/metrics
    drafters: tuple[str, ...]  # host:port of each drafter node's HTTP API
    token: Optional[str] = None


# ---------------------------------------------------------------- the nodes


class _Nodes:
    """Two ways to reach serving nodes (a testbed brought up here, or nodes given by address), behind one interface."""

    names: list[str]
    verifier_url: str
    token: Optional[str]

    def stats(self, name: str) -> dict: ...
    def metrics(self) -> dict[str, float]: ...
    def address(self, name: str) -> tuple[Optional[str], str, int]: ...  # (network namespace or None, host, port)
    def probe_netns(self) -> Optional[str]: ...
    def quota(self, name: str, slowdown: float): ...
    def device_cpus(self) -> Optional[list[int]]: ...  # the CPUs the devices (and relay and users) share, when known


class _TestbedNodes(_Nodes):
    def __init__(self, bed) -> None:
        from edgespec.testbed.bed import link_name
        from edgespec.testbed.netns import HUB_ADDRESS

        self.bed = bed
        self.names = list(bed.drafters)
        self.verifier_url = f"ws://{HUB_ADDRESS}:{bed.relay.ports[link_name(self.names[0], 0)]}"  # through d0's relay link
        self.token = bed.token_file.read_text().strip()

    def stats(self, name: str) -> dict:
        return self.bed.http_json(name, "/stats")

    def metrics(self) -> dict[str, float]:
        return self.bed.metrics()

    def address(self, name: str) -> tuple[Optional[str], str, int]:
        return self.bed.net.netns_of(name), "127.0.0.1", self.bed.drafters[name].node.port

    def probe_netns(self) -> Optional[str]:
        return self.bed.net.netns_of(self.names[0])

    def device_cpus(self) -> Optional[list[int]]:
        prefix = self.bed.device_cpus  # ["taskset", "-c", "0,1,..."] or [] when not pinned
        return [int(c) for c in prefix[-1].split(",")] if prefix else None

    @contextmanager
    def quota(self, name: str, slowdown: float):
        from edgespec.testbed.cgroup import CpuQuota

        group = CpuQuota(self.bed.tag, f"{name}-quota", 1.0 / slowdown)  # removed with the testbed's cgroups
        group.add(self.bed.drafters[name].node.proc.pid)
        yield


class _AttachedNodes(_Nodes):
    def __init__(self, attach: Attach) -> None:
        self.attach = attach
        self.names = [f"d{i}" for i in range(len(attach.drafters))]
        self.verifier_url = attach.verifier if "://" in attach.verifier else f"ws://{attach.verifier}"
        self.token = attach.token

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.read()

    def stats(self, name: str) -> dict:
        return json.loads(self._get(f"http://{self.attach.drafters[self.names.index(name)]}/stats"))

    def metrics(self) -> dict[str, float]:
        from edgespec.testbed.bed import parse_metrics

        return parse_metrics(self._get(self.attach.metrics_url).decode())

    def address(self, name: str) -> tuple[Optional[str], str, int]:
        host, _, port = self.attach.drafters[self.names.index(name)].rpartition(":")
        return None, host, int(port)

    def probe_netns(self) -> Optional[str]:
        return None

    def device_cpus(self) -> Optional[list[int]]:
        return None

    def quota(self, name: str, slowdown: float):
        raise RuntimeError("CPU quotas are measured on a testbed the profile brings up, not on attached nodes")


def _testbed_spec(plan: ServingPlan, drafters: int):
    from edgespec.sim.links import LinkModel
    from edgespec.testbed.spec import DrafterSpec, ServingSpec, TestbedSpec

    clean = LinkModel(1e9, 0.0)  # no latency: what a round costs beyond the link
    serving = ServingSpec(gamma_policy="static", gamma=plan.gamma, max_gamma=plan.gamma, q_mode=plan.q_mode, top_k=plan.top_k)
    if plan.batch_window_ms is not None:  # the verifier batches as the scenario's does
        serving = replace(serving, batch_window_ms=plan.batch_window_ms)
    return TestbedSpec(tuple(DrafterSpec(f"d{i}", "profile", clean, clean) for i in range(drafters)), 1, serving, "serving-profile")


# ---------------------------------------------------------------- users and phases


@dataclass
class _Phase:
    """One phase: the users' records and what the nodes counted meanwhile (drafter /stats and verifier /metrics deltas)."""

    records: list[dict]
    stats: dict[str, dict]
    metrics: dict[str, float]
    wall_s: float = 0.0
    host: Optional[LoadReport] = None


def _delta(before: dict, after: dict) -> dict:
    """after − before for the numeric counters (a counter missing before counts from 0)."""
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return {k: v - (before.get(k) if number(before.get(k)) else 0.0) for k, v in after.items() if number(v)}


def _metric(metrics: dict, name: str, node: Optional[str] = None) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name) and (node is None or f'node="{node}"' in k))


def _user_request(nodes: _Nodes, name: str, body: dict) -> dict:
    from edgespec.testbed.workload import complete

    _, host, port = nodes.address(name)
    start = time.perf_counter()
    got = complete(port, body, host=host)
    if got["error"]:
        raise RuntimeError(f"a profile request to drafter node {name} failed: {got['error']}")
    return {"node": name, "latency_s": time.perf_counter() - start, "ttft_s": (got["first_s"] or start) - start,
            "engine_ttft_s": got["stats"].get("ttft_s", 0.0), "engine_wall_s": got["stats"].get("wall_s", 0.0),
            "rounds": got["stats"].get("rounds", 0), "tokens": got["usage"].get("completion_tokens", 0)}


def _enter(netns: Optional[str]) -> None:
    if netns is not None:
        from edgespec.testbed.netns import enter_netns

        enter_netns(netns)


PHASE_TRIES = 3


class HostBusy(RuntimeError):
    """Other processes of this host kept disturbing a node phase: its times and CPU counts would not be the nodes' own."""


def _run_phase(nodes: _Nodes, users: dict[str, int], repeats: int, answer: int, plan: ServingPlan, first_prompt: int,
               phase: str, progress: Progress, say: Callable[[str], None] = lambda _: None) -> _Phase:
    """`_one_phase`, measured again while other processes of this host took more than `plan.max_host_load` cores meanwhile (their CPU
    would count as the devices', and their time would slow the nodes); HostBusy after PHASE_TRIES disturbed tries."""
    for attempt in range(1, PHASE_TRIES + 1):
        ph = _one_phase(nodes, users, repeats, answer, plan, first_prompt, phase, progress)
        if ph.host is None or ph.host.foreign_cores <= plan.max_host_load:
            return ph
        say(f"  {phase}: other processes of this host took {ph.host.foreign_cores:.2f} cores meanwhile; measured again "
            f"({attempt}/{PHASE_TRIES})")
    raise HostBusy(f"{phase}: other processes of this host took {ph.host.foreign_cores:.2f} cores (more than {plan.max_host_load:g}) "
                   f"in each of {PHASE_TRIES} tries; take the profile on a quiet host")


def _one_phase(nodes: _Nodes, users: dict[str, int], repeats: int, answer: int, plan: ServingPlan, first_prompt: int,
               phase: str, progress: Progress) -> _Phase:
    """`repeats` times: every user on every node sends one request at the same moment; the next starts when all are done."""
    before_stats = {n: nodes.stats(n) for n in users}
    before_metrics = nodes.metrics()
    start, load = time.perf_counter(), CpuLoad().start()
    records: list[dict] = []
    pools = {n: ThreadPoolExecutor(max_workers=count, initializer=_enter, initargs=(nodes.address(n)[0],)) for n, count in users.items()}
    k = first_prompt
    try:
        for r in range(repeats):
            futures = []
            for n, count in users.items():
                for _ in range(count):
                    body = {"prompt": plan.prompts[k % len(plan.prompts)], "max_tokens": answer, "ignore_eos": True,
                            "temperature": plan.temperature}  # unseeded, as the testbed's users: the setting's q mode
                    k += 1
                    futures.append(pools[n].submit(_user_request, nodes, n, body))
            records.extend(f.result() for f in futures)
            progress(phase, r + 1, repeats)
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
    wall_s, host = time.perf_counter() - start, load.stop()
    after_metrics = nodes.metrics()
    return _Phase(records, {n: _delta(before_stats[n], nodes.stats(n)) for n in users}, _delta(before_metrics, after_metrics), wall_s, host)


def _steady_round_s(records: Sequence[dict]) -> float:
    """A round after the first, as the users saw it: Σ (latency − TTFT) / Σ (rounds − 1)."""
    rounds = sum(r["rounds"] - 1 for r in records)
    return sum(r["latency_s"] - r["ttft_s"] for r in records) / rounds if rounds > 0 else 0.0


def _pass_s(stats: dict) -> tuple[float, float, float]:
    """(mean pass seconds, mean blocks per pass, mean γ per block) from a drafter's counter deltas."""
    passes = max(1.0, stats.get("draft_passes", 0.0))
    blocks = max(1.0, stats.get("drafted_blocks", 0.0))
    return stats.get("draft_time_s", 0.0) / passes, stats.get("drafted_blocks", 0.0) / passes, stats.get("drafted_tokens", 0.0) / blocks


def _device_cpu_per_round(nodes: _Nodes, ph: _Phase) -> float:
    """Every CPU-second the device CPUs spent in a phase (drafters, relay, users, less other processes of the host), per round; 0 unknown."""
    cpus, rounds = nodes.device_cpus(), sum(r["rounds"] for r in ph.records)
    if not cpus or ph.host is None or not rounds:
        return 0.0
    return max(0.0, (sum(ph.host.cpu_busy[c] for c in cpus) - ph.host.foreign_cores) * ph.wall_s / rounds)


def _repeats(plan: ServingPlan, answer: int, per_request_rounds: float) -> int:
    """Requests per user so a phase holds about `plan.rounds` rounds of one session."""
    return max(2, math.ceil(plan.rounds / max(1.0, per_request_rounds)))


# ---------------------------------------------------------------- the measurement


@dataclass
class _Measured:
    """The node phases reduced to the profile's numbers (seconds), plus cross-checks kept in meta."""

    pass_s: float = 0.0  # a lone session's draft pass (its prompt's draft prefill taken out)
    gamma: float = 0.0  # drafted tokens per block in that phase
    verifier_s: float = 0.0  # per verdict, outside forwards (the verifier's counters, real drafter traffic)
    drafter_s: float = 0.0  # per round: drafter node + wire, outside the pass and the verifier
    background_s: float = 0.0  # per round: the devices' CPU beyond the pass and drafter_s (work off the round's critical path)
    forward_s: float = 0.0  # target forwards per batch in that phase (a cross-check of the probe)
    request_s: float = 0.0
    first_round_s: float = 0.0
    shared: dict = field(default_factory=dict)  # devices with a session each → (mean pass, device CPU-seconds per round)
    quota: dict = field(default_factory=dict)  # slowdown → mean pass under that quota
    loaded: Optional[dict] = None  # the verifier kept busy: its forwards per batch, mean batch, busy share
    acceptance_in_run: dict = field(default_factory=dict)


def _lone_session(nodes: _Nodes, plan: ServingPlan, bare_draft: Profile, repeats: int, out: _Measured, progress: Progress,
                  say: Callable[[str], None]) -> None:
    """One session on the first drafter node: the pass, the framework time at both ends, the HTTP request, the first round."""
    d0 = nodes.names[0]
    ph = _run_phase(nodes, {d0: 1}, repeats, plan.answer_tokens[0], plan, 0, "drafter, one session", progress, say)
    raw_pass_s, _, out.gamma = _pass_s(ph.stats[d0])
    passes = max(1.0, ph.stats[d0].get("draft_passes", 0.0))
    prefill_s = len(ph.records) * float(bare_draft.prefill.time_s[0, 0])  # each request's first pass prefilled its prompt
    out.pass_s = max(1e-6, raw_pass_s - prefill_s / passes)
    batches = max(1.0, ph.metrics.get("edgespec_verifier_batch_size_count", 0.0))
    verdicts = max(1.0, _metric(ph.metrics, "edgespec_verifier_round_overhead_seconds_count", d0))
    out.forward_s = ph.metrics.get("edgespec_verifier_forward_seconds_total", 0.0) / batches
    out.verifier_s = _metric(ph.metrics, "edgespec_verifier_round_overhead_seconds_sum", d0) / verdicts
    out.drafter_s = max(0.0, _steady_round_s(ph.records) - raw_pass_s - out.forward_s - out.verifier_s)
    device_s = _device_cpu_per_round(nodes, ph)
    if device_s:  # the device CPUs' work beyond the pass and the drafter's part of the round
        out.background_s = max(0.0, device_s - raw_pass_s - out.drafter_s)
    out.request_s = statistics.fmean(max(0.0, r["ttft_s"] - r["engine_ttft_s"]) for r in ph.records)
    out.first_round_s = statistics.fmean(r["engine_ttft_s"] for r in ph.records)
    out.shared = {1: (raw_pass_s, device_s)}
    positions = [{k: v for k, v in ph.metrics.items() if f'position="{i}"' in k} for i in range(plan.gamma)]
    out.acceptance_in_run = {"drafts": _metric(ph.metrics, "spec_decode_num_drafts_total", d0),
                             "accepted_per_position": [_metric(m, "spec_decode_num_accepted_tokens_per_pos_total", d0) for m in positions]}
    say(f"  one session: pass {1e3 * out.pass_s:.2f} ms (γ {out.gamma:.2f}), forwards {1e3 * out.forward_s:.2f} ms, verifier framework "
        f"{1e3 * out.verifier_s:.2f} ms, drafter + wire {1e3 * out.drafter_s:.2f} ms per round (+ {1e3 * out.background_s:.2f} ms of device "
        f"CPU off the round's path); HTTP {1e3 * out.request_s:.2f} ms, first round {1e3 * out.first_round_s:.1f} ms")


def _devices(nodes: _Nodes, plan: ServingPlan, repeats: int, out: _Measured, progress: Progress, say: Callable[[str], None]) -> None:
    """k devices with a session each, started together (k = 2, 4): the pass and the device CPUs' work per round; with the
    most devices the verifier rarely idles, so drafts come and go during its forwards (`out.loaded`)."""
    counts = [k for k in (2, 4) if k <= len(nodes.names)]
    for k in counts:
        devices = {n: 1 for n in nodes.names[:k]}
        ph = _run_phase(nodes, devices, max(2, repeats // 2), plan.answer_tokens[0], plan, k * repeats, f"{k} devices on one core",
                        progress, say)
        out.shared[k] = (statistics.fmean(_pass_s(ph.stats[n])[0] for n in devices), _device_cpu_per_round(nodes, ph))
        say(f"  {k} devices on the device CPUs: pass {1e3 * out.shared[k][0]:.2f} ms, device CPU {1e3 * out.shared[k][1]:.2f} ms per round "
            f"(alone: {1e3 * out.shared[1][0]:.2f}, {1e3 * out.shared[1][1]:.2f})")
        if k == counts[-1]:
            batches = max(1.0, ph.metrics.get("edgespec_verifier_batch_size_count", 0.0))
            out.loaded = {"forward_s": ph.metrics.get("edgespec_verifier_forward_seconds_total", 0.0) / batches,
                          "batch": ph.metrics.get("edgespec_verifier_batch_size_sum", 0.0) / batches,
                          "busy": min(1.0, ph.metrics.get("edgespec_verifier_verify_seconds_sum", 0.0) / max(ph.wall_s, 1e-9)),
                          "devices": k}
            say(f"  the verifier busy {100 * out.loaded['busy']:.0f} % of the time: forwards {1e3 * out.loaded['forward_s']:.2f} ms per batch "
                f"of {out.loaded['batch']:.2f}")


def _quotas(nodes: _Nodes, plan: ServingPlan, repeats: int, out: _Measured, progress: Progress, say: Callable[[str], None]) -> None:
    """The last drafter node under each CPU quota asked, one session: its pass."""
    name = nodes.names[-1]
    for k, slowdown in enumerate(plan.slowdowns):
        with nodes.quota(name, slowdown):
            ph = _run_phase(nodes, {name: 1}, max(2, repeats // 2), plan.answer_tokens[0], plan, (7 + k) * repeats,
                            f"quota 1/{slowdown:g} core", progress, say)
        out.quota[slowdown] = _pass_s(ph.stats[name])[0]
        say(f"  under a quota of 1/{slowdown:g} core: pass {1e3 * out.quota[slowdown]:.2f} ms "
            f"(×{out.quota[slowdown] / out.shared[1][0]:.2f} of a whole core's)")


def _node_phases(nodes: _Nodes, plan: ServingPlan, bare_draft: Profile, per_request_rounds: float, progress: Progress,
                 say: Callable[[str], None]) -> _Measured:
    """Step 4 of the module docstring: warm-up, a lone session, 2 and 4 devices at once, each quota asked."""
    out = _Measured()
    _one_phase(nodes, {n: 1 for n in nodes.names}, 1, min(plan.answer_tokens[0], 16), plan, 1000, "node warm-up", progress)
    repeats = _repeats(plan, plan.answer_tokens[0], per_request_rounds)
    _lone_session(nodes, plan, bare_draft, repeats, out, progress, say)
    _devices(nodes, plan, repeats, out, progress, say)
    _quotas(nodes, plan, repeats, out, progress, say)
    return out


@contextmanager
def _serving_nodes(plan: ServingPlan, attach: Optional[Attach], say: Callable[[str], None]) -> Iterator[_Nodes]:
    if attach is not None:
        yield _AttachedNodes(attach)
        return
    from edgespec.testbed.bed import Testbed

    with Testbed(_testbed_spec(plan, 4), say=say) as bed:
        yield _TestbedNodes(bed)


def _probe(nodes: _Nodes, text: Sequence[int], grid: ProbeGrid, progress: Progress) -> ProbeResult:
    """The verifier probe in a thread of its own (inside the first drafter's namespace on a testbed)."""
    box: dict = {}

    def run() -> None:
        try:
            _enter(nodes.probe_netns())
            box["result"] = probe_verifier(nodes.verifier_url, nodes.token, text, grid, progress)
        except BaseException as exc:  # noqa: BLE001 — handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="serving-probe")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def _table(rows: Sequence[int], cols: Sequence[int], cell: Callable[[int, int], float]) -> StepTable:
    raw = np.array([[float(f"{cell(r, c):.4g}") for c in cols] for r in rows])  # [R, C] seconds
    return StepTable(np.array(rows, dtype=float), np.array(cols, dtype=float), _monotone(raw)[0])


def _overlaps(plan: ServingPlan, probe: ProbeResult, measured: _Measured, forward: Profile) -> tuple[float, float]:
    """The verifier's extra time per message handled during a forward: per draft arriving, per verdict leaving.

    With the verifier kept busy by real drafter nodes, each batch has about b drafts arriving during it and b verdicts
    (the last batch's) leaving during it, b the mean batch: the forwards' excess over the probe's unloaded forwards
    at that batch size, over the 2 · b · busy messages, is the cost per message (the same for both kinds). Without that
    phase (attached to one drafter node), the probe's two single-message measurements.
    """
    from edgespec.plan.profile import profile_step_time_s

    if measured.loaded is None or measured.loaded["batch"] <= 0:
        return probe.overlap_s, probe.verdict_overlap_s
    b = measured.loaded["batch"]
    excess = measured.loaded["forward_s"] - float(profile_step_time_s(forward, b, plan.gamma + 1))
    per_message = max(0.0, excess) / max(2.0 * b * measured.loaded["busy"], 1e-9)
    return per_message, per_message


def _serving_part(plan: ServingPlan, probe: ProbeResult, measured: _Measured, bare: PairProfile) -> ServingProfile:
    """The serving part: the probe's forwards and verifier framework; the node phases' pass, drafter framework, session costs."""
    g = plan.probe_grid
    forward = Profile(_table(g.batch_sizes, g.new_tokens, lambda b, n: probe.forward_s[b, n]),
                      _table(g.prefill_batch_sizes, g.prompt_tokens, lambda b, p: probe.prefill_s[b, p]),
                      bare.target.device, bare.target.model, bare.target.dtype, probe.context_tokens,
                      {"measured": "target forwards in the serving verifier process (edgespec.models.serving_probe)"})
    # the pass per drafted token of a lone session, along the bare draft table's batch shape
    step = bare.draft.step
    ratio = measured.pass_s / max(measured.gamma, 1e-9) / float(step.time_s[0, 0])
    draft = Profile(StepTable(step.batch_sizes, step.tokens, step.time_s * ratio), bare.draft.prefill, bare.draft.device, bare.draft.model,
                    bare.draft.dtype, bare.draft.context_tokens,
                    {"measured": "draft pass per drafted token of a lone session in the serving drafter node; other batch sizes "
                                 "along the bare table's shape; prefill: bare forwards", "serving_to_bare": round(ratio, 4)})
    ks = tuple(sorted(measured.shared))
    shared = BatchSeries(ks, tuple(measured.shared[k][0] for k in ks)) if len(ks) > 1 else None
    shared_cpu = BatchSeries(ks, tuple(measured.shared[k][1] for k in ks)) if len(ks) > 1 and all(measured.shared[k][1] for k in ks) else None
    quota = BatchSeries(tuple(sorted(measured.quota)), tuple(measured.quota[s] for s in sorted(measured.quota))) if measured.quota else None
    overlap_s, verdict_overlap_s = _overlaps(plan, probe, measured, forward)
    sizes = tuple(sorted(probe.overhead_s))
    # the verifier's time per batch outside forwards: the probe's shape over batch sizes, at the level real drafter traffic showed
    level = measured.verifier_s / probe.overhead_s[sizes[0]] if probe.overhead_s[sizes[0]] > 0 else 1.0
    return ServingProfile(
        setting=ServingSetting(plan.setting.q_mode, plan.temperature, plan.gamma, plan.setting.top_k),
        target_forward=forward, draft_step=draft,
        verifier_framework=BatchSeries(sizes, tuple(probe.overhead_s[b] * level for b in sizes)),
        drafter_framework=BatchSeries.constant(measured.drafter_s), drafter_background_s=measured.background_s,
        overlap_s=overlap_s, verdict_overlap_s=verdict_overlap_s, open_s=probe.open_s, request_s=measured.request_s, first_round_s=measured.first_round_s,
        shared_core=shared, shared_core_cpu=shared_cpu, quota=quota)


def _bare_grid(plan: ServingPlan) -> ProfileGrid:
    return ProfileGrid(batch_sizes=plan.batch_sizes, verify_tokens=tuple(sorted({1, 2, 3, plan.gamma + 1})),
                       prefill_batch_sizes=(1, 2), prefill_tokens=(16, 64), context_tokens=64, warmup=1, repeats=5,
                       settings=(plan.setting,), max_gamma=plan.gamma, new_tokens=max(plan.answer_tokens), seed=plan.seed)


def _acceptance(draft: CausalLM, target: CausalLM, plan: ServingPlan, prompts: list[list[int]], grid: ProfileGrid,
                progress: Progress) -> AcceptanceCurve:
    """The setting's curve for one answer length (`grid.new_tokens`), with each prompt's own curve (the spread across requests)."""
    rounds: dict = {}
    curve = measure_acceptance(draft, target, plan.setting, prompts, grid, progress, per_sequence=rounds)
    per_prompt = shrunk_per_prompt([rounds[k] for k in sorted(rounds) if any(g > 0 for g, _ in rounds[k])], curve.per_position)
    return replace(curve, answer_tokens=grid.new_tokens, per_prompt=per_prompt)


def _bare(draft: CausalLM, target: CausalLM, plan: ServingPlan, prompts: list[list[int]], progress: Progress) -> PairProfile:
    """Step 1: bare forwards on a small grid, and the setting's acceptance for every answer length asked."""
    grid = _bare_grid(plan)
    with torch.inference_mode():
        draft_profile = measure_step_profile(draft, grid, grid.draft_tokens, "draft", progress)
        target_profile = measure_step_profile(target, grid, grid.verify_tokens, "target", progress)
        curves = tuple(_acceptance(draft, target, plan, prompts, replace(grid, new_tokens=n), progress) for n in plan.answer_tokens)
    return PairProfile(draft_profile, target_profile, curves)


def measure_serving_pair(draft: CausalLM, target: CausalLM, plan: ServingPlan = ServingPlan(), *, attach: Optional[Attach] = None,
                         progress: Optional[Progress] = None, say: Callable[[str], None] = lambda _: None,
                         command: str = "") -> PairProfile:
    """Steps 1-4 of the module docstring: a pair profile (edgespec-pair-profile/2) with the serving part."""
    from edgespec.models.profiling import _meta

    check_same_tokenizer(draft, target)
    report = progress or (lambda _phase, _done, _total: None)
    start = time.perf_counter()
    prompts = prompt_ids(target, plan.prompts)
    say("1. bare forwards and acceptance, in this process")
    bare = _bare(draft, target, plan, prompts, report)
    curve = bare.acceptance[0]
    per_request_rounds = plan.answer_tokens[0] / curve.tokens_per_round(min(plan.gamma, curve.max_gamma))
    text = [t for ids in prompts for t in ids] * 8
    say("2. serving nodes" + (" (attached)" if attach else ": a testbed, the verifier on a CPU of its own, four drafter nodes"))
    with _serving_nodes(plan, attach, say) as nodes:
        load = CpuLoad().start()  # what else this host ran while the nodes were measured
        say("3. verifier probe")
        probe = _probe(nodes, text, plan.probe_grid, report)
        say(f"  open handshake {1e3 * probe.open_s:.2f} ms; a draft arriving during a forward +{1e3 * probe.overlap_s:.2f} ms, "
            f"a verdict going out during one +{1e3 * probe.verdict_overlap_s:.2f} ms")
        say("4. users on the drafter nodes")
        measured = _node_phases(nodes, plan, bare.draft, per_request_rounds, report, say)
        host = load.stop()
    if host is not None:
        say(f"  meanwhile other processes used {host.foreign_cores:.2f} cores of this host")
    serving = _serving_part(plan, probe, measured, bare)
    meta = _meta(_bare_grid(plan), prompts, command, time.perf_counter() - start)
    meta.update(answer_tokens=list(plan.answer_tokens), serving_nodes="attached" if attach else "testbed",
                host_load=host.to_dict() if host is not None else None,
                cross_check={"lone_session_forward_per_batch_s": measured.forward_s, "probe_forward_s": probe.forward_s[1, plan.gamma + 1]
                              if (1, plan.gamma + 1) in probe.forward_s else None, "probe_verifier_overhead_s": {str(b): v for b, v in probe.overhead_s.items()},
                             "lone_session_verifier_overhead_s": measured.verifier_s, "acceptance_counters": measured.acceptance_in_run,
                             "verifier_kept_busy": measured.loaded, "probe_overlap_s": probe.overlap_s,
                             "probe_verdict_overlap_s": probe.verdict_overlap_s})
    return PairProfile(bare.draft, bare.target, bare.acceptance, meta, serving)


# ---------------------------------------------------------------- what to measure, from a scenario


def plan_from_scenario(path, **overrides) -> ServingPlan:
    """The serving setting of a simulator scenario (the testbed's): static γ, q encoding, temperature, answer lengths, quotas, the
    verifier's batch window, and (closed loop) the sessions open at the verifier while the probe measures a batch."""
    from edgespec.plan.scenario import load_scenario
    from edgespec.sim.scenario import load_sim_config

    config = load_sim_config(path)
    spec = load_scenario(path).system.speculation
    q_mode = {"ids": "tokens"}.get(spec.q_mode, spec.q_mode)
    plan = ServingPlan(gamma=config.speculation.gamma, q_mode=q_mode, temperature=_temperature_of(path), top_k=spec.top_k or 8,
                       answer_tokens=tuple(sorted({c.output_tokens for c in config.classes})),
                       slowdowns=tuple(sorted({g.slowdown for g in config.drafters if g.slowdown > 1})),
                       batch_window_ms=config.verifiers.window_s * 1e3)
    if config.workload.kind == "closed":  # the verifier has every closed-loop user's session open while it verifies a batch
        users = config.workload.users_per_node * sum(g.count for g in config.drafters)
        plan = replace(plan, probe=replace(plan.probe, open_sessions=users))
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def _temperature_of(path) -> float:
    """`[sim] profile_temperature`: the sampling temperature the scenario's users ask for (0: greedy)."""
    import tomllib
    from pathlib import Path

    return float(tomllib.loads(Path(path).read_text(encoding="utf-8")).get("sim", {}).get("profile_temperature", 1.0))  # the simulator's default


def serving_summary(pp: PairProfile) -> dict:
    """The serving part in a few numbers (milliseconds), for tables and the --json line."""
    sp = pp.serving
    ms = lambda x: round(1e3 * float(x), 3)  # noqa: E731
    gamma = sp.setting.gamma
    bare = float(pp.target.step.time_s[0, list(pp.target.step.tokens).index(gamma + 1)]) if gamma + 1 in pp.target.step.tokens else None
    return {
        "target_forward_ms_batch1": ms(sp.target_forward.step.time_s[0, list(sp.target_forward.step.tokens).index(gamma + 1)]),
        "target_forward_bare_ms_batch1": None if bare is None else ms(bare),
        "draft_pass_ms": ms(float(sp.draft_step.step.time_s[0, 0]) * gamma),
        "draft_pass_bare_ms": ms(float(pp.draft.step.time_s[0, 0]) * gamma),
        "verifier_framework_ms": {str(b): ms(v) for b, v in zip(sp.verifier_framework.batch_sizes, sp.verifier_framework.seconds)},
        "drafter_framework_ms": ms(sp.drafter_framework.seconds[0]), "drafter_background_ms": ms(sp.drafter_background_s),
        "overlap_ms": ms(sp.overlap_s), "verdict_overlap_ms": ms(sp.verdict_overlap_s), "open_ms": ms(sp.open_s), "request_ms": ms(sp.request_s), "first_round_ms": ms(sp.first_round_s),
        "devices_pass_ms": {} if sp.shared_core is None else {str(k): ms(v) for k, v in zip(sp.shared_core.batch_sizes, sp.shared_core.seconds)},
        "devices_cpu_per_round_ms": {} if sp.shared_core_cpu is None else
        {str(k): ms(v) for k, v in zip(sp.shared_core_cpu.batch_sizes, sp.shared_core_cpu.seconds)},
        "core_efficiency": {str(k): round(sp.core_efficiency(k), 3) for k in (sp.shared_core.batch_sizes if sp.shared_core else (1,))},
        "quota_pass_ms": {} if sp.quota is None else {f"{s:g}": ms(v) for s, v in zip(sp.quota.batch_sizes, sp.quota.seconds)},
        "acceptance": [{"answer_tokens": c.answer_tokens, "setting": c.label, "per_position": list(c.per_position)} for c in pp.acceptance],
    }
