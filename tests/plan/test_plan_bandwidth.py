"""Bandwidth allocation: budgets, equalised finish times, and closed forms against a generic scipy solver."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq, minimize

from edgespec.plan.bandwidth import (
    Channels,
    allocate,
    min_makespan_shares,
    min_max_fixed,
    min_max_shares,
    min_sum_fixed,
    min_sum_shares,
    rate_bps,
    required_bandwidth_hz,
    upload_times_s,
)

TOTAL_HZ = 1e6


def fixed_channels(rng, k):
    return Channels(rng.uniform(1e3, 1e6, k), rng.uniform(0.5, 8.0, k), np.full(k, np.nan))


def shannon_channels(rng, k):
    # a = P·g/N0 between 1e5 and 1e9 Hz: per-task SNR over 1 MHz from -10 dB to 30 dB
    return Channels(rng.uniform(1e3, 1e6, k), np.full(k, np.nan), 10 ** rng.uniform(5, 9, k))


def mixed_channels(rng, k):
    fixed = fixed_channels(rng, k)
    sh = shannon_channels(rng, k)
    use_fixed = rng.random(k) < 0.5
    return Channels(fixed.bits, np.where(use_fixed, fixed.efficiency_bps_per_hz, np.nan),
                    np.where(use_fixed, np.nan, sh.snr_hz))


MAKERS = [fixed_channels, shannon_channels, mixed_channels]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("rule", ["uniform", "min_max", "min_sum"])
def test_shares_sum_to_budget_and_are_non_negative(make, rule):
    rng = np.random.default_rng(1)
    for k in (1, 2, 7, 40):
        b = allocate(rule, make(rng, k), TOTAL_HZ)
        assert b.shape == (k,)
        assert np.all(b >= 0)
        assert b.sum() == pytest.approx(TOTAL_HZ, rel=1e-9)


@pytest.mark.parametrize("make", MAKERS)
def test_min_max_equalises_finish_times(make):
    rng = np.random.default_rng(2)
    for _ in range(5):
        ch = make(rng, 12)
        b, t_star = min_max_shares(ch, TOTAL_HZ)
        times = upload_times_s(ch, b)
        assert np.allclose(times, t_star, rtol=1e-7)
        # any other split is no better: uniform is worse or equal
        assert upload_times_s(ch, allocate("uniform", ch, TOTAL_HZ)).max() >= t_star * (1 - 1e-9)


def _scipy_min_max(ch: Channels) -> float:
    """min t s.t. T_k(b) ≤ t, Σb = B, b ≥ 0, by SLSQP on x = (b/B, t)."""
    k = len(ch)
    x0 = np.append(np.full(k, 1.0 / k), upload_times_s(ch, np.full(k, TOTAL_HZ / k)).max())
    cons = [
        {"type": "eq", "fun": lambda x: x[:k].sum() - 1.0},
        {"type": "ineq", "fun": lambda x: x[k] - upload_times_s(ch, np.maximum(x[:k], 1e-12) * TOTAL_HZ)},
    ]
    res = minimize(lambda x: x[k], x0, constraints=cons, bounds=[(1e-9, 1)] * k + [(0, None)], method="SLSQP",
                   options={"maxiter": 500, "ftol": 1e-12})
    return float(res.x[k])


def _scipy_min_sum(ch: Channels) -> float:
    k = len(ch)
    cons = [{"type": "eq", "fun": lambda x: x.sum() - 1.0}]
    res = minimize(lambda x: upload_times_s(ch, np.maximum(x, 1e-12) * TOTAL_HZ).sum(), np.full(k, 1.0 / k),
                   constraints=cons, bounds=[(1e-9, 1)] * k, method="SLSQP", options={"maxiter": 500, "ftol": 1e-14})
    return float(upload_times_s(ch, np.maximum(res.x, 1e-12) * TOTAL_HZ / res.x.sum()).sum())


@pytest.mark.parametrize("make", [fixed_channels, shannon_channels])
def test_min_max_matches_scipy(make):
    rng = np.random.default_rng(3)
    for _ in range(4):
        ch = make(rng, int(rng.integers(2, 6)))
        _, t_star = min_max_shares(ch, TOTAL_HZ)
        assert t_star == pytest.approx(_scipy_min_max(ch), rel=1e-4)


@pytest.mark.parametrize("make", [fixed_channels, shannon_channels])
def test_min_sum_matches_scipy(make):
    rng = np.random.default_rng(4)
    for _ in range(4):
        ch = make(rng, int(rng.integers(2, 6)))
        b, total = min_sum_shares(ch, TOTAL_HZ)
        assert total == pytest.approx(upload_times_s(ch, b).sum(), rel=1e-9)
        reference = _scipy_min_sum(ch)
        assert total <= reference * (1 + 1e-6)
        assert total == pytest.approx(reference, rel=1e-4)


def test_fixed_closed_forms_by_hand():
    bits = np.array([1e6, 4e6])
    eff = np.array([1.0, 1.0])
    b, t = min_max_fixed(bits, eff, 5e6)
    assert b == pytest.approx([1e6, 4e6]) and t == pytest.approx(1.0)
    b, total = min_sum_fixed(bits, eff, 3e6)  # b ∝ sqrt(D): 1 : 2
    assert b == pytest.approx([1e6, 2e6]) and total == pytest.approx(1.0 + 2.0)


def test_required_bandwidth_inverts_the_shannon_rate():
    rng = np.random.default_rng(5)
    ch = shannon_channels(rng, 20)
    max_rate = ch.snr_hz / np.log(2)
    target = max_rate * rng.uniform(0.01, 0.99, 20)
    b = required_bandwidth_hz(ch, target)
    assert np.allclose(rate_bps(ch, b), target, rtol=1e-9)
    for k in range(3):  # against a bracketing root finder
        f = lambda x, k=k: x * np.log2(1 + ch.snr_hz[k] / x) - target[k]  # noqa: E731
        assert b[k] == pytest.approx(brentq(f, 1e-12, 1e15, xtol=1e-9, rtol=1e-13), rel=1e-8)
    assert np.isinf(required_bandwidth_hz(ch, max_rate * 1.01)).all()


@pytest.mark.parametrize("make", MAKERS)
def test_min_makespan_shares_meets_deadlines_tightly(make):
    rng = np.random.default_rng(6)
    ch = make(rng, 9)
    tails = rng.choice([0.0, 0.5, 2.0], 9)
    b, t = min_makespan_shares(ch, tails, TOTAL_HZ)
    assert b.sum() == pytest.approx(TOTAL_HZ, rel=1e-9) and np.all(b >= 0)
    assert np.all(upload_times_s(ch, b) <= (t - tails) * (1 + 1e-7))
    # a slightly earlier end is infeasible: the budget is exceeded
    need = required_bandwidth_hz(ch, ch.bits / (t * (1 - 1e-6) - tails))
    assert need.sum() > TOTAL_HZ
    # equal tails reduce to min-max
    _, t0 = min_makespan_shares(ch, np.zeros(9), TOTAL_HZ)
    assert t0 == pytest.approx(min_max_shares(ch, TOTAL_HZ)[1], rel=1e-7)
