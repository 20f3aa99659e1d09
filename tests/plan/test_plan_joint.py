"""The joint optimiser: never worse than a baseline, monotone alternation, consistent results."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgespec.plan.bandwidth import channels_from_tasks, upload_times_s
from edgespec.plan.joint import BASELINES, Strategy, optimise, plan_scenario
from edgespec.plan.latency import evaluate_plan
from edgespec.plan.scenario import load_scenario

from plan_helpers import EXAMPLES


@pytest.fixture(scope="module", params=["tiny.toml", "heterogeneous.toml", "paper_2510_11331.toml"])
def report(request):
    sc = load_scenario(EXAMPLES / request.param)
    return sc, plan_scenario(sc)


def test_joint_is_never_worse_than_a_baseline(report):
    sc, rep = report
    assert set(rep.baselines) == set(BASELINES)
    for name, base in rep.baselines.items():
        assert rep.joint.makespan_s <= base.makespan_s * (1 + 1e-9), name
    assert all(v >= -1e-7 for v in rep.reductions_pct().values())


def test_plans_are_complete_and_consistent(report):
    sc, rep = report
    for res in [rep.joint, *rep.baselines.values()]:
        ids = sorted(t for b in res.batches for t in b.task_ids)
        assert ids == sorted(t.task_id for t in sc.tasks)
        assert res.bandwidth_hz.sum() == pytest.approx(sc.uplink.bandwidth_hz, rel=1e-9)
        assert np.all(res.bandwidth_hz >= 0)
        ch = channels_from_tasks(sc.tasks, sc.uplink)
        again = evaluate_plan(sc.system, sc.tasks, res.batches, upload_times_s(ch, res.bandwidth_hz))
        assert again.makespan_s == pytest.approx(res.makespan_s, rel=1e-9)


def test_baselines_respect_their_constraints(report):
    sc, rep = report
    assert all(b.gamma == 0 for b in rep.baselines["ad"].batches)
    assert all(b.gamma == sc.planner.fixed_gamma for b in rep.baselines["fixed_gamma"].batches)
    assert not any(b.pipelined for b in rep.baselines["no_pipeline"].latency.batches for b in [b.detail])
    uniform = rep.baselines["uniform_bandwidth"].bandwidth_hz
    assert np.allclose(uniform, sc.uplink.bandwidth_hz / len(sc.tasks))


def test_speculation_beats_ad_on_the_paper_setting():
    sc = load_scenario(EXAMPLES / "paper_2510_11331.toml")
    rep = plan_scenario(sc)
    assert rep.reductions_pct()["ad"] > 10.0
    assert rep.reductions_pct()["max_batching"] > 0.0


def test_bandwidth_matters_when_uploads_are_large():
    sc = load_scenario(EXAMPLES / "paper_2510_11331.toml")
    big = replace(sc, tasks=tuple(replace(t, upload_bytes=t.upload_bytes * 200) for t in sc.tasks))
    joint = optimise(big)
    uniform = optimise(big, Strategy(bandwidth="uniform"))
    min_max = optimise(big, Strategy(bandwidth="min_max"))
    assert joint.makespan_s <= min_max.makespan_s * (1 + 1e-9)
    assert min_max.makespan_s < uniform.makespan_s
    assert 1 - joint.makespan_s / uniform.makespan_s > 0.05


def test_fixed_rules_are_single_shot():
    sc = load_scenario(EXAMPLES / "tiny.toml")
    res = optimise(sc, Strategy(bandwidth="min_sum"))
    assert res.iterations == 1 and res.bandwidth_hz.sum() == pytest.approx(sc.uplink.bandwidth_hz)


def test_planner_is_fast_on_100_tasks():
    sc = load_scenario(EXAMPLES / "paper_2510_11331.toml")
    res = optimise(sc)
    assert res.elapsed_s < 5.0  # the benchmark reports the real figure; this only catches blow-ups
