"""Fidelity (issue 5): a real loopback deployment and the calibrated simulator agree on mean end-to-end latency.

A reduced run of benchmarks/sim_fidelity.py's workflow (benchmarks/_fidelity.py): the bundled pair profiled
on a small grid (batch 1-2, verification of 1 and γ + 1 = 5 tokens, 3 repeats, the greedy acceptance curve of
the 8 benchmark prompts at 32 new tokens), a verifier node in its own process and a drafter node here on
127.0.0.1, S = 1 and 2 closed-loop sessions sending 8 greedy requests of 32 tokens (EOS ignored), then
`edgespec.sim` on the same workload, calibrated from the same run (per-round framework time on the links,
in-run/profile compute ratios), averaged over 10 seeds.

Bound: |sim / real − 1| ≤ 35 % on mean end-to-end latency at each S. The issue's 15 % is for the
benchmark's workload (its figure is in docs/simulator.md); this run is a few seconds long, so the
cold start and timing noise weigh more, and it may share the CPU with another test worker.
The comparison can fail: the same scenario with every draft rejected (acceptance 0: one token per round)
must miss the bound by far, and the uncalibrated errors are reported in the assertion messages.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
BOUND = 0.35
SESSIONS = (1, 2)
REQUESTS, MAX_TOKENS, GAMMA, WINDOW_S, SEEDS = 8, 32, 4, 0.002, 10


@pytest.fixture(scope="module")
def fidelity(tmp_path_factory):
    """Profile, real runs and simulated versions of the reduced workload (one run for every test here)."""
    sys.path.insert(0, str(BENCHMARKS))  # the spawned verifier process imports _fidelity too: keep it until the end
    try:
        yield _measure(tmp_path_factory.mktemp("fidelity"))
    finally:
        sys.path.remove(str(BENCHMARKS))


def _measure(out: Path) -> dict:
    import torch

    import _fidelity as fid
    from _serving import PROMPTS, encode
    from edgespec.models.bundle import bundled_path
    from edgespec.models.runtime import CausalLM

    torch.set_num_threads(1)
    draft, target = CausalLM.load(bundled_path("draft")), CausalLM.load(bundled_path("target"))
    prompts = [encode(draft, p) for p in PROMPTS]
    grid = replace(fid.fidelity_grid(SESSIONS, GAMMA, MAX_TOKENS, statistics.fmean(len(p) for p in prompts), quick=True), repeats=3)
    profile = fid.measure_profile(draft, target, grid, prompts, out / "pair.json")
    with fid.VerifierProcess(None, 1, batch_window_ms=1000 * WINDOW_S, max_gamma=GAMMA) as verifier:
        runs = asyncio.run(fid.run_real(draft, prompts, verifier, SESSIONS, REQUESTS, MAX_TOKENS, GAMMA))
    sims, cals = fid.simulate_versions(runs, profile, draft, target, prompts, max_tokens=MAX_TOKENS, gamma=GAMMA, window_s=WINDOW_S,
                                       out=out, seeds=SEEDS)
    return {"fid": fid, "out": out, "profile": profile, "runs": runs, "sims": sims, "cals": cals, "rows": fid.rows_of(runs, sims),
            "draft": draft, "target": target, "prompts": prompts}


def _describe(row: dict) -> str:
    return (f"S={row['sessions']}: real {row['real']['e2e_ms']:.0f} ms; "
            + ", ".join(f"{name} {row[name]['e2e_ms']:.0f} ms ({100 * row[name]['rel_error_e2e']:+.0f} %)" for name in ("profile", "+framework", "calibrated")))


def test_real_run_is_what_was_asked(fidelity):
    for s, run in fidelity["runs"].items():
        assert len(run.e2e_s) == REQUESTS and set(run.tokens) == {MAX_TOKENS}
        assert run.rounds and run.batches and run.passes
        assert 0.0 < run.acceptance < 1.0
        assert max(b.drafts for b in run.batches) <= s
    cal = fidelity["cals"][1]
    assert cal.framework_s > 0 and cal.verify_ratio > 0 and cal.draft_ratio > 0


def test_calibrated_simulator_agrees_on_mean_latency(fidelity):
    for row in fidelity["rows"]:
        err = row["calibrated"]["rel_error_e2e"]
        assert abs(err) <= BOUND, f"|sim/real − 1| = {100 * abs(err):.1f} % > {100 * BOUND:.0f} %: {_describe(row)}"


def test_simulated_acceptance_matches_the_real_run(fidelity):
    """The greedy curve measured on the same prompts and lengths gives the run's acceptance (rounds decide latency)."""
    for row in fidelity["rows"]:
        assert row["calibrated"]["acceptance"] == pytest.approx(row["real"]["acceptance"], abs=0.08), _describe(row)


def test_a_wrong_model_misses_the_bound(fidelity):
    """Negative control: every draft rejected (one token per round) — the same comparison must fail it."""
    from edgespec.plan.pairprofile import load_pair_profile, write_pair_profile

    fid, out = fidelity["fid"], fidelity["out"]
    s = SESSIONS[-1]
    calibrated = load_pair_profile(out / f"pair_S{s}_calibrated.json")
    never = replace(calibrated, acceptance=tuple(replace(c, per_position=(0.0,) * len(c.per_position), alpha=0.0) for c in calibrated.acceptance))
    write_pair_profile(never, out / "pair_never.json")
    run = fidelity["runs"][s]
    scenario = fid.write_scenario(out / "never.toml", name="never", pair_profile=Path("pair_never.json"), draft_lm=fidelity["draft"],
                                  target_lm=fidelity["target"], prompt_lengths=[len(p) for p in fidelity["prompts"]], max_tokens=MAX_TOKENS,
                                  sessions=s, requests=REQUESTS, gamma=GAMMA, window_s=WINDOW_S,
                                  latency_s=fidelity["cals"][s].framework_s / 2, alpha=0.0)
    wrong = fid.simulate_mean(scenario, 2)
    assert abs(fid.rel(wrong.e2e_s, statistics.fmean(run.e2e_s))) > BOUND
