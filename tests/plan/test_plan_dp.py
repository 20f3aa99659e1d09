"""The batching/γ DP against brute force: over the plans it searches, and over all partitions where it is provably optimal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgespec.plan.dp import (
    SearchSpace,
    brute_force_all_partitions,
    brute_force_contiguous,
    max_batching_blocks,
    plan_batches,
    plan_fixed_partition,
    sort_order,
)
from edgespec.plan.latency import evaluate_plan
from edgespec.plan.scenario import LinkSpec, ModelShape, NodeSpec, ServingSystem, SpecConfig, Task

from plan_helpers import toy_system

# a realistic small pair so that batching, γ and pipelining trade off (memory-bound small batches, compute-bound big ones)
DRAFT = ModelShape("d", n_layers=2, hidden=256, ffn_hidden=1024, vocab=4096)
TARGET = ModelShape("t", n_layers=8, hidden=1024, ffn_hidden=4096, vocab=4096)


def real_system(draft_flops: float, memory_bytes: float) -> ServingSystem:
    return ServingSystem(
        drafter=NodeSpec("d", DRAFT, effective_flops=draft_flops, memory_bandwidth_bytes_per_s=2e11, step_overhead_s=2e-4),
        verifier=NodeSpec("v", TARGET, effective_flops=2e12, memory_bandwidth_bytes_per_s=5e11, step_overhead_s=1e-3,
                          memory_bytes=memory_bytes),
        link=LinkSpec(uplink_bps=1e8, downlink_bps=1e8, latency_s=5e-4),
        speculation=SpecConfig(alpha=0.7, q_mode="topk", top_k=4),
    )


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw, max_tasks: int, one_dimensional: bool = False):
    k = draw(st.integers(1, max_tasks))
    outputs = draw(st.lists(st.integers(1, 300), min_size=k, max_size=k))
    if one_dimensional:
        inputs = [draw(st.integers(1, 400))] * k
        alphas = [draw(st.sampled_from([0.3, 0.6, 0.85]))] * k
        ready = [draw(st.sampled_from([0.0, 0.2]))] * k
    else:
        inputs = draw(st.lists(st.integers(1, 400), min_size=k, max_size=k))
        alphas = draw(st.lists(st.sampled_from([0.0, 0.3, 0.6, 0.85]), min_size=k, max_size=k))
        ready = draw(st.lists(st.sampled_from([0.0, 0.05, 0.3, 1.0]), min_size=k, max_size=k))
    tasks = [Task(i, inputs[i], outputs[i], alphas[i], 100.0, spectral_efficiency_bps_per_hz=1.0) for i in range(k)]
    draft_flops = draw(st.sampled_from([2e10, 2e11, 2e12]))
    # target weights are 285 MB and its KV 32 kB per token: 370 MB leaves room for about 2,600 tokens of context
    memory = draw(st.sampled_from([float("inf"), 3.7e8]))
    system = real_system(draft_flops, memory)
    gammas = draw(st.sampled_from([(0, 1, 2), (1, 3), (2,), (0, 4)]))
    pipeline = draw(st.sampled_from([(False, True), (False,), (True,)]))
    cap = draw(st.sampled_from([0, 2, 3]))
    return system, tasks, ready, SearchSpace(gammas, pipeline, cap)


def _feasible(fn, *args):
    try:
        return fn(*args).makespan_s
    except ValueError:
        return float("inf")


@SETTINGS
@given(instances(max_tasks=6))
def test_dp_equals_brute_force_over_the_plans_it_searches(inst):
    system, tasks, ready, space = inst
    dp = _feasible(plan_batches, system, tasks, ready, space)
    brute = brute_force_contiguous(system, tasks, ready, space).makespan_s
    assert dp == pytest.approx(brute, rel=1e-9)


@SETTINGS
@given(instances(max_tasks=5, one_dimensional=True))
def test_dp_equals_brute_force_over_all_partitions_when_tasks_differ_only_in_output(inst):
    system, tasks, ready, space = inst
    dp = _feasible(plan_batches, system, tasks, ready, space)
    brute = brute_force_all_partitions(system, tasks, ready, space, all_orders=len(tasks) <= 4).makespan_s
    assert dp == pytest.approx(brute, rel=1e-9)


@SETTINGS
@given(instances(max_tasks=4))
def test_all_partitions_never_beaten_by_the_dp(inst):
    """In general the DP is a heuristic over all partitions: brute force can only be better or equal."""
    system, tasks, ready, space = inst
    dp = _feasible(plan_batches, system, tasks, ready, space)
    brute = brute_force_all_partitions(system, tasks, ready, space).makespan_s
    assert brute <= dp * (1 + 1e-12)


def test_dp_is_suboptimal_on_a_known_two_dimensional_instance():
    """A documented counterexample: long prompts with short outputs break the 1-D sort."""
    system = real_system(2e11, float("inf"))
    tasks = [Task(0, 4000, 10, 0.6, 1.0, 1.0), Task(1, 10, 20, 0.6, 1.0, 1.0), Task(2, 4000, 30, 0.6, 1.0, 1.0)]
    space = SearchSpace((0, 2), (False,), 2)
    dp = plan_batches(system, tasks, [0.0] * 3, space).makespan_s
    brute = brute_force_all_partitions(system, tasks, [0.0] * 3, space).makespan_s
    assert brute < dp * (1 - 1e-3)


def test_dp_value_equals_the_evaluated_plan():
    rng = np.random.default_rng(0)
    system = real_system(2e11, float("inf"))
    tasks = [Task(i, int(rng.integers(10, 500)), int(rng.integers(5, 400)), float(rng.uniform(0.3, 0.9)), 1.0, 1.0)
             for i in range(40)]
    ready = rng.uniform(0, 2.0, 40)
    res = plan_batches(system, tasks, ready, SearchSpace(tuple(range(9)), (False, True), 0))
    assert sorted(t for b in res.batches for t in b.task_ids) == list(range(40))
    assert evaluate_plan(system, tasks, res.batches, ready).makespan_s == pytest.approx(res.makespan_s, rel=1e-12)


def test_fixed_partition_and_max_batching():
    system = toy_system(memory_bytes=64 + 4 * 13 * 2)  # at most two toy tasks fit
    tasks = [Task(i, 4, 6, 0.5, 1.0, 1.0) for i in range(5)]
    space = SearchSpace((0, 1, 2), (False, True), 0)
    blocks = max_batching_blocks(system, tasks, space)
    assert [len(b) for b in blocks] == [2, 2, 1]
    fixed = plan_fixed_partition(system, tasks, [0.0] * 5, space, blocks)
    assert len(fixed.batches) == 3
    dp = plan_batches(system, tasks, [0.0] * 5, space)
    assert dp.makespan_s <= fixed.makespan_s * (1 + 1e-12)
    capped = max_batching_blocks(system, tasks, replace(space, max_batch_size=1))
    assert [len(b) for b in capped] == [1] * 5


def test_infeasible_instance_raises():
    system = toy_system(memory_bytes=10)  # not even the weights fit
    with pytest.raises(ValueError, match="memory"):
        plan_batches(system, [Task(0, 4, 6, 0.5, 1.0, 1.0)], [0.0], SearchSpace((1,), (False,), 0))


def test_sort_order_is_by_expected_rounds():
    tasks = [Task(0, 1, 100, 0.9, 1.0, 1.0), Task(1, 1, 100, 0.1, 1.0, 1.0), Task(2, 1, 10, 0.1, 1.0, 1.0)]
    assert list(sort_order(tasks, SearchSpace((4,)))) == [2, 0, 1]
