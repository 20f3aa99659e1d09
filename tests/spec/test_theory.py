"""Theory functions against DESIGN §3's check values and brute force."""

import math

import pytest

from edgespec.spec.theory import (
    as2_choice,
    expected_tokens_per_round,
    fit_alpha,
    leviathan_speedup,
    odld_gamma,
    tkslt_gamma0,
    tkslt_speedup,
)

ALPHAS = (0.4, 0.6, 0.8)
LS = (0.01, 0.1, 0.2, 0.4, 0.6)
TABLE = {0.4: (4, 2, 1, 1, 1), 0.6: (7, 3, 2, 1, 1), 0.8: (14, 6, 4, 2, 1)}


@pytest.mark.parametrize("alpha", ALPHAS)
def test_odld_matches_design_table(alpha):
    assert tuple(odld_gamma(alpha, L) for L in LS) == TABLE[alpha]


def test_tkslt_speedup_check_value():
    assert tkslt_speedup(0.8, 4, 0.2) == pytest.approx(1.868, abs=5e-4)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7, 0.9, 0.95])
@pytest.mark.parametrize("L", [0.02, 0.05, 0.15, 0.3, 0.5, 0.8])
def test_odld_equals_brute_force(alpha, L):
    best = max(range(1, 200), key=lambda g: (tkslt_speedup(alpha, g, L), g))
    assert tkslt_speedup(alpha, odld_gamma(alpha, L), L) == pytest.approx(tkslt_speedup(alpha, best, L), rel=1e-12)


@pytest.mark.parametrize("alpha,L", [(0.5, 0.05), (0.8, 0.1), (0.9, 0.02)])
def test_gamma0_is_stationary_point(alpha, L):
    g0 = tkslt_gamma0(alpha, L)
    h = 1e-5
    deriv = (tkslt_speedup_cont(alpha, g0 + h, L) - tkslt_speedup_cont(alpha, g0 - h, L)) / (2 * h)
    assert abs(deriv) < 1e-6


def tkslt_speedup_cont(alpha, g, L):
    return (1 - alpha ** (g + 1)) / ((1 - alpha) * (1 + g * L))


def test_expected_tokens_closed_form_equals_series():
    for alpha in (0.0, 0.3, 0.77):
        for gamma in range(0, 9):
            assert expected_tokens_per_round(alpha, gamma) == pytest.approx(sum(alpha**i for i in range(gamma + 1)))


def test_leviathan_speedup():
    assert leviathan_speedup(0.8, 4, 0.05) == pytest.approx(expected_tokens_per_round(0.8, 4) / 1.2)
    assert leviathan_speedup(0.5, 0, 0.3) == pytest.approx(1.0)


def test_as2_falls_back_to_ad_when_sd_does_not_pay():
    assert as2_choice(0.1, 0.6).use_sd is False
    assert as2_choice(0.9, 2.0) == as2_choice(0.9, 1.5)  # L >= 1: never speculate
    choice = as2_choice(0.8, 0.2)
    assert choice.use_sd and choice.gamma == 4 and choice.speedup == pytest.approx(1.8676, abs=1e-3)


@pytest.mark.parametrize("bad", [-0.1, 1.0, math.nan])
def test_bad_alpha_rejected(bad):
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_round(bad, 3)


@pytest.mark.parametrize("alpha", [0.05, 0.4, 0.78, 0.97])
def test_fit_alpha_inverts_expected_tokens(alpha):
    assert fit_alpha(expected_tokens_per_round(alpha, 6), 6) == pytest.approx(alpha, abs=1e-9)
    mixed = [6, 6, 2, 0]  # one γ per round: α matches the mean of E(γ_r)
    mean = sum(expected_tokens_per_round(alpha, g) for g in mixed) / len(mixed)
    assert fit_alpha(mean, mixed) == pytest.approx(alpha, abs=1e-9)


def test_fit_alpha_clamps_and_rejects():
    assert fit_alpha(1.0, 4) == 0.0 and fit_alpha(0.5, 4) == 0.0
    assert fit_alpha(5.0, 4) == 1.0 and fit_alpha(9.0, 4) == 1.0
    with pytest.raises(ValueError, match="gamma >= 1"):
        fit_alpha(1.0, [0, 0])
    with pytest.raises(ValueError, match="gamma"):
        fit_alpha(2.0, -1)
