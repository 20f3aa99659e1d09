"""The batching policy of a simulated verifier node (window, max or the planner's DP), and the DP's view of a queued session."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edgespec.plan.scenario import LinkSpec, ServingSystem, SpecConfig
from edgespec.policy.batching import DpBatching, DpBatchingConfig, MaxBatching, TaskState, WindowBatching
from edgespec.sim.config import SimConfig, VerifierConfig
from edgespec.sim.costs import NodeCost

if TYPE_CHECKING:
    from edgespec.server.scheduler import BatchPolicy, QueuedDraft

__all__ = ["make_batching", "session_task_state", "plan_system"]


def make_batching(config: VerifierConfig, sim: SimConfig) -> "BatchPolicy":
    """The policy a verifier's `Scheduler` asks, by `config.batching`: "window", "max" or "dp"."""
    if config.batching == "max":
        return MaxBatching(config.max_batch_size)
    if config.batching == "dp":
        dp = DpBatchingConfig(max_batch_size=config.max_batch_size, max_tasks=config.dp_max_tasks,
                              default_gamma=sim.speculation.gamma)
        return DpBatching(config.plan_system or plan_system(sim), session_task_state, dp)
    return WindowBatching(window_s=config.window_s, max_batch_size=config.max_batch_size or 2**31)


def session_task_state(pending: "QueuedDraft") -> TaskState:
    """A queued simulated draft as a task: its session's context so far, tokens still to emit, α and the draft's γ.

    α is the acceptance the simulator draws the session's rounds with (its i.i.d. α, or the geometric
    mean of its per-position curve over the draft's γ positions): an oracle value, where a real
    verifier would estimate it from the session's verdicts.
    """
    s = pending.item
    curve = s.curve
    if len(curve) == 1:
        alpha = curve[0]
    else:
        n = max(min(s.gamma, len(curve)), 1)
        head = curve[:n]
        alpha = math.exp(sum(math.log(a) for a in head) / n) if min(head) > 0 else 0.0
    return TaskState(s.key, s.prompt_tokens + s.emitted, s.output_tokens - s.emitted, alpha, gamma=s.gamma)


def plan_system(sim: SimConfig) -> ServingSystem:
    """The DP's latency model derived from a run: its draft and verify nodes, the drafter groups' mean link, its wire sizes.

    Needs node costs (`NodeCost`, the roofline model or a measured profile). The link is the
    count-weighted mean over drafter groups of rates and latencies (plus mean jitter) (the planner has one link); the
    drafter is the reference device (slowdown 1); drafted tokens cost `draft_bytes_per_token` each
    (as q_mode "ids" with that id size, so a forwarded prompt is costed at that size per token too).
    """
    if not (isinstance(sim.draft_cost, NodeCost) and isinstance(sim.verify_cost, NodeCost)):
        raise ValueError('batching "dp" needs node costs (NodeCost) or VerifierConfig.plan_system')
    groups = sim.drafters
    total = sum(g.count for g in groups)

    def mean(get) -> float:
        return sum(get(g) * g.count for g in groups) / total

    spec = sim.speculation
    link = LinkSpec(mean(lambda g: g.uplink.rate_bps), mean(lambda g: g.downlink.rate_bps), mean(lambda g: g.uplink.latency_s + g.uplink.jitter_s))
    wire = SpecConfig(alpha=min(spec.acceptance[0], 0.999), q_mode="ids", id_bytes=spec.draft_bytes_per_token,
                      verdict_bytes=spec.verdict_bytes, message_overhead_bytes=spec.message_overhead_bytes)
    return ServingSystem(sim.draft_cost.node, sim.verify_cost.node, link, wire)
