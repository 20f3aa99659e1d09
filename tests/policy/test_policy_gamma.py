"""γ policies: one interface, explicit time, and the documented update rules."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.policy.gamma import (
    ConfidenceGamma,
    GammaPolicy,
    HeuristicGamma,
    LeviathanGamma,
    OdldGamma,
    RoundObservation,
    RunningEstimates,
    StaticGamma,
)
from edgespec.spec.theory import as2_choice, leviathan_speedup


def all_policies():
    return [StaticGamma(4), HeuristicGamma(), ConfidenceGamma(0.3), OdldGamma(), LeviathanGamma()]


@pytest.mark.parametrize("policy", all_policies(), ids=lambda p: type(p).__name__)
def test_shared_interface(policy):
    assert isinstance(policy, GammaPolicy)
    g = policy.gamma(now_s=1.0)
    assert isinstance(g, int) and 0 <= g <= policy.max_gamma
    assert isinstance(policy.should_stop(0.99), bool)
    policy.observe(RoundObservation(drafted=g, accepted=g, now_s=1.0, draft_time_s=0.01, verify_time_s=0.1))


def test_observation_is_validated():
    with pytest.raises(ValueError):
        RoundObservation(drafted=2, accepted=3)


def test_static():
    p = StaticGamma(3)
    p.observe(RoundObservation(3, 0))
    assert p.gamma() == 3 and not p.should_stop(0.0)


def test_heuristic_plus_two_minus_one_clamped():
    p = HeuristicGamma(initial=4, min_gamma=2, max_gamma=7)
    seq = []
    for accepted in (4, 6, 7, 7, 0, 2, 0, 0, 0):
        p.observe(RoundObservation(drafted=p.gamma(), accepted=min(accepted, p.gamma())))
        seq.append(p.gamma())
    assert seq == [6, 7, 7, 7, 6, 5, 4, 3, 2]
    p.observe(RoundObservation(drafted=0, accepted=0))  # an AD round changes nothing
    assert p.gamma() == 2


def test_confidence_stops_at_first_low_probability_draft():
    p = ConfidenceGamma(threshold=0.4, max_gamma=5)
    probs = [0.9, 0.7, 0.35, 0.95]
    drafted = []
    for q in probs[: p.gamma()]:
        if p.should_stop(q):
            break
        drafted.append(q)
    assert drafted == [0.9, 0.7]
    assert p.gamma() == 5


def test_running_alpha_is_the_truncated_geometric_mle():
    rng = np.random.default_rng(0)
    est = RunningEstimates(alpha=0.5, smoothing=0.01)
    true_alpha, gamma = 0.8, 4
    for _ in range(20_000):
        accepted = 0
        while accepted < gamma and rng.random() < true_alpha:
            accepted += 1
        est.update(RoundObservation(gamma, accepted))
    assert est.alpha == pytest.approx(true_alpha, abs=0.03)


def test_running_time_ratios():
    est = RunningEstimates(c=0.0, b=0.0, smoothing=1.0)
    est.update(RoundObservation(drafted=4, accepted=2, draft_time_s=0.02, upload_time_s=0.004, verify_time_s=0.05))
    assert est.c == pytest.approx(0.02 / 4 / 0.05) and est.b == pytest.approx(0.004 / 4 / 0.05)
    assert est.L == pytest.approx(est.b + est.c)


def test_odld_follows_as2_from_observations():
    p = OdldGamma(max_gamma=20, estimates=RunningEstimates(smoothing=0.2))
    for _ in range(200):  # α ≈ 0.8 (3 accepted then a rejection), c = 0.1, b = 0.1
        p.observe(RoundObservation(drafted=4, accepted=3, draft_time_s=0.04, upload_time_s=0.04, verify_time_s=0.1))
    est = p.estimates
    assert est.alpha == pytest.approx(0.75, abs=1e-6) and est.L == pytest.approx(0.2)
    assert p.gamma() == as2_choice(est.alpha, est.L).gamma


def test_odld_falls_back_to_ad_when_drafting_is_too_slow():
    p = OdldGamma(estimates=RunningEstimates(alpha=0.3, c=0.9))
    assert p.gamma() == 0
    assert OdldGamma(use_as2=False, estimates=RunningEstimates(alpha=0.3, c=0.9)).gamma() == 1
    assert OdldGamma(min_gamma=2, estimates=RunningEstimates(alpha=0.3, c=0.9)).gamma() == 2


def test_odld_survives_extreme_estimates():
    assert 1 <= OdldGamma(max_gamma=8, estimates=RunningEstimates(alpha=0.1, c=0.0)).gamma() <= 8
    assert OdldGamma(max_gamma=8, estimates=RunningEstimates(alpha=0.0, c=0.1)).gamma() == 0


def test_leviathan_maximises_speedup():
    p = LeviathanGamma(max_gamma=12, estimates=RunningEstimates(alpha=0.8, c=0.05))
    best = max(range(1, 13), key=lambda g: leviathan_speedup(0.8, g, 0.05))
    assert p.gamma() == best


def test_bad_ranges():
    with pytest.raises(ValueError):
        HeuristicGamma(min_gamma=5, max_gamma=2)
    with pytest.raises(ValueError):
        ConfidenceGamma(threshold=1.5)
    with pytest.raises(ValueError):
        RunningEstimates(smoothing=0.0)
