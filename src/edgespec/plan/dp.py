"""Batching and per-batch speculation length by dynamic programming over sorted tasks, with brute-force references.

Tasks are sorted (by expected rounds O_k / E(α_k, γ_ref), then prompt length, then id) and a plan
is a split of that order into consecutive batches served one after another, each with its own γ
and pipelining choice. With V(0) = 0 and R(i..j) the last upload among tasks i..j,

    V(j) = min over i < j, γ, pipelined of  max(V(i), R(i+1..j)) + Cost(i+1..j, γ, pipelined)

is the least makespan of the first j tasks. The recursion is exact over the plans it searches
(contiguous batches in the sorted order) because max(V, R) + Cost is non-decreasing in V.

It is optimal over *all* partitions and batch orders when the tasks differ only in output length
(same α, prompt length and upload time) and Cost is non-decreasing in batch size and in the
longest output: any batch family can be replaced by consecutive sorted blocks of the same sizes,
whose longest outputs are no larger. Otherwise it is a heuristic over that subspace; the
brute-force functions below measure the gap (docs/planner.md).

Cost: K·min(K, max batch)·|γ range|·|pipeline options| batch evaluations, vectorised per j.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from edgespec.plan.latency import PlannedBatch, batch_breakdown, batch_cost_s, expected_tokens, rounds_needed
from edgespec.plan.scenario import PlannerConfig, ServingSystem, Task

__all__ = [
    "SearchSpace",
    "search_space",
    "DpResult",
    "sort_order",
    "plan_batches",
    "plan_fixed_partition",
    "max_batching_blocks",
    "timeline_makespan_s",
    "brute_force_contiguous",
    "brute_force_all_partitions",
]


@dataclass(frozen=True)
class SearchSpace:
    """What the planner may choose per batch: γ values, pipelining options, and a batch-size cap (0 = none)."""

    gammas: tuple[int, ...]
    pipeline: tuple[bool, ...] = (False, True)
    max_batch_size: int = 0


def search_space(cfg: PlannerConfig, gammas: Optional[Sequence[int]] = None, pipeline: Optional[str] = None) -> SearchSpace:
    """The search space of a planner configuration, optionally with γ or the pipeline mode overridden."""
    g = tuple(range(cfg.gamma_min, cfg.gamma_max + 1)) if gammas is None else tuple(gammas)
    mode = pipeline or cfg.pipeline
    pipes = {"auto": (False, True), "always": (True,), "never": (False,)}[mode]
    return SearchSpace(g, pipes, cfg.max_batch_size)


@dataclass(frozen=True)
class DpResult:
    """A plan's batches (execution order) and its makespan for the given upload times."""

    batches: tuple[PlannedBatch, ...]
    makespan_s: float


