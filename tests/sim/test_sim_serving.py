"""The simulator's serving terms and shared device cores: each term moves latencies the right way, and adds exactly nothing when its measured input is zero."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from edgespec.plan.servingprofile import BatchSeries
from edgespec.sim.config import DrafterGroup, ServingCosts
from edgespec.sim.cores import SharedCores, share_rates
from edgespec.sim.kernel import EventLoop
from edgespec.sim.links import LinkModel
from edgespec.sim.metrics import summarize
from edgespec.sim.run import simulate
from edgespec.sim.scenario import load_sim_config

from sim_helpers import tiny_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def timelines(config) -> list[tuple]:
    run = simulate(config)
    return sorted((s.key, s.arrival_s, s.first_token_s, s.finish_s, s.rounds, s.accepted) for s in run.sessions)


def two_groups(**extra):
    """Two nodes (one a device twice as slow), a 10 ms link each way, closed loop, 3 requests each."""
    base = tiny_config(nodes=1, requests=6, draft_step_s=0.003, verify_s=0.02, output_tokens=32, **extra)
    link = LinkModel(5e6, 0.01)
    groups = (DrafterGroup("fast", 1, link, link, alpha=0.7), DrafterGroup("slow", 1, link, link, slowdown=2.0, alpha=0.7))
    return replace(base, drafters=groups)


def mean_e2e(config) -> float:
    return summarize(simulate(config)).e2e_s.mean


def mean_ttft(config) -> float:
    return summarize(simulate(config)).ttft_s.mean


def test_zero_serving_terms_on_a_link_without_latency_change_no_timeline():
    """All terms zero (the handshake then costs nothing either): every session's timeline as without a serving profile."""
    instant = LinkModel(math.inf, 0.0)
    for config in (tiny_config(nodes=2, requests=6), two_groups()):
        config = replace(config, drafters=tuple(replace(g, uplink=instant, downlink=instant) for g in config.drafters))
        assert timelines(replace(config, serving=ServingCosts())) == timelines(config)


@pytest.mark.parametrize("term, value, figure", [
    ("verifier_framework", BatchSeries.constant(0.004), mean_e2e),
    ("drafter_framework", BatchSeries.constant(0.003), mean_e2e),
    ("open_s", 0.005, mean_ttft),
    ("request_s", 0.006, mean_ttft),
])
def test_each_term_moves_latency_up_and_zero_is_no_term(term, value, figure):
    base = tiny_config(requests=3, latency_s=0.01, draft_step_s=0.003, verify_s=0.02, serving=ServingCosts())
    more = replace(base, serving=replace(base.serving, **{term: value}))
    assert figure(more) > figure(base)
    zero = BatchSeries.constant(0.0) if isinstance(value, BatchSeries) else 0.0
    assert timelines(replace(base, serving=replace(base.serving, **{term: zero}))) == timelines(base)


def test_request_time_adds_exactly_itself_to_every_request_alone_on_a_node():
    base = tiny_config(requests=3, serving=ServingCosts())
    late = replace(base, serving=ServingCosts(request_s=0.006))
    for a, b in zip(timelines(base), timelines(late)):
        assert b[2] - b[1] == pytest.approx(a[2] - a[1] + 0.006) and b[3] - b[1] == pytest.approx(a[3] - a[1] + 0.006)


def test_the_open_handshake_costs_a_round_trip_where_the_first_draft_cannot_hide_it():
    far = tiny_config(requests=2, latency_s=0.05, draft_step_s=0.001)
    with_open = replace(far, serving=ServingCosts())
    # the first block leaves when `session opened` is back: 2 × 50 ms after arrival instead of after the 4 ms draft
    assert mean_ttft(with_open) == pytest.approx(mean_ttft(far) + 0.1 - 0.004, abs=1e-9)


@pytest.mark.parametrize("term", ["overlap_s", "verdict_overlap_s"])
def test_messages_during_a_batch_cost_a_busy_verifier_and_nothing_to_a_lone_session(term):
    busy = tiny_config(nodes=3, requests=9, latency_s=0.001, serving=ServingCosts())
    assert mean_e2e(replace(busy, serving=ServingCosts(**{term: 0.003}))) > mean_e2e(busy)
    alone = tiny_config(requests=3, serving=ServingCosts())  # one session: no draft arrives during a batch, none runs back to back
    assert timelines(replace(alone, serving=ServingCosts(**{term: 0.003}))) == timelines(alone)


# ---------------------------------------------------------------- shared cores


def test_share_rates_water_fills_under_caps():
    assert share_rates([1.0, 1.0], 1.0) == [0.5, 0.5]
    assert share_rates([0.2, 1.0, 1.0], 1.0) == pytest.approx([0.2, 0.4, 0.4])
    assert share_rates([0.5, 0.5], 2.0) == [0.5, 0.5]


def test_shared_cores_run_jobs_by_processor_sharing():
    loop, ends = EventLoop(), {}
    cores = SharedCores(loop, 1.0)
    cores.run(1.0, 1.0, lambda k: ends.__setitem__(k, loop.now_s), "a")
    loop.at(0.5, lambda _: cores.run(1.0, 1.0, lambda k: ends.__setitem__(k, loop.now_s), "b"))
    loop.run()
    assert ends == pytest.approx({"a": 1.5, "b": 2.0})


def test_a_device_alone_on_a_shared_core_is_a_device_of_its_own():
    for config in (tiny_config(requests=3), tiny_config(requests=3, serving=ServingCosts(drafter_framework=BatchSeries.constant(0.002)))):
        slow = replace(config, drafters=(replace(config.drafters[0], slowdown=2.0),))
        flat = lambda c: [x for t in timelines(c) for x in t]  # noqa: E731
        assert flat(replace(slow, device_cores=1)) == pytest.approx(flat(slow), rel=1e-9)


