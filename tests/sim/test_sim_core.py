"""The simulator's core semantics: golden timelines, SD accounting against theory, monotonicity, seeding."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from edgespec.sim.config import RequestClass, Workload
from edgespec.sim.kernel import EventLoop, SimulationError
from edgespec.sim.links import Link, LinkModel
from edgespec.sim.metrics import summarize
from edgespec.sim.run import simulate
from edgespec.spec.theory import expected_tokens_per_round, leviathan_speedup
from sim_helpers import tiny_config


# ----------------------------------------------------------------------------- kernel


def test_events_run_in_time_then_priority_then_insertion_order():
    loop, seen = EventLoop(), []
    loop.at(2.0, seen.append, "late")
    loop.at(1.0, seen.append, "b", priority=1)
    loop.at(1.0, seen.append, "a1", priority=0)
    loop.at(1.0, seen.append, "a2", priority=0)
    handle = loop.at(1.5, seen.append, "cancelled")
    loop.cancel(handle)
    loop.run()
    assert seen == ["a1", "a2", "b", "late"]
    assert loop.now_s == 2.0 and loop.events == 4


def test_scheduling_in_the_past_is_an_error():
    loop = EventLoop()
    loop.at(1.0, lambda _: loop.at(0.5, print))
    with pytest.raises(SimulationError, match="past"):
        loop.run()


# ----------------------------------------------------------------------------- golden timelines


def _one(config):
    run = simulate(config)
    assert len(run.sessions) == 1
    return run.sessions[0]


def test_golden_all_accepted():
    """γ=2, α=1, 6 tokens: two rounds of draft 2×10 ms + up 100 ms + verify 50 ms + down 100 ms = 270 ms each."""
    s = _one(tiny_config(alpha=1.0, gamma=2, output_tokens=6, latency_s=0.1))
    assert s.rounds == 2 and s.emitted == 6
    assert s.first_token_s == pytest.approx(0.27, abs=1e-9)
    assert s.finish_s == pytest.approx(0.54, abs=1e-9)
    assert (s.draft_s, s.upload_s, s.verify_s, s.downlink_s) == pytest.approx((0.04, 0.2, 0.1, 0.2), abs=1e-9)


def test_golden_all_rejected_redrafts_and_caps_gamma():
    """α=0, γ=2, 3 tokens: rounds draft γ = 2, 1, 0 (γ ≤ remaining − 1), each emits one token: 0.27 + 0.26 + 0.25 s."""
    s = _one(tiny_config(alpha=0.0, gamma=2, output_tokens=3, latency_s=0.1))
    assert (s.rounds, s.drafted, s.accepted) == (3, 3, 0)
    assert s.first_token_s == pytest.approx(0.27, abs=1e-9)
    assert s.finish_s == pytest.approx(0.78, abs=1e-9)


def test_golden_ad_mode_streams_tokens():
    """Server-only AD: prompt up (100 ms), 4 decode steps of 50 ms back to back, each token 100 ms down."""
    s = _one(tiny_config(mode="ad", output_tokens=4, latency_s=0.1))
    assert s.first_token_s == pytest.approx(0.1 + 0.05 + 0.1, abs=1e-9)
    assert s.finish_s == pytest.approx(0.1 + 4 * 0.05 + 0.1, abs=1e-9)


def test_golden_device_mode_has_no_network():
    s = _one(tiny_config(mode="device", output_tokens=5, latency_s=0.1))
    assert s.finish_s == pytest.approx(5 * 0.01, abs=1e-9) and s.upload_s == 0.0


def test_batching_window_and_two_sessions_share_a_batch():
    """Two nodes' drafts arrive together; one verification of both; the verifier's window is not waited for when all sessions are queued."""
    from edgespec.sim.config import VerifierConfig

    run = simulate(tiny_config(alpha=1.0, gamma=2, output_tokens=3, nodes=2, requests=2, verifiers=VerifierConfig(window_s=1.0)))
    assert [v.batch_sizes for v in run.verifiers] == [[2]]
    assert all(s.finish_s == pytest.approx(0.02 + 0.05, abs=1e-9) for s in run.sessions)


# ----------------------------------------------------------------------------- SD accounting vs theory


@pytest.mark.parametrize("alpha,gamma,c", [(0.8, 4, 0.1), (0.6, 3, 0.2), (0.9, 6, 0.05)])
def test_single_session_speedup_matches_leviathan(alpha, gamma, c):
    """No network, verify = one target step: simulated SD/AD time ratio is E(γ)/(γc+1) within 2 %."""
    t_target = 0.02
    common = dict(alpha=alpha, gamma=gamma, output_tokens=4000, requests=5, draft_step_s=c * t_target, verify_s=t_target, seed=3)
    sd = summarize(simulate(tiny_config(**common)))
    ad = summarize(simulate(tiny_config(mode="ad", **common)))
    measured = ad.e2e_s.mean / sd.e2e_s.mean
    assert measured == pytest.approx(leviathan_speedup(alpha, gamma, c), rel=0.02)
    assert sd.tokens_per_round == pytest.approx(expected_tokens_per_round(alpha, gamma), rel=0.02)


# ----------------------------------------------------------------------------- monotonicity and seeds


def test_a_ragged_batch_costs_as_the_runtime_runs_it():
    """Padded to its widest draft unless the real tokens fill ≤ PACK_SHARE of it; packed, priced between the batch at
    width 1 and at its width in proportion to the tokens beyond one per row (projections follow the tokens)."""
    from edgespec.policy.load import computed_positions, packs
    from edgespec.sim.costs import ConstantCost

    cost = ConstantCost(0.010, per_token_s=0.005, per_seq_s=0.001)
    narrow, wide = cost.step_s(24, 1, 0), cost.step_s(24, 5, 0)
    assert cost.ragged_step_s(24, 24 * 5, 5, 0) == wide  # uniform: padded, nothing to pack
    assert cost.ragged_step_s(24, 24, 1, 0) == narrow
    assert not packs(100, 24, 5) and cost.ragged_step_s(24, 100, 5, 0) == wide  # 83 % real: padded
    mixed = cost.ragged_step_s(24, 32, 5, 0)  # 22 AD rows and 2 rows with γ = 4
    assert packs(32, 24, 5) and narrow < mixed < wide
    assert mixed == pytest.approx(narrow + (wide - narrow) * 8 / 96)
    assert computed_positions(32, 24, 5) == 32 and computed_positions(100, 24, 5) == 120


def test_higher_acceptance_strictly_shortens_completion():
    times = [summarize(simulate(tiny_config(alpha=a, output_tokens=200, requests=20, nodes=4, kind="poisson", seed=5))).e2e_s.mean
             for a in (0.3, 0.5, 0.7, 0.9)]
    assert all(a > b for a, b in zip(times, times[1:])), times


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.floats(1, 1e5), min_size=1, max_size=20), gaps=st.lists(st.floats(0, 0.01), min_size=20, max_size=20),
       rate=st.floats(1e3, 1e9), factor=st.floats(1.0, 100.0), loss=st.sampled_from([0.0, 0.1]), jitter=st.sampled_from([0.0, 0.003]))
def test_more_bandwidth_never_lengthens_upload(sizes, gaps, rate, factor, loss, jitter):
    def arrivals(bps):
        link, now, out = Link(LinkModel(bps, 0.002, jitter, loss), random.Random(7)), 0.0, []
        for size, gap in zip(sizes, gaps):
            now += gap
            out.append(link.send(now, size) - now)
        return out

    slow, fast = arrivals(rate), arrivals(rate * factor)
    assert all(f <= s + 1e-12 for f, s in zip(fast, slow))


def test_more_bandwidth_never_lengthens_upload_in_a_run():
    slow = summarize(simulate(tiny_config(uplink_bps=1e5, latency_s=0.01, output_tokens=100, requests=10, nodes=3, kind="poisson", seed=2)))
    fast = summarize(simulate(tiny_config(uplink_bps=1e7, latency_s=0.01, output_tokens=100, requests=10, nodes=3, kind="poisson", seed=2)))
    assert fast.breakdown_s["upload_s"] < slow.breakdown_s["upload_s"]


def test_same_seed_same_output_different_seed_different_output():
    cfg = tiny_config(alpha=0.7, output_tokens=100, requests=30, nodes=5, kind="poisson", seed=11, latency_s=0.005)
    a, b = summarize(simulate(cfg)).to_dict(), summarize(simulate(cfg)).to_dict()
    c = summarize(simulate(replace(cfg, seed=12))).to_dict()
    for r in (a, b, c):
        r.pop("wall_s"), r.pop("events_per_s"), r.pop("conversations_per_s")
    assert a == b
    assert a != c


def test_link_loss_adds_retransmissions():
    rng = random.Random(1)
    lossy = Link(LinkModel(1e6, 0.0, loss=0.5, retransmit_s=0.1), rng)
    delays = [lossy.send(10.0 * i, 125) - 10.0 * i for i in range(2000)]  # 1 ms per attempt
    mean_failures = 0.5 / (1 - 0.5)
    assert sum(delays) / len(delays) == pytest.approx(0.001 + mean_failures * 0.101, rel=0.1)
    assert math.isclose(min(delays), 0.001)


def test_kv_budget_refuses_then_admits_and_everything_finishes():
    from edgespec.sim.config import VerifierConfig

    cfg = tiny_config(output_tokens=50, input_tokens=10, requests=12, nodes=6, kind="poisson", rate_per_s=100.0,
                      verifiers=VerifierConfig(kv_budget_tokens=120, busy_retry_s=0.01))
    run = simulate(cfg)
    report = summarize(run)
    assert report.refusals > 0 and report.requests == 12
    assert all(v.peak_reserved_tokens <= 120 and v.reserved_tokens == 0 for v in run.verifiers)
    assert report.breakdown_s["admission_s"] > 0


def test_a_request_that_can_never_fit_fails_loudly():
    from edgespec.sim.config import VerifierConfig

    with pytest.raises(SimulationError, match="never fit"):
        simulate(tiny_config(output_tokens=500, verifiers=VerifierConfig(kv_budget_tokens=100)))


@pytest.mark.parametrize("example, gamma_policy", [("sim_tiny.toml", "static"), ("sim_tiny.toml", "confidence"),
                                                   ("sim_benchmark.toml", "static")])
def test_fast_paths_are_exact(monkeypatch, example, gamma_policy):
    """The fast paths change no result: a lone session's block put on the uplink at pass start, drafts
    that arrive during a running batch submitted when it ends instead of by an event each, and a
    verifier's decision taken within the event that asks for it when nothing else is due at that instant.
    SLED's confidence rule drafts γ = 0 at times: passes of zero length, whose end ties with other events."""
    from edgespec.sim import entities
    from edgespec.sim.scenario import load_sim_config
    from pathlib import Path

    cfg = load_sim_config(Path(__file__).resolve().parents[2] / "examples" / example, requests=200)
    cfg = replace(cfg, speculation=replace(cfg.speculation, gamma_policy=gamma_policy))
    fast_run = simulate(cfg)
    monkeypatch.setattr(entities.DrafterNode, "send_ahead", False)
    monkeypatch.setattr(entities.VerifierNode, "batch_inbox", False)
    monkeypatch.setattr(entities.VerifierNode, "inline_decide", False)
    slow_run = simulate(cfg)
    fast, slow = summarize(fast_run), summarize(slow_run)
    assert slow.events > fast.events
    a, b = fast.to_dict(), slow.to_dict()
    for d in (a, b):
        for k in ("wall_s", "events_per_s", "conversations_per_s", "events"):
            d.pop(k)
    assert a == b
    timeline = lambda run: sorted((s.key, s.first_token_s, s.finish_s, s.rounds, s.accepted) for s in run.sessions)
    assert timeline(fast_run) == timeline(slow_run)


