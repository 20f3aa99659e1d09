"""The simulator's frozen configuration: request classes, drafter-node groups, verifiers, workload, speculation, SLOs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from edgespec.plan.scenario import ServingSystem
from edgespec.plan.servingprofile import BatchSeries
from edgespec.sim.costs import NodeCost, StepCost
from edgespec.sim.links import LinkModel

if TYPE_CHECKING:
    from edgespec.policy.gamma import GammaPolicy

__all__ = [
    "MODES",
    "ROUTINGS",
    "BATCHINGS",
    "RequestClass",
    "DrafterGroup",
    "VerifierConfig",
    "Workload",
    "Speculation",
    "Slo",
    "ServingCosts",
    "SimConfig",
]

MODES = ("sd", "ad", "device")  # distributed SD; server-only AD; device-only draft model (lossy, for reference)
ROUTINGS = ("round_robin", "jsq", "power_of_two")
BATCHINGS = ("window", "max", "dp")  # window/size; max batching; the planner's DP over the queued drafts


@dataclass(frozen=True)
class RequestClass:
    """A kind of request: prompt and answer lengths, its share of arrivals, and optionally its own acceptance α."""

    name: str
    input_tokens: int
    output_tokens: int
    weight: float = 1.0
    alpha: Optional[float] = None  # None: the drafter group's α, else the scenario's acceptance curve


@dataclass(frozen=True)
class DrafterGroup:
    """`count` identical drafter nodes: device slowdown on draft compute, links to the verifiers, optional α override."""

    name: str
    count: int
    uplink: LinkModel
    downlink: LinkModel
    slowdown: float = 1.0  # draft step time × slowdown (a weaker device)
    alpha: Optional[float] = None
    weight: float = 1.0  # share of open-loop arrivals per node of this group


@dataclass(frozen=True)
class VerifierConfig:
    """`count` identical verifier nodes: batching (window/size, max or dp), token limit per batch, KV budget, retry after busy."""

    count: int = 1
    batching: str = "window"
    window_s: float = 0.002
    max_batch_size: int = 0  # 0 = no limit
    max_batch_tokens: int = 2048
    kv_budget_tokens: int = 0  # 0 = unlimited; a session reserves prompt + answer tokens for its whole life
    busy_retry_s: float = 0.05  # a drafter refused for KV tries again (possibly elsewhere) after this
    dp_max_tasks: int = 16  # batching "dp": queued drafts planned per decision (edgespec.policy.batching.DpBatching)
    merge_share: float = 0.5  # the scheduler's merge wait = this share of a forward's fixed cost, as the real node (0: off)
    # batching "dp": the latency model the DP plans with; None derives it from the run's node costs
    # (edgespec.sim.batching.plan_system); a scenario file sets it from its [drafter], [verifier] and [link]
    plan_system: Optional[ServingSystem] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Workload:
    """Open loop (`poisson` at `rate_per_s`, or a `trace` of arrival times) or `closed` (users per node with think time).

    Closed loop issues `requests` in all, each to whichever user finishes first; with `requests_per_user`
    every user issues exactly that many instead, each request's class, think time and acceptance drawn
    from that user's own streams — so policies compared on one seed serve the same requests.
    """

    kind: str = "poisson"
    requests: int = 100
    rate_per_s: float = 10.0
    users_per_node: int = 1
    think_time_s: float = 0.0
    trace_s: tuple[float, ...] = ()
    requests_per_user: int = 0  # closed loop only; 0: `requests` in all


@dataclass(frozen=True)
class Speculation:
    """Mode, γ policy, bytes on the wire, and the acceptance model (per-position curve, or i.i.d. α when a class/group sets one)."""

    mode: str = "sd"
    gamma_policy: str = "static"
    gamma: int = 4
    max_gamma: int = 8
    load_aware: bool = False  # the policy behind the speculation gate ("adaptive" always is)
    probe_every: int = 0  # the gate's probe period (0: no probes)
    confidence_threshold: float = 0.3
    confidence_noise: float = 0.5  # SLED: draft confidence = 1 − ((1−w)·u + w·v), u the acceptance draw, v fresh noise
    acceptance: tuple[float, ...] = (0.7,)  # a_i = P(position i accepted | positions < i accepted); the last repeats
    # measured curves of single prompts: each request draws one (its own stream) instead of `acceptance`, as requests on
    # different prompts accept differently; () uses `acceptance` for every request
    acceptance_mix: tuple[tuple[float, ...], ...] = ()
    draft_bytes_per_token: float = 52.0  # id + top-K (ids, probs) per drafted token
    prompt_bytes_per_token: float = 4.0
    message_overhead_bytes: float = 64.0
    verdict_bytes: float = 24.0


@dataclass(frozen=True)
class Slo:
    """Service-level objectives for goodput: a request counts when it meets every one that is set."""

    ttft_s: Optional[float] = None
    tpot_s: Optional[float] = None
    e2e_s: Optional[float] = None


@dataclass(frozen=True)
class ServingCosts:
    """What serving nodes cost beyond their forwards, from a serving profile (`edgespec profile --serving`, docs/profile.md).

    Each term is a measurement and changes nothing when it is zero (the default):
    - `verifier_framework`: per batch of n drafts, the verifier's time outside target forwards (it keeps the verifier busy);
    - `drafter_framework`: per round of a draft pass, by the sessions drafted together in it, the drafter node's and the
      wire's time outside the draft pass and the verifier (the verdicts applied and streamed, the next blocks encoded, the
      relay hops): work on the device's core;
    - `drafter_background`: per round and session, the device's CPU work off the round's critical path (streaming to the
      user, the user's client, relay work): on shared cores it loads them (a job nobody waits for), else it changes nothing;
    - `overlap_s`: per draft that arrives while the verifier is busy, its extra time (one core and one interpreter for the
      event loop and the forward thread), added to the batch the draft joins;
    - `verdict_overlap_s`: per verdict of a batch that goes out while the next batch runs (back to back), added to that one;
    - `open_s`: the session's open handshake beyond the link (the open goes up with the prompt, `session opened` comes
      back, and the first block leaves only then);
    - `request_s`: the user's HTTP request reaching the engine and its first streamed chunk (before the node sees it);
    - `core_efficiency`: the share of a shared core's capacity left to work while several devices run on it;
    - `quota_caps`: (slowdown, share of a core) measured under CPU quotas; other slowdowns get 1/slowdown.
    With a serving profile the open handshake is a protocol step of its own: its round trip costs the link's latency
    even when `open_s` is zero.
    """

    verifier_framework: BatchSeries = BatchSeries.constant(0.0)
    drafter_framework: BatchSeries = BatchSeries.constant(0.0)
    drafter_background_s: float = 0.0
    overlap_s: float = 0.0
    verdict_overlap_s: float = 0.0
    open_s: float = 0.0
    request_s: float = 0.0
    core_efficiency: float = 1.0
    quota_caps: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if min(self.drafter_background_s, self.overlap_s, self.verdict_overlap_s, self.open_s, self.request_s, *self.verifier_framework.seconds, *self.drafter_framework.seconds) < 0:
            raise ValueError("serving costs must be >= 0")
        if not 0 < self.core_efficiency <= 1:
            raise ValueError(f"core_efficiency must be in (0, 1], got {self.core_efficiency}")

    def cap(self, slowdown: float) -> float:
        """The share of a core a device of this slowdown (a CPU quota of 1/slowdown core) gets."""
        for s, share in self.quota_caps:
            if abs(s - slowdown) < 1e-9:
                return share
        return 1.0 / slowdown


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulation run needs (built from a scenario file by `edgespec.sim.scenario`)."""

    classes: tuple[RequestClass, ...]
    drafters: tuple[DrafterGroup, ...]
    draft_cost: StepCost
    verify_cost: StepCost
    verifiers: VerifierConfig = VerifierConfig()
    workload: Workload = Workload()
    speculation: Speculation = Speculation()
    slo: Slo = Slo()
    routing: str = "jsq"
    seed: int = 0
    name: str = "scenario"
    record_rounds: bool = False  # keep every round's timestamps (for traces); off by default for speed
    serving: Optional[ServingCosts] = None  # serving nodes' costs beyond forwards (a serving profile); None: forwards only
    device_cores: int = 0  # cores all drafter devices share (the testbed: the CPUs the verifier does not have); 0: one each
    # a γ policy per session from its request class and drafter group (e.g. per-group static γ, or a
    # recording policy); None: `speculation.gamma_policy` by name
    policy_factory: Optional[Callable[[RequestClass, DrafterGroup], "GammaPolicy"]] = field(default=None, compare=False)
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def request_count(self) -> int:
        """How many requests a run issues: `workload.requests`, or each closed-loop user's `requests_per_user`."""
        w = self.workload
        if w.requests_per_user:
            return w.requests_per_user * w.users_per_node * sum(g.count for g in self.drafters)
        return len(w.trace_s[: w.requests or None]) if w.kind == "trace" else w.requests

    def __post_init__(self) -> None:
        if self.speculation.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.speculation.mode!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.verifiers.batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, got {self.verifiers.batching!r}")
        if self.verifiers.dp_max_tasks < 1:
            raise ValueError(f"dp_max_tasks must be >= 1, got {self.verifiers.dp_max_tasks}")
        if self.verifiers.batching == "dp" and self.verifiers.plan_system is None and not (
                isinstance(self.draft_cost, NodeCost) and isinstance(self.verify_cost, NodeCost)):
            raise ValueError('batching "dp" plans with the latency model of NodeSpecs: give VerifierConfig.plan_system, '
                             'or node costs (NodeCost) rather than constants')
        if self.device_cores < 0:
            raise ValueError(f"device_cores must be >= 0, got {self.device_cores}")
        if not self.classes or not self.drafters:
            raise ValueError("need at least one request class and one drafter group")
        if self.workload.kind not in ("poisson", "closed", "trace"):
            raise ValueError(f"workload kind must be poisson, closed or trace, got {self.workload.kind!r}")
        if self.workload.requests_per_user < 0 or (self.workload.requests_per_user and self.workload.kind != "closed"):
            raise ValueError(f"requests_per_user must be >= 0 and is for closed loop only, got {self.workload.requests_per_user} "
                             f"with kind {self.workload.kind!r}")
