"""The SimPy reference model (benchmarks/_simpy_reference.py) models the same system as `edgespec.sim`: a lone session's
timeline matches exactly, and on the speed benchmark's scenario the rounds per session match and the mean latency is close."""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("simpy", reason="simpy is not installed (it is in the test extra: pip install -e '.[test]')")

from sim_helpers import tiny_config  # noqa: E402

from edgespec.sim.run import simulate  # noqa: E402
from edgespec.sim.scenario import load_sim_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _simpy_reference import simulate_simpy  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def test_lone_session_matches_exactly() -> None:
    config = tiny_config(alpha=0.6, gamma=4, output_tokens=40, latency_s=0.003, kind="poisson", requests=1, seed=3)
    ours, ref = simulate(config).sessions[0], simulate_simpy(config).sessions[0]
    assert (ref.rounds, ref.drafted, ref.accepted, ref.emitted) == (ours.rounds, ours.drafted, ours.accepted, ours.emitted)
    assert ref.first_token_s == pytest.approx(ours.first_token_s, rel=1e-9)
    assert ref.finish_s == pytest.approx(ours.finish_s, rel=1e-9)


def test_benchmark_scenario_is_the_same_system() -> None:
    config = load_sim_config(ROOT / "examples" / "sim_benchmark.toml")
    config = replace(config, workload=replace(config.workload, requests=40))
    ours, ref = simulate(config), simulate_simpy(config)
    assert len(ref.sessions) == 40 and all(s.emitted == 160 for s in ref.sessions)
    by_key = sorted(ours.sessions, key=lambda s: s.key)
    assert [s.rounds for s in ref.sessions] == [s.rounds for s in by_key]  # the same acceptance draws per session
    assert [s.arrival_s for s in ref.sessions] == pytest.approx([s.arrival_s for s in by_key])  # the same arrivals
    ours_e2e_s = statistics.fmean(s.finish_s - s.arrival_s for s in ours.sessions)
    assert ref.mean_e2e_s == pytest.approx(ours_e2e_s, rel=0.2)
