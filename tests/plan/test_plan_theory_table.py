"""TK-SLT's optimal draft length table (DESIGN §3) as the planner and the γ policy see it."""

from __future__ import annotations

import pytest

from edgespec.policy.gamma import OdldGamma, RunningEstimates
from edgespec.spec.theory import odld_gamma, tkslt_speedup

TABLE = {0.4: (4, 2, 1, 1, 1), 0.6: (7, 3, 2, 1, 1), 0.8: (14, 6, 4, 2, 1)}
LS = (0.01, 0.1, 0.2, 0.4, 0.6)


@pytest.mark.parametrize("alpha", sorted(TABLE))
def test_odld_table(alpha):
    assert tuple(odld_gamma(alpha, L) for L in LS) == TABLE[alpha]


def test_speedup_check_value():
    assert tkslt_speedup(0.8, 4, 0.2) == pytest.approx(1.868, abs=5e-4)


@pytest.mark.parametrize("alpha", sorted(TABLE))
def test_odld_policy_reproduces_the_table_from_its_estimates(alpha):
    for L, want in zip(LS, TABLE[alpha]):
        odld = OdldGamma(max_gamma=32, use_as2=False, estimates=RunningEstimates(alpha=alpha, c=L, b=0.0))
        assert odld.gamma() == want
        # AS² keeps γ* where speculation pays off and falls back to AD (γ = 0) where S(γ*) ≤ 1
        as2 = OdldGamma(max_gamma=32, use_as2=True, estimates=RunningEstimates(alpha=alpha, c=L / 2, b=L / 2))
        assert as2.gamma() == (want if tkslt_speedup(alpha, want, L) > 1 else 0)