def test_policy_factory_gives_each_group_its_own_policy():
    """`SimConfig.policy_factory` builds a session's γ policy from its class and drafter group (here: per-group static γ)."""
    from edgespec.policy.gamma import StaticGamma
    from edgespec.sim.config import DrafterGroup

    base = tiny_config(output_tokens=60, requests=20, nodes=2, kind="poisson", rate_per_s=20.0, seed=6)
    near = base.drafters[0]
    far = DrafterGroup("far", 2, near.uplink, near.downlink, alpha=0.9)
    cfg = replace(base, drafters=(replace(near, name="near"), far),
                  policy_factory=lambda klass, group: StaticGamma(2 if group.name == "near" else 7))
    run = simulate(cfg)
    mean_gamma = {g: sum(s.drafted for s in run.sessions if s.node.group == i) / sum(s.rounds for s in run.sessions if s.node.group == i)
                  for i, g in enumerate(("near", "far"))}
    assert mean_gamma["near"] <= 2.0 and mean_gamma["far"] > 5.0, mean_gamma


# ----------------------------------------------------------------------------- closed loop, requests per user


def _per_user(gamma: int, seed: int = 3):
    cfg = tiny_config(alpha=0.7, output_tokens=40, nodes=3, gamma=gamma, seed=seed, latency_s=0.004)
    return replace(cfg, classes=(RequestClass("a", 16, 40), RequestClass("b", 8, 24)), drafters=(replace(cfg.drafters[0], count=2), replace(cfg.drafters[0], name="slow", count=1, alpha=0.9)),
                   workload=Workload("closed", 1, users_per_node=2, think_time_s=0.05, requests_per_user=4))


