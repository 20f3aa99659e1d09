"""Latency model: hand-computed breakdowns on a toy system, and monotonicity in bandwidth and payload."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgespec.plan.bandwidth import allocate, channels_from_tasks, upload_times_s
from edgespec.plan.dp import plan_batches, search_space
from edgespec.plan.latency import (
    PlannedBatch,
    batch_breakdown,
    draft_bytes_per_token,
    evaluate_plan,
    flops_per_token,
    kv_bytes_per_token,
    param_count,
    step_time_s,
)
from edgespec.plan.scenario import load_scenario

from plan_helpers import EXAMPLES, TOY_MODEL, toy_system, toy_task


@pytest.fixture
def system():
    return toy_system()


def test_toy_model_counts_by_hand():
    assert param_count(TOY_MODEL) == 64
    assert kv_bytes_per_token(TOY_MODEL) == 4
    assert float(flops_per_token(TOY_MODEL, 7)) == 96 + 8 * 7


def test_roofline_takes_the_slower_of_compute_and_memory():
    sys_ = toy_system()
    node = replace(sys_.verifier, memory_bandwidth_bytes_per_s=64.0, step_overhead_s=0.5)
    # compute: 1·1·(96 + 8·0)/1000 = 0.096 s; memory: 64 weight bytes / 64 B/s = 1 s; + 0.5 s overhead
    assert float(step_time_s(node, 1, 1, 0)) == pytest.approx(1.5)
    # batch 100 × 3 tokens at ctx 0: compute 28.8 s; memory (64 + 0)/64 = 1 s
    assert float(step_time_s(node, 100, 3, 0)) == pytest.approx(28.8 + 0.5)


def test_single_task_sd_breakdown_by_hand(system):
    # α = 0.5, γ = 2: E = 1.75, rounds = ceil(6 / 1.75) = 4; ctx = 4 + 6/2 = 7 → 152 FLOPs per token
    b = batch_breakdown(system, [toy_task()], gamma=2, pipelined=False)
    assert b.rounds == 4 and b.context_tokens == 7
    draft = 2 * 152 / 1e4  # γ draft steps, 1 token each, 10 kFLOP/s
    transfer = 0.01 + 8 * (2 * 4) / 8000  # latency + γ ids of 4 bytes
    verify = 3 * 152 / 1e3  # γ + 1 tokens on the verifier
    downlink = 0.01 + 8 * 8 / 8000  # one 8-byte verdict
    # prefill: forward 4 ids (16 B) ‖ target prefill 4 tokens at ctx 2 (112 FLOPs each), draft prefill in parallel
    prefill = max(4 * 112 / 1e4, 0.01 + 8 * 16 / 8000 + 4 * 112 / 1e3)
    assert b.draft_compute_s == pytest.approx(4 * draft)
    assert b.draft_transfer_s == pytest.approx(4 * transfer)
    assert b.verify_compute_s == pytest.approx(4 * verify)
    assert b.downlink_s == pytest.approx(4 * downlink)
    assert b.pipeline_stall_s == pytest.approx(0.0, abs=1e-12)
    assert b.prefill_s == pytest.approx(prefill) == pytest.approx(0.474)
    assert b.total_s == pytest.approx(prefill + 4 * (draft + transfer + verify + downlink)) == pytest.approx(2.5636)


def test_pipelined_pair_breakdown_by_hand(system):
    # two identical tasks, two groups of one: d = 0.0304, s = 0.018 + 0.456 + 0.018 = 0.492, N = 4
    b = batch_breakdown(system, [toy_task(0), toy_task(1)], gamma=2, pipelined=True)
    d, s = 0.0304, 0.492
    assert b.pipelined and b.group_size == 1
    assert b.serve_s == pytest.approx(d + s + (2 * 4 - 1) * max(d, s))
    own = 4 * (d + s)
    assert b.pipeline_stall_s == pytest.approx(b.serve_s - own)
    parts = b.draft_compute_s + b.draft_transfer_s + b.verify_compute_s + b.downlink_s + b.pipeline_stall_s
    assert parts == pytest.approx(b.serve_s)
    # prefill of both prompts: forward 32 B, target 2·4·112 FLOPs
    assert b.prefill_s == pytest.approx(0.01 + 8 * 32 / 8000 + 2 * 448 / 1e3)


def test_ad_breakdown_by_hand(system):
    # γ = 0: 6 decode steps of 152 FLOPs, only the last token's downlink is on the critical path, no draft prefill
    b = batch_breakdown(system, [toy_task()], gamma=0, pipelined=True)
    assert not b.pipelined and b.rounds == 6
    assert b.draft_compute_s == 0 and b.draft_transfer_s == 0
    assert b.verify_compute_s == pytest.approx(6 * 0.152)
    assert b.downlink_s == pytest.approx(0.018)
    assert b.total_s == pytest.approx(0.474 + 6 * 0.152 + 0.018)


def test_plan_timeline_by_hand(system):
    tasks = [toy_task(0, upload_bytes=100), toy_task(1, upload_bytes=300, output_tokens=2)]
    upload = [0.1, 3.0]  # task 1 arrives late
    batches = [PlannedBatch((0,), 2, False), PlannedBatch((1,), 0, False)]
    lat = evaluate_plan(system, tasks, batches, upload)
    first = batch_breakdown(system, [tasks[0]], 2, False).total_s  # 2.5636
    second = batch_breakdown(system, [tasks[1]], 0, False).total_s
    assert lat.batches[0].start_s == pytest.approx(0.1)
    assert lat.batches[1].start_s == pytest.approx(max(0.1 + first, 3.0))
    assert lat.makespan_s == pytest.approx(3.0 + second)
    # critical path: waited 0.1 s before batch 0 and 3.0 − 2.6636 s before batch 1
    assert lat.breakdown.upload_s == pytest.approx(0.1 + 3.0 - (0.1 + first))
    bd = lat.breakdown
    total = (bd.upload_s + bd.queue_s + bd.prefill_s + bd.draft_compute_s + bd.draft_transfer_s
             + bd.verify_compute_s + bd.downlink_s + bd.pipeline_stall_s)
    assert total == pytest.approx(bd.total_s)
    for t in lat.tasks:
        tb = t.breakdown
        parts = (tb.upload_s + tb.queue_s + tb.prefill_s + tb.draft_compute_s + tb.draft_transfer_s
                 + tb.verify_compute_s + tb.downlink_s + tb.pipeline_stall_s)
        assert parts == pytest.approx(tb.total_s)
    assert lat.tasks[1].breakdown.queue_s == pytest.approx(0.0)
    assert lat.mean_task_latency_s == pytest.approx((0.1 + first + 3.0 + second) / 2)


def test_memory_limit_makes_batches_infeasible():
    # weights 64 B + KV 4 B/token · ctx (4 + 6 + γ + 1 = 13) per sequence
    sys_ = toy_system(memory_bytes=64 + 4 * 13 * 2)
    assert batch_breakdown(sys_, [toy_task(0), toy_task(1)], 2, False).fits_memory
    assert not batch_breakdown(sys_, [toy_task(i) for i in range(3)], 2, False).fits_memory
    assert batch_breakdown(sys_, [toy_task(i) for i in range(3)], 2, False).total_s == float("inf")


def test_payload_bytes_per_q_mode():
    spec = toy_system().speculation
    assert draft_bytes_per_token(spec, 8) == 4  # ids
    assert draft_bytes_per_token(replace(spec, q_mode="topk"), 8) == 4 + 2 * (4 + 2)
    assert draft_bytes_per_token(replace(spec, q_mode="full"), 8) == 4 + 8 * 2


@pytest.fixture(scope="module")
def paper():
    return load_scenario(EXAMPLES / "paper_2510_11331.toml")


def _fixed_plan_makespan(sc, total_hz):
    ch = channels_from_tasks(sc.tasks, sc.uplink)
    up = upload_times_s(ch, allocate("min_max", ch, total_hz))
    batches = (PlannedBatch(tuple(t.task_id for t in sc.tasks[:40]), 4, False),
               PlannedBatch(tuple(t.task_id for t in sc.tasks[40:]), 3, True))
    return evaluate_plan(sc.system, sc.tasks, batches, up).makespan_s, up


def test_latency_decreases_with_bandwidth(paper):
    # stress uploads (100 kB each) so the bandwidth is on the critical path
    sc = replace(paper, tasks=tuple(replace(t, upload_bytes=1e5) for t in paper.tasks))
    totals = [0.2e6, 0.5e6, 1e6, 2e6, 5e6, 10e6, 20e6]
    fixed = [_fixed_plan_makespan(sc, b)[0] for b in totals]
    assert all(a > b for a, b in zip(fixed, fixed[1:]))
    space = search_space(sc.planner)
    planned = []
    for b in totals:
        up = _fixed_plan_makespan(sc, b)[1]
        planned.append(plan_batches(sc.system, sc.tasks, up, space).makespan_s)
    assert all(a >= b for a, b in zip(planned, planned[1:]))
    assert planned[0] > planned[-1]


def test_latency_increases_with_payload(paper):
    base, _ = _fixed_plan_makespan(paper, paper.uplink.bandwidth_hz)
    bigger_uploads = replace(paper, tasks=tuple(replace(t, upload_bytes=t.upload_bytes * 50) for t in paper.tasks))
    assert _fixed_plan_makespan(bigger_uploads, paper.uplink.bandwidth_hz)[0] > base
    spec = paper.system.speculation
    by_k = []
    for k in (1, 8, 64, 1024):
        sc = replace(paper, system=replace(paper.system, speculation=replace(spec, top_k=k)))
        by_k.append(_fixed_plan_makespan(sc, paper.uplink.bandwidth_hz)[0])
    assert all(a < b for a, b in zip(by_k, by_k[1:]))
    modes = {}
    for mode in ("ids", "topk", "full"):
        sc = replace(paper, system=replace(paper.system, speculation=replace(spec, q_mode=mode)))
        modes[mode] = _fixed_plan_makespan(sc, paper.uplink.bandwidth_hz)[0]
    assert modes["ids"] < modes["topk"] < modes["full"]
    slow_link = replace(paper, system=replace(paper.system, link=replace(paper.system.link, uplink_bps=1e7)))
    assert _fixed_plan_makespan(slow_link, paper.uplink.bandwidth_hz)[0] > base


def test_vectorised_and_scalar_costs_agree(paper):
    sc = paper
    up = np.zeros(len(sc.tasks))
    res = plan_batches(sc.system, sc.tasks, up, search_space(sc.planner))
    assert evaluate_plan(sc.system, sc.tasks, res.batches, up).makespan_s == pytest.approx(res.makespan_s, rel=1e-12)
