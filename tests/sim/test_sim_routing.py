"""Several verifiers: each routing policy spreads sessions over all of them."""

from __future__ import annotations

from collections import Counter

import pytest

from edgespec.sim.config import VerifierConfig
from edgespec.sim.run import simulate
from sim_helpers import tiny_config


@pytest.mark.parametrize("routing", ["round_robin", "jsq", "power_of_two"])
def test_simulator_spreads_sessions_over_verifiers(routing):
    run = simulate(tiny_config(output_tokens=40, requests=60, nodes=6, kind="poisson", rate_per_s=40.0, latency_s=0.002,
                               verifiers=VerifierConfig(count=3, window_s=0.0), routing=routing, seed=4))
    per_verifier = Counter(s.verifier for s in run.sessions)
    assert len(run.sessions) == 60 and set(per_verifier) == {0, 1, 2}
    assert min(per_verifier.values()) >= 8, per_verifier
