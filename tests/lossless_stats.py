"""Goodness-of-fit helper shared by the statistical losslessness tests."""

import numpy as np
from scipy.stats import chisquare

# Each test draws with a fixed seed, so its outcome is deterministic; for a correct implementation the
# chance that a given seed lands below this p-value is 1e-4 per test.
P_THRESHOLD = 1e-4


def assert_matches(observed_counts, expected_probs, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit; cells with p = 0 must be empty; cells with few expected counts are pooled."""
    obs = np.asarray(observed_counts, dtype=float).ravel()
    exp_p = np.asarray(expected_probs, dtype=float).ravel()
    n = obs.sum()
    impossible = exp_p <= 0
    assert obs[impossible].sum() == 0, f"tokens with target probability 0 were emitted: {np.nonzero(obs * impossible)[0]}"
    exp = exp_p[~impossible] * n / exp_p[~impossible].sum()
    obs = obs[~impossible]
    small = exp < min_expected
    if small.any():
        exp = np.append(exp[~small], exp[small].sum())
        obs = np.append(obs[~small], obs[small].sum())
    p_value = chisquare(obs, exp).pvalue
    assert p_value > P_THRESHOLD, f"emitted distribution differs from the target's (chi-square p = {p_value:.2e})"
    return p_value