def test_requests_per_user_gives_every_user_its_quota_and_every_policy_the_same_requests():
    runs = {g: simulate(_per_user(g)) for g in (2, 6)}
    assert _per_user(2).request_count == 24
    for run in runs.values():
        per_user = Counter((s.node.index, s.user) for s in run.sessions)
        assert per_user == {(n, u): 4 for n in range(3) for u in range(2)}
    same = [sorted((s.key, s.node.index, s.user, s.klass, s.output_tokens) for s in run.sessions) for run in runs.values()]
    assert same[0] == same[1]  # the same requests, though finishing in another order
    ends = [{s.key: s.finish_s for s in run.sessions} for run in runs.values()]
    assert ends[0] != ends[1]
    # with a first-come total (`requests`) the two policies serve different requests: users' shares and classes differ
    shared = [simulate(replace(_per_user(g), workload=Workload("closed", 24, users_per_node=2, think_time_s=0.05))) for g in (2, 6)]
    assert all(len(r.sessions) == 24 for r in shared)
    served = [sorted((s.key, s.node.index, s.user, s.klass, s.output_tokens) for s in r.sessions) for r in shared]
    assert served[0] != served[1]


def test_requests_per_user_is_for_closed_loop_only():
    with pytest.raises(ValueError, match="requests_per_user"):
        replace(_per_user(4), workload=Workload("poisson", 10, requests_per_user=2))
