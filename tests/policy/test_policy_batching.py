"""Verifier batching policies and the live DP plan policy."""

from __future__ import annotations

import pytest

from edgespec.plan.dp import SearchSpace
from edgespec.plan.scenario import load_scenario
from edgespec.policy.bandwidth import MinMaxBandwidth, MinSumBandwidth, UniformBandwidth, UplinkDemand
from edgespec.policy.batching import DpPlanPolicy, MaxBatching, Pending, TaskState, WindowBatching

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pend(*arrivals):
    return [Pending(i, a) for i, a in enumerate(arrivals)]


def test_window_waits_then_dispatches():
    policy = WindowBatching(window_s=0.01, max_batch_size=4)
    d = policy.select(pend(1.000, 1.004), now_s=1.005)
    assert d.batches == () and d.wake_at_s == pytest.approx(1.010)
    d = policy.select(pend(1.000, 1.004), now_s=1.010)
    assert [len(b) for b in d.batches] == [2] and d.wake_at_s is None


def test_window_dispatches_full_batches_at_once():
    policy = WindowBatching(window_s=1.0, max_batch_size=2)
    d = policy.select(pend(0.3, 0.1, 0.2), now_s=0.3)
    assert [[p.request_id for p in b] for b in d.batches] == [[1, 2]]
    assert d.wake_at_s == pytest.approx(1.3)


def test_max_batching():
    assert [len(b) for b in MaxBatching(2).select(pend(0, 0, 0, 0, 0), 0.0).batches] == [2, 2, 1]
    assert [len(b) for b in MaxBatching().select(pend(0, 0, 0), 0.0).batches] == [3]
    assert MaxBatching().select([], 0.0).batches == ()


def test_dp_plan_policy_live():
    sc = load_scenario(EXAMPLES / "heterogeneous.toml")
    policy = DpPlanPolicy(sc.system, SearchSpace(tuple(range(0, 9)), (False, True), 8))
    tasks = [TaskState(t.task_id, t.input_tokens, t.output_tokens, t.alpha, ready_s=100.0) for t in sc.tasks]
    tasks.append(TaskState(99, 10, 0, 0.5))  # finished tasks are ignored
    batches = policy.plan(tasks, now_s=100.0)
    assert sorted(i for b in batches for i in b.task_ids) == sorted(t.task_id for t in sc.tasks)
    assert all(len(b.task_ids) <= 8 and 0 <= b.gamma <= 8 for b in batches)
    assert policy.next_batch(tasks, now_s=100.0) == batches[0]
    assert policy.next_batch([], now_s=0.0) is None


@pytest.mark.parametrize("policy", [UniformBandwidth(), MinMaxBandwidth(), MinSumBandwidth()])
def test_bandwidth_policies(policy):
    demands = [UplinkDemand(1e5, spectral_efficiency_bps_per_hz=2.0), UplinkDemand(4e5, snr_hz=1e8),
               UplinkDemand(2e4, spectral_efficiency_bps_per_hz=6.0)]
    shares = policy.allocate(demands, 1e6)
    assert shares.sum() == pytest.approx(1e6) and (shares >= 0).all()
    with pytest.raises(ValueError):
        UplinkDemand(1.0)
