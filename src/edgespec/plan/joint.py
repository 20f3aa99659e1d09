"""The joint optimiser of batching, speculation length and bandwidth shares, and the baselines it is compared with.

Alternation (block-coordinate descent on the makespan):
1. given the bandwidth shares, upload times are fixed and the DP (edgespec.plan.dp) returns the
   best batching and γ per batch over contiguous sorted batches;
2. given the plan, `min_makespan_shares` returns the bandwidth shares with the least makespan
   (each task's upload deadline is the plan's end minus the serving time left from its batch on).
Neither step can increase the makespan, so the loop stops when it no longer falls. It is run
from several starting shares (min-max, uniform, and optionally the baselines' shares) and the
best result is kept; started from a baseline's shares it can only improve on that baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from edgespec.plan.bandwidth import Channels, allocate, channels_from_tasks, min_makespan_shares, upload_times_s
from edgespec.plan.dp import (
    DpResult,
    SearchSpace,
    max_batching_blocks,
    plan_batches,
    plan_fixed_partition,
    search_space,
)
from edgespec.plan.latency import PlanLatency, PlannedBatch, evaluate_plan
from edgespec.plan.scenario import Scenario

__all__ = ["Strategy", "PlanResult", "PlanReport", "BASELINES", "optimise", "plan_scenario"]


@dataclass(frozen=True)
class Strategy:
    """How to plan: bandwidth rule (joint | min_max | min_sum | uniform), batching (dp | max), γ values and pipelining."""

    bandwidth: str = "joint"
    batching: str = "dp"
    gammas: Optional[tuple[int, ...]] = None  # None: the scenario's gamma_min..gamma_max
    pipeline: Optional[str] = None  # None: the scenario's pipeline mode


@dataclass(frozen=True, eq=False)
class PlanResult:
    """A planned deployment: batches in execution order, bandwidth per task (scenario order), upload times, latency."""

    name: str
    strategy: Strategy
    batches: tuple[PlannedBatch, ...]
    bandwidth_hz: np.ndarray
    upload_s: np.ndarray
    latency: PlanLatency
    iterations: int
    elapsed_s: float

    @property
    def makespan_s(self) -> float:
        """Predicted total serving latency (the last task's completion time)."""
        return self.latency.makespan_s


@dataclass(frozen=True, eq=False)
class PlanReport:
    """The joint plan and each baseline, by name."""

    joint: PlanResult
    baselines: dict[str, PlanResult] = field(default_factory=dict)

    def reductions_pct(self) -> dict[str, float]:
        """Latency reduction of the joint plan against each baseline, in percent of the baseline."""
        return {
            name: 100.0 * (1.0 - self.joint.makespan_s / base.makespan_s) for name, base in self.baselines.items()
        }


def _baselines(scenario: Scenario) -> dict[str, Strategy]:
    fixed = (scenario.planner.fixed_gamma,)
    bw = scenario.planner.bandwidth
    return {
        "uniform_bandwidth": Strategy(bandwidth="uniform"),
        "max_batching": Strategy(bandwidth=bw, batching="max"),
        "fixed_gamma": Strategy(bandwidth=bw, gammas=fixed),
        "no_pipeline": Strategy(bandwidth=bw, pipeline="never"),
        "ad": Strategy(bandwidth=bw, gammas=(0,)),
        "uniform_all": Strategy(bandwidth="uniform", batching="max", gammas=fixed),
    }


BASELINES = (
    "uniform_bandwidth",  # DP batching and γ, but b_k = B/K
    "max_batching",  # one batch (or as few as the cap and memory allow), best γ, joint bandwidth
    "fixed_gamma",  # DP batching, joint bandwidth, γ = fixed_gamma everywhere
    "no_pipeline",  # no draft/verify overlap
    "ad",  # autoregressive serving on the verifier (γ = 0), DP batching, joint bandwidth
    "uniform_all",  # uniform bandwidth + max batching + fixed γ: nothing optimised
)


class _Solver:
    """Plans batches for given upload times under one strategy (DP or a fixed max-batching partition)."""

    def __init__(self, scenario: Scenario, space: SearchSpace, batching: str) -> None:
        self.scenario, self.space = scenario, space
        self.blocks = max_batching_blocks(scenario.system, scenario.tasks, space) if batching == "max" else None
        if batching not in ("dp", "max"):
            raise ValueError(f"unknown batching {batching!r}; expected dp or max")

    def __call__(self, upload_s: np.ndarray) -> DpResult:
        sc = self.scenario
        if self.blocks is None:
            return plan_batches(sc.system, sc.tasks, upload_s, self.space)
        return plan_fixed_partition(sc.system, sc.tasks, upload_s, self.space, self.blocks)


def _tails_s(scenario: Scenario, batches: Sequence[PlannedBatch], upload_s: np.ndarray) -> np.ndarray:
    """Per task, the serving time from its batch's start to the end of the plan (no upload waits)."""
    lat = evaluate_plan(scenario.system, scenario.tasks, batches, upload_s)
    index = {t.task_id: i for i, t in enumerate(scenario.tasks)}
    tails = np.zeros(len(scenario.tasks))
    remaining = 0.0
    for batch, timing in zip(reversed(batches), reversed(lat.batches)):
        remaining += timing.detail.total_s
        for tid in batch.task_ids:
            tails[index[tid]] = remaining
    return tails


def _alternate(scenario: Scenario, ch: Channels, solve: _Solver, shares: np.ndarray, max_iter: int):
    """Block-coordinate descent from `shares`; returns (plan, shares, iterations)."""
    total_hz = scenario.uplink.bandwidth_hz
    plan = solve(upload_times_s(ch, shares))
    best = (plan, shares)
    iterations = 1
    for _ in range(max_iter):
        tails = _tails_s(scenario, best[0].batches, upload_times_s(ch, best[1]))
        new_shares, makespan = min_makespan_shares(ch, tails, total_hz)
        if not makespan < best[0].makespan_s * (1 - 1e-12):
            break
        best = (DpResult(best[0].batches, makespan), new_shares)
        plan = solve(upload_times_s(ch, new_shares))
        iterations += 1
        if not plan.makespan_s < best[0].makespan_s * (1 - 1e-12):
            break
        best = (plan, new_shares)
    return best[0], best[1], iterations


def optimise(
    scenario: Scenario,
    strategy: Strategy = Strategy(),
    name: str = "joint",
    warm_starts: Sequence[np.ndarray] = (),
) -> PlanResult:
    """Plan a scenario under a strategy; 'joint' bandwidth alternates with batching from min-max, uniform and `warm_starts`."""
    t0 = time.perf_counter()
    space = search_space(scenario.planner, strategy.gammas, strategy.pipeline)
    ch = channels_from_tasks(scenario.tasks, scenario.uplink)
    total_hz = scenario.uplink.bandwidth_hz
    solve = _Solver(scenario, space, strategy.batching)
    if strategy.bandwidth == "joint":
        starts = [allocate("min_max", ch, total_hz), allocate("uniform", ch, total_hz), *warm_starts]
        results = [_alternate(scenario, ch, solve, np.asarray(s, float), scenario.planner.max_iterations) for s in starts]
        plan, shares, iterations = min(results, key=lambda r: r[0].makespan_s)
    else:
        shares = allocate(strategy.bandwidth, ch, total_hz)
        plan, iterations = solve(upload_times_s(ch, shares)), 1
    upload = upload_times_s(ch, shares)
    latency = evaluate_plan(scenario.system, scenario.tasks, plan.batches, upload)
    return PlanResult(name, strategy, plan.batches, shares, upload, latency, iterations, time.perf_counter() - t0)


def plan_scenario(scenario: Scenario, baselines: bool = True) -> PlanReport:
    """The joint plan and every baseline; the joint search also starts from each baseline's shares, so it is never worse."""
    base = {name: optimise(scenario, strat, name) for name, strat in _baselines(scenario).items()} if baselines else {}
    strategy = Strategy(bandwidth=scenario.planner.bandwidth)
    warm = [b.bandwidth_hz for b in base.values()] if strategy.bandwidth == "joint" else []
    joint = optimise(scenario, strategy, "joint", warm_starts=_unique(warm))
    return PlanReport(joint, base)


def _unique(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for a in arrays:
        if not any(a.shape == b.shape and np.allclose(a, b, rtol=1e-12, atol=0) for b in out):
            out.append(a)
    return out


def with_planner(scenario: Scenario, **changes) -> Scenario:
    """A copy of the scenario with planner settings changed (for sweeps and tests)."""
    return replace(scenario, planner=replace(scenario.planner, **changes))