def sort_order(tasks: Sequence[Task], space: SearchSpace) -> np.ndarray:
    """Indices of tasks by expected rounds at the middle γ of the range, then prompt length, then id."""
    gamma_ref = space.gammas[len(space.gammas) // 2]
    key = [
        (t.output_tokens / float(expected_tokens(t.alpha, gamma_ref)), t.input_tokens, t.task_id) for t in tasks
    ]
    return np.array(sorted(range(len(tasks)), key=lambda k: key[k]), dtype=int)


def _reverse_cummax(x: np.ndarray) -> np.ndarray:
    """out[i] = max(x[i:]) along axis 0."""
    return np.maximum.accumulate(x[::-1], axis=0)[::-1]


def _block_costs(system: ServingSystem, sizes, max_in, max_out, sum_in, rounds, space: SearchSpace) -> np.ndarray:
    """Costs of blocks × γ × pipeline option, shape (L, G, P)."""
    col = lambda v: np.asarray(v, dtype=float)[:, None, None]  # noqa: E731
    gam = np.asarray(space.gammas)[None, :, None]
    pipes = np.asarray(space.pipeline)[None, None, :]
    return batch_cost_s(system, col(sizes), col(max_in), col(max_out), col(sum_in), rounds[:, :, None], gam, pipes)


def _task_arrays(tasks: Sequence[Task], order: np.ndarray, space: SearchSpace):
    inputs = np.array([tasks[k].input_tokens for k in order], dtype=float)
    outputs = np.array([tasks[k].output_tokens for k in order], dtype=float)
    alphas = np.array([tasks[k].alpha for k in order], dtype=float)
    rounds = rounds_needed(outputs[:, None], alphas[:, None], np.asarray(space.gammas)[None, :])
    return inputs, outputs, rounds


def plan_batches(
    system: ServingSystem,
    tasks: Sequence[Task],
    ready_s: Sequence[float],
    space: SearchSpace,
    order: Optional[Sequence[int]] = None,
) -> DpResult:
    """The DP: least-makespan split of the sorted tasks into consecutive batches with γ and pipelining per batch."""
    order = sort_order(tasks, space) if order is None else np.asarray(order, dtype=int)
    k_total = len(order)
    inputs, outputs, rounds = _task_arrays(tasks, order, space)
    ready = np.asarray(ready_s, dtype=float)[order]
    cum_in = np.concatenate([[0.0], np.cumsum(inputs)])
    cap = space.max_batch_size or k_total
    n_pipe = len(space.pipeline)
    value = np.full(k_total + 1, np.inf)
    value[0] = 0.0
    start = np.zeros(k_total + 1, dtype=int)
    option = np.zeros(k_total + 1, dtype=int)
    for j in range(1, k_total + 1):
        lo = max(0, j - cap)
        costs = _block_costs(
            system,
            j - np.arange(lo, j),
            _reverse_cummax(inputs[lo:j]),
            _reverse_cummax(outputs[lo:j]),
            cum_in[j] - cum_in[lo:j],
            _reverse_cummax(rounds[lo:j]),
            space,
        ).reshape(j - lo, -1)
        best_opt = np.argmin(costs, axis=1)
        best = costs[np.arange(j - lo), best_opt]
        cand = np.maximum(value[lo:j], _reverse_cummax(ready[lo:j])) + best
        i = int(np.argmin(cand))
        value[j], start[j], option[j] = cand[i], lo + i, best_opt[i]
    if not np.isfinite(value[k_total]):
        raise ValueError("no feasible plan: some batch cannot fit in device memory")
    batches: list[PlannedBatch] = []
    j = k_total
    while j > 0:
        i, opt = start[j], option[j]
        gamma, pipe = space.gammas[opt // n_pipe], space.pipeline[opt % n_pipe]
        ids = tuple(tasks[k].task_id for k in order[i:j])
        batches.append(PlannedBatch(ids, int(gamma), bool(pipe)))
        j = i
    return DpResult(tuple(reversed(batches)), float(value[k_total]))


def timeline_makespan_s(costs_s: Sequence[float], ready_s: Sequence[float]) -> float:
    """End of the last batch when batch m starts at max(end of m−1, ready_m) and lasts costs_s[m]."""
    end = 0.0
    for cost, ready in zip(costs_s, ready_s):
        end = max(end, ready) + cost
    return end


def plan_fixed_partition(
    system: ServingSystem,
    tasks: Sequence[Task],
    ready_s: Sequence[float],
    space: SearchSpace,
    blocks: Sequence[Sequence[int]],
) -> DpResult:
    """Best γ and pipelining per batch for a given ordered partition (task indices); optimal as the timeline is monotone."""
    batches, costs, readies = [], [], []
    ready = np.asarray(ready_s, dtype=float)
    for block in blocks:
        idx = np.asarray(block, dtype=int)
        inputs, outputs, rounds = _task_arrays(tasks, idx, space)
        c = _block_costs(
            system, [len(idx)], [inputs.max()], [outputs.max()], [inputs.sum()], rounds.max(axis=0, keepdims=True), space
        ).reshape(-1)
        opt = int(np.argmin(c))
        n_pipe = len(space.pipeline)
        batches.append(
            PlannedBatch(tuple(tasks[k].task_id for k in idx), int(space.gammas[opt // n_pipe]), bool(space.pipeline[opt % n_pipe]))
        )
        costs.append(float(c[opt]))
        readies.append(float(ready[idx].max()))
    return DpResult(tuple(batches), timeline_makespan_s(costs, readies))


def max_batching_blocks(system: ServingSystem, tasks: Sequence[Task], space: SearchSpace) -> list[list[int]]:
    """Max batching: fill batches greedily in sorted order up to the cap and device memory (one batch when both allow)."""
    order = sort_order(tasks, space)
    cap = space.max_batch_size or len(order)
    blocks: list[list[int]] = []
    current: list[int] = []
    for k in order:
        trial = current + [int(k)]
        if current and (len(trial) > cap or not _fits_some_option(system, tasks, trial, space)):
            blocks.append(current)
            trial = [int(k)]
        current = trial
    blocks.append(current)
    return blocks


def _fits_some_option(system: ServingSystem, tasks: Sequence[Task], block: Sequence[int], space: SearchSpace) -> bool:
    idx = np.asarray(block, dtype=int)
    inputs, outputs, rounds = _task_arrays(tasks, idx, space)
    c = _block_costs(system, [len(idx)], [inputs.max()], [outputs.max()], [inputs.sum()], rounds.max(axis=0, keepdims=True), space)
    return bool(np.isfinite(c).any())


# ----------------------------------------------------------------------------- brute force references


def _compositions(n: int) -> Iterator[list[tuple[int, int]]]:
    """All splits of range(n) into consecutive non-empty blocks, as (start, end) pairs."""
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        yield list(zip(bounds[:-1], bounds[1:]))


def _set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """All partitions of a list into non-empty blocks (Bell-number many)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1 :]
        yield [[first]] + part


class _CostCache:
    """Scalar batch costs from the readable per-batch model (batch_breakdown), memoised per (tasks, γ, pipelined)."""

    def __init__(self, system: ServingSystem, tasks: Sequence[Task]) -> None:
        self.system, self.tasks, self.memo = system, tasks, {}

    def __call__(self, block: tuple[int, ...], gamma: int, pipelined: bool) -> float:
        key = (frozenset(block), gamma, pipelined)
        if key not in self.memo:
            self.memo[key] = batch_breakdown(self.system, [self.tasks[k] for k in block], gamma, pipelined).total_s
        return self.memo[key]


def _search(blocks_iter, cost: _CostCache, ready: np.ndarray, space: SearchSpace, all_orders: bool):
    best_value, best_plan = np.inf, None
    options = list(itertools.product(space.gammas, space.pipeline))
    cap = space.max_batch_size or len(ready)
    for blocks in blocks_iter:
        if any(len(b) > cap for b in blocks):
            continue
        for ordered in itertools.permutations(blocks) if all_orders else [blocks]:
            readies = [float(ready[list(b)].max()) for b in ordered]
            for choice in itertools.product(options, repeat=len(ordered)):
                costs = [cost(tuple(b), g, p) for b, (g, p) in zip(ordered, choice)]
                value = timeline_makespan_s(costs, readies)
                if value < best_value:
                    best_value, best_plan = value, (ordered, choice)
    return best_value, best_plan


def _as_batches(tasks: Sequence[Task], plan) -> tuple[PlannedBatch, ...]:
    ordered, choice = plan
    return tuple(PlannedBatch(tuple(tasks[k].task_id for k in b), int(g), bool(p)) for b, (g, p) in zip(ordered, choice))


def brute_force_contiguous(
    system: ServingSystem, tasks: Sequence[Task], ready_s: Sequence[float], space: SearchSpace
) -> DpResult:
    """Every split of the DP's sorted order into consecutive batches × every γ and pipelining per batch."""
    order = [int(k) for k in sort_order(tasks, space)]
    blocks = ([order[a:b] for a, b in comp] for comp in _compositions(len(order)))
    value, plan = _search(blocks, _CostCache(system, tasks), np.asarray(ready_s, dtype=float), space, all_orders=False)
    return DpResult(_as_batches(tasks, plan), float(value))


def brute_force_all_partitions(
    system: ServingSystem, tasks: Sequence[Task], ready_s: Sequence[float], space: SearchSpace, all_orders: bool = True
) -> DpResult:
    """Every set partition × (every batch order if `all_orders`) × every γ and pipelining per batch."""
    blocks = _set_partitions(list(range(len(tasks))))
    value, plan = _search(blocks, _CostCache(system, tasks), np.asarray(ready_s, dtype=float), space, all_orders)
    return DpResult(_as_batches(tasks, plan), float(value))