def test_devices_sharing_a_core_slow_each_other_and_a_measured_quota_share_applies():
    config = two_groups(serving=ServingCosts())
    own, shared = summarize(simulate(config)), summarize(simulate(replace(config, device_cores=1)))
    assert shared.e2e_s.mean > own.e2e_s.mean
    assert summarize(simulate(replace(config, device_cores=2))).e2e_s.mean == pytest.approx(own.e2e_s.mean)
    generous = replace(config, device_cores=1, serving=ServingCosts(quota_caps=((2.0, 0.9),)))
    slow = lambda c: summarize(simulate(c)).per_group["slow"]["e2e_mean_s"]  # noqa: E731
    assert slow(generous) < slow(replace(config, device_cores=1))
    worse = replace(config, device_cores=1, serving=ServingCosts(core_efficiency=0.7))
    assert summarize(simulate(worse)).e2e_s.mean > shared.e2e_s.mean


# ---------------------------------------------------------------- scenario files


def _serving_file(tmp_path: Path) -> Path:
    from edgespec.plan.pairprofile import load_pair_profile, pair_profile_to_dict

    data = pair_profile_to_dict(load_pair_profile(EXAMPLES / "profiles" / "bundled_pair_cpu.json"))
    data["format"] = "edgespec-pair-profile/2"
    data["serving"] = {"setting": {"q_mode": "tokens", "temperature": 0.0, "gamma": 4},
                       "target_forward": data["target"], "draft_step": data["draft"],
                       "framework": {"batch_sizes": [1], "verifier_s": [0.002], "drafter_s": [0.0015]},
                       "session": {"open_s": 0.001, "request_s": 0.003}, "quota": {"slowdowns": [2.0], "draft_pass_s": [0.016]},
                       "shared_core": {"devices": [1, 2], "draft_pass_s": [0.01, 0.022]}}
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(data))
    return path


def test_a_scenario_with_a_serving_profile_gets_its_terms(tmp_path):
    config = load_sim_config(EXAMPLES / "testbed_hetero.toml", pair_profile=_serving_file(tmp_path), requests=8)
    sv = config.serving
    assert config.device_cores == 1 and sv.request_s == 0.003 and sv.open_s == 0.001
    assert sv.cap(2.0) == pytest.approx(0.01 / 0.016) and sv.core_efficiency == pytest.approx(2 * 0.01 / 0.022)
    bare = load_sim_config(EXAMPLES / "testbed_hetero.toml", requests=8)
    assert bare.serving is None
    assert summarize(simulate(config)).e2e_s.mean > summarize(simulate(replace(bare, device_cores=0))).e2e_s.mean


def test_device_cores_is_checked(tmp_path):
    from edgespec.plan.scenario import ScenarioError

    text = (EXAMPLES / "testbed_hetero.toml").read_text().replace("device_cores = 1", "device_cores = -1")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    (tmp_path / "profiles").symlink_to(EXAMPLES / "profiles")
    with pytest.raises(ScenarioError, match=r"bad.toml:\d+: sim.device_cores: must be an integer >= 0"):
        load_sim_config(bad)
    with pytest.raises(ValueError, match="device_cores"):
        replace(tiny_config(), device_cores=-1)


def test_device_work_off_the_path_loads_a_shared_core_and_nothing_else():
    config = two_groups(serving=ServingCosts())
    busy = replace(config, serving=ServingCosts(drafter_background_s=0.004))
    assert mean_e2e(replace(busy, device_cores=1)) > mean_e2e(replace(config, device_cores=1))
    assert timelines(busy) == timelines(config)  # cores of their own: nobody waits for it


def test_requests_draw_their_prompts_curve_from_the_measured_mix():
    base = tiny_config(requests=40, alpha=None)
    same = replace(base, speculation=replace(base.speculation, acceptance=(0.75,), acceptance_mix=((0.75,),)))
    assert timelines(same) == timelines(replace(base, speculation=replace(base.speculation, acceptance=(0.75,))))
    spread = replace(base, speculation=replace(base.speculation, acceptance=(0.75,), acceptance_mix=((0.5,), (0.95,))))
    rounds = sorted(t[4] for t in timelines(spread))
    assert rounds[-1] - rounds[0] > 15  # some requests on the poor prompt, some on the good one


def test_a_node_drafting_for_many_sessions_pays_its_framework_once_per_pass():
    """`drafter_framework` is per round of a pass (by sessions in it), not once per session: eight users on one node lose about
    what one user does per round, and a series over sessions per pass applies at the pass's size."""
    from edgespec.sim.config import Workload

    def per_round_cost(users: int, framework: BatchSeries) -> float:
        base = replace(tiny_config(draft_step_s=0.002, verify_s=0.01, serving=ServingCosts()),
                       workload=Workload("closed", 2 * users, users_per_node=users))
        more = replace(base, serving=ServingCosts(drafter_framework=framework))
        slow, fast = summarize(simulate(more)), summarize(simulate(base))
        return (slow.e2e_s.mean - fast.e2e_s.mean) / (64 / fast.tokens_per_round)

    one, eight = per_round_cost(1, BatchSeries.constant(0.003)), per_round_cost(8, BatchSeries.constant(0.003))
    assert 0.002 < one < 0.004 and 0.002 < eight < 0.006  # per session it would be ≈ 8 × 3 ms at eight users
    grows = per_round_cost(8, BatchSeries((1, 8), (0.003, 0.009)))
    assert grows > 1.5 * eight  # 9 ms at a pass of eight
