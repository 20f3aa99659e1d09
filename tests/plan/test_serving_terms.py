"""The latency model's serving terms (A13) and several-node model (A14): each term moves predictions the right way, and adds exactly nothing when its measured input is zero."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edgespec.plan.latency import (
    DeviceNode, batch_prefill_s, node_latencies, rounds_distribution, round_times, shared_core_durations_s,
)
from edgespec.plan.profile import Profile, StepTable
from edgespec.plan.scenario import LinkSpec, NodeSpec, ServingSystem, SpecConfig
from edgespec.plan.servingprofile import BatchSeries, ServingProfile, ServingSetting

from plan_helpers import TOY_MODEL


def _table(rows, cols, times) -> StepTable:
    return StepTable(np.array(rows, float), np.array(cols, float), np.array(times, float))


DRAFT = Profile(_table([1, 2, 4], [1], [[0.002], [0.003], [0.004]]), _table([1, 2], [16, 64], [[0.003, 0.005], [0.004, 0.008]]))
TARGET = Profile(_table([1, 2, 4], [1, 5], [[0.015, 0.025], [0.02, 0.03], [0.025, 0.04]]),
                 _table([1, 2], [16, 64], [[0.02, 0.05], [0.03, 0.08]]))


def system(serving=None, latency_s: float = 0.01) -> ServingSystem:
    return ServingSystem(
        drafter=NodeSpec("d", TOY_MODEL, profile=DRAFT), verifier=NodeSpec("v", TOY_MODEL, profile=TARGET),
        link=LinkSpec(uplink_bps=1e6, downlink_bps=5e6, latency_s=latency_s),
        speculation=SpecConfig(alpha=0.8, q_mode="ids", id_bytes=2, verdict_bytes=6, message_overhead_bytes=18), serving=serving)


def serving(**terms) -> ServingProfile:
    """A serving profile whose tables are the bare ones and whose every term is zero, except `terms`."""
    base = dict(setting=ServingSetting("tokens", 0.0, 4), target_forward=TARGET, draft_step=DRAFT,
                verifier_framework=BatchSeries.constant(0.0), drafter_framework=BatchSeries.constant(0.0))
    return ServingProfile(**{**base, **terms})


def scaled(profile: Profile, ratio: float) -> Profile:
    return replace(profile, step=replace(profile.step, time_s=profile.step.time_s * ratio))


ROUNDS = [(g, gamma) for g in (1, 2, 4) for gamma in (0, 1, 4)]


def _round(sys_: ServingSystem, g: int, gamma: int) -> tuple[float, ...]:
    rt = round_times(sys_, g, gamma, 40)
    return tuple(float(x) for x in (rt.draft_s, rt.transfer_s, rt.verify_s, rt.downlink_s))


@pytest.mark.parametrize("g, gamma", ROUNDS)
def test_zero_terms_and_bare_tables_leave_a_round_exactly_as_without_a_serving_profile(g, gamma):
    assert _round(system(serving()), g, gamma) == _round(system(None), g, gamma)


@pytest.mark.parametrize("g, gamma", ROUNDS)
def test_round_terms_add_what_was_measured_where_it_belongs(g, gamma):
    base = _round(system(serving()), g, gamma)
    v = _round(system(serving(verifier_framework=BatchSeries((1, 4), (0.002, 0.005)))), g, gamma)
    assert v[2] == pytest.approx(base[2] + float(np.interp(g, (1, 4), (0.002, 0.005))))  # per batch, on the verify stage
    assert (v[0], v[1], v[3]) == (base[0], base[1], base[3])
    d = _round(system(serving(drafter_framework=BatchSeries.constant(0.0015))), g, gamma)
    assert d[0] == pytest.approx(base[0] + (0.0015 if gamma else 0.0))  # per round of the group drafted together, on the draft stage of SD rounds
    grows = _round(system(serving(drafter_framework=BatchSeries((1, 4), (0.0015, 0.003)))), g, gamma)
    assert grows[0] == pytest.approx(base[0] + (float(np.interp(g, (1, 4), (0.0015, 0.003))) if gamma else 0.0))  # at the group's size
    assert d[1:] == base[1:]


@pytest.mark.parametrize("g, gamma", ROUNDS)
def test_slower_forwards_in_the_serving_processes_slow_their_stages(g, gamma):
    base = _round(system(serving()), g, gamma)
    slow = _round(system(serving(target_forward=scaled(TARGET, 1.3), draft_step=scaled(DRAFT, 1.5))), g, gamma)
    assert slow[2] == pytest.approx(1.3 * base[2])
    assert slow[0] == pytest.approx(1.5 * base[0])


def _prefill(sys_: ServingSystem, gamma: int = 4) -> float:
    return float(batch_prefill_s(sys_, 1, 17, 17, gamma))


def test_request_term_adds_exactly_itself_to_the_first_token():
    assert _prefill(system(serving(request_s=0.004))) == pytest.approx(_prefill(system(serving())) + 0.004)
    assert _prefill(system(serving(request_s=0.004)), gamma=0) == pytest.approx(_prefill(system(serving()), gamma=0) + 0.004)


def test_open_term_delays_the_first_block_only_when_the_handshake_outlasts_the_first_draft():
    far, near = system(serving(), latency_s=0.05), system(serving(), latency_s=0.0)
    # 50 ms each way: the open's round trip outlasts draft prefill + the first draft, so its handling adds in full
    assert _prefill(replace(far, serving=serving(open_s=0.003))) == pytest.approx(_prefill(far) + 0.003)
    # no latency, fast link: the handshake hides behind the draft prefill; a short handling adds nothing
    assert _prefill(replace(near, link=LinkSpec(1e12, 1e12, 0.0), serving=serving(open_s=0.001))) == \
        _prefill(replace(near, link=LinkSpec(1e12, 1e12, 0.0)))


def test_the_handshake_costs_the_links_round_trip_beyond_the_first_draft():
    far = system(serving(), latency_s=0.05)
    rt = round_times(far, 1, 4, 17)
    opened = 0.05 + 8 * (17 * 2 + 18) / 1e6 + 0.05 + 8 * (6 + 18) / 5e6
    expected = max(float(DRAFT.prefill.time_s[0, 0]), opened - float(rt.draft_s)) + float(np.interp(17, [16, 64], TARGET.prefill.time_s[0]))
    assert _prefill(far) == pytest.approx(expected)


# ---------------------------------------------------------------- devices sharing cores


def test_one_job_per_core_takes_its_work_over_its_cap():
    assert shared_core_durations_s([0.0], [0.01], [1.0]).tolist() == [0.01]
    assert shared_core_durations_s([0.0], [0.01], [0.5]).tolist() == pytest.approx([0.02])
    assert shared_core_durations_s([0.0, 0.0], [0.01, 0.02], [1.0, 1.0], cores=2).tolist() == pytest.approx([0.01, 0.02])
    assert shared_core_durations_s([0.0, 0.5], [0.1, 0.1], [1.0, 1.0]).tolist() == pytest.approx([0.1, 0.1])  # never at once


def test_jobs_at_once_share_a_core_and_capped_jobs_leave_the_rest_to_others():
    assert shared_core_durations_s([0.0, 0.0], [1.0, 1.0], [1.0, 1.0]).tolist() == pytest.approx([2.0, 2.0])
    assert shared_core_durations_s([0.0, 0.5], [1.0, 1.0], [1.0, 1.0]).tolist() == pytest.approx([1.5, 1.5])
    assert shared_core_durations_s([0.0, 0.0], [1.0, 1.0], [0.3, 1.0]).tolist() == pytest.approx([1 / 0.3, 1 / 0.7])  # 0.3 + 0.7 of the core
    slower = shared_core_durations_s([0.0, 0.0], [1.0, 1.0], [1.0, 1.0], efficiency=0.8)
    assert slower.tolist() == pytest.approx([2.5, 2.5])


NODES = [DeviceNode("a", LinkSpec(5e6, 20e6, 0.005)), DeviceNode("b", LinkSpec(5e6, 20e6, 0.008), slowdown=2.0)]


def _latencies(sys_, nodes, cores):
    return node_latencies(sys_, nodes, input_tokens=17, output_tokens=64, gamma=4, per_position=(0.8, 0.75, 0.8, 0.8), device_cores=cores)


def test_a_device_alone_on_its_core_is_not_slowed_by_sharing():
    alone = [NODES[1]]
    for sv in (None, serving(drafter_framework=BatchSeries.constant(0.001))):
        own, shared = _latencies(system(sv), alone, 0), _latencies(system(sv), alone, 1)
        assert shared["b"].mean_latency_s == pytest.approx(own["b"].mean_latency_s, rel=1e-12)
        assert shared["b"].draft_s == pytest.approx(own["b"].draft_s, rel=1e-12)


def test_devices_drafting_at_once_on_one_core_wait_for_each_other():
    own, shared = _latencies(system(serving()), NODES, 0), _latencies(system(serving()), NODES, 1)
    assert shared["a"].draft_s > own["a"].draft_s and shared["a"].mean_latency_s > own["a"].mean_latency_s
    assert shared["b"].draft_s >= own["b"].draft_s - 1e-12
    assert _latencies(system(serving()), NODES, 2)["a"].draft_s == pytest.approx(own["a"].draft_s)  # a core each


def test_a_measured_quota_share_replaces_one_over_slowdown():
    measured = serving(quota=BatchSeries((2,), (0.012,)), shared_core=BatchSeries((1, 2), (0.008, 0.016)))
    assert measured.quota_cap(2.0) == pytest.approx(0.008 / 0.012)
    assert measured.quota_cap(3.0) == pytest.approx(1 / 3) and measured.quota_cap(1.0) == 1.0
    quota_bound = [NODES[1]]
    assert _latencies(system(measured), quota_bound, 1)["b"].draft_s < _latencies(system(serving()), quota_bound, 1)["b"].draft_s


# ---------------------------------------------------------------- rounds


def test_rounds_distribution_in_the_plain_cases():
    assert rounds_distribution(5, [1.0], 4).tolist()[:3] == [0.0, 1.0, 0.0]  # 4 drafts + the bonus: one round
    assert rounds_distribution(5, [0.0], 4)[5] == 1.0  # every draft rejected: a token per round
    assert rounds_distribution(9, [1.0], 4)[2] == 1.0  # 5, then γ capped at 3: 4 more
    d = rounds_distribution(64, [0.8, 0.7, 0.75, 0.8], 4)
    assert d.sum() == pytest.approx(1.0) and d[:13].sum() == 0.0  # at most 5 tokens a round: at least 13 rounds


def test_rounds_distribution_matches_drawing_rounds():
    rng = np.random.default_rng(0)
    curve, gamma, out = (0.8, 0.7, 0.75, 0.8), 4, 48
    counts = []
    for _ in range(4000):
        t = r = 0
        while t < out:
            g = min(gamma, out - t - 1)
            k = 0
            while k < g and rng.random() < curve[k]:
                k += 1
            t, r = t + k + 1, r + 1
        counts.append(r)
    d = rounds_distribution(out, curve, gamma)
    assert float(np.dot(np.arange(len(d)), d)) == pytest.approx(np.mean(counts), rel=0.01)
    assert int(np.searchsorted(np.cumsum(d), 0.9)) == pytest.approx(np.percentile(counts, 90), abs=1)


def test_more_acceptance_means_fewer_rounds_and_lower_latency():
    low = node_latencies(system(), NODES[:1], input_tokens=17, output_tokens=64, gamma=4, per_position=(0.5,))
    high = node_latencies(system(), NODES[:1], input_tokens=17, output_tokens=64, gamma=4, per_position=(0.9,))
    assert high["a"].rounds_mean < low["a"].rounds_mean and high["a"].mean_latency_s < low["a"].mean_latency_s
    assert low["a"].quantile_latency_s >= low["a"].mean_latency_s - low["a"].round_s
    assert math.isfinite(high["a"].ttft_s) and high["a"].ttft_s < high["a"].mean_latency_s


# ---------------------------------------------------------------- the shared verifier (A15)


def test_a_lone_node_far_away_barely_waits_and_is_verified_alone():
    from edgespec.plan.latency import verifier_queue

    q = verifier_queue([10.0], lambda b, a, u: 0.02)
    assert q.batch == pytest.approx(1.0, abs=1e-3) and q.wait_s < 1e-3 and q.batch_s == pytest.approx(0.02)


def test_more_nodes_or_a_slower_verifier_mean_bigger_batches_and_longer_waits():
    from edgespec.plan.latency import verifier_queue

    cost = lambda b, a, u: 0.02 + 0.005 * (b - 1)  # noqa: E731
    few, many = verifier_queue([0.05] * 2, cost), verifier_queue([0.05] * 6, cost)
    assert many.batch > few.batch and many.wait_s > few.wait_s and 0 < few.utilisation < many.utilisation <= 1
    slow = verifier_queue([0.05] * 2, lambda b, a, u: 0.04 + 0.01 * (b - 1))
    assert slow.wait_s > few.wait_s and slow.batch > few.batch


def test_messages_during_batches_lengthen_them_only_when_the_model_has_overlap_terms():
    base = _latencies(system(serving()), NODES, 0)
    loaded = _latencies(system(serving(overlap_s=0.003, verdict_overlap_s=0.002)), NODES, 0)
    assert loaded["a"].verify_s > base["a"].verify_s and loaded["a"].mean_latency_s > base["a"].mean_latency_s


def test_device_work_off_the_path_slows_others_on_a_shared_core_only():
    quiet, busy = serving(), serving(drafter_background_s=0.004)
    assert _latencies(system(busy), NODES, 1)["a"].draft_s > _latencies(system(quiet), NODES, 1)["a"].draft_s
    assert _latencies(system(busy), NODES, 0)["a"].draft_s == _latencies(system(quiet), NODES, 0)["a"].draft_s


def test_prompts_that_accept_differently_spread_the_rounds_and_raise_the_p90():
    one = node_latencies(system(), NODES[:1], input_tokens=17, output_tokens=64, gamma=4, per_position=(0.75,))
    spread = node_latencies(system(), NODES[:1], input_tokens=17, output_tokens=64, gamma=4, per_position=(0.75,),
                            per_prompt=((0.55,), (0.9,)))
    assert spread["a"].quantile_latency_s > one["a"].quantile_latency_s
    same = node_latencies(system(), NODES[:1], input_tokens=17, output_tokens=64, gamma=4, per_position=(0.75,), per_prompt=((0.75,),))
    assert same["a"].mean_latency_s == pytest.approx(one["a"].mean_latency_s) and same["a"].quantile_latency_s == one["a"].quantile_latency_s


# ---------------------------------------------------------------- every term of the several-node model at once


TERMS = [
    ("verifier_framework", BatchSeries((1, 4), (0.002, 0.004)), BatchSeries.constant(0.0)),
    ("drafter_framework", BatchSeries.constant(0.0015), BatchSeries.constant(0.0)),
    ("drafter_background_s", 0.004, 0.0),
    ("overlap_s", 0.003, 0.0),
    ("verdict_overlap_s", 0.003, 0.0),
    ("open_s", 0.004, 0.0),
    ("request_s", 0.004, 0.0),
    # the device CPUs' work per round grows with devices on the cores: efficiency < 1; the same work: efficiency 1
    ("shared_core_cpu", BatchSeries((1, 2), (0.008, 0.010)), BatchSeries((1, 2), (0.008, 0.008))),
]


@pytest.mark.parametrize("term, measured, zero", TERMS, ids=[t[0] for t in TERMS])
def test_each_term_raises_every_nodes_latency_and_adds_nothing_when_its_input_is_zero(term, measured, zero):
    """Two nodes (one at half a core) sharing a core and a verifier, 50 ms links: the term raises mean, p90 and TTFT or
    mean and p90 (per-round terms), never lowers one; at zero every figure is exactly as without it."""
    far = [DeviceNode("a", LinkSpec(5e6, 20e6, 0.05)), DeviceNode("b", LinkSpec(1e6, 5e6, 0.05), slowdown=2.0)]
    base = _latencies(system(serving(), latency_s=0.05), far, 1)
    more = _latencies(system(serving(**{term: measured}), latency_s=0.05), far, 1)
    none = _latencies(system(serving(**{term: zero}), latency_s=0.05), far, 1)
    for name in ("a", "b"):
        assert none[name] == base[name]
        b, m = base[name], more[name]
        assert m.mean_latency_s > b.mean_latency_s and m.quantile_latency_s >= b.quantile_latency_s and m.ttft_s >= b.ttft_s
