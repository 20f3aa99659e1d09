"""`edgespec profile --serving`: options are checked before any work, and a short measurement of real nodes on a testbed gives a loadable, sensible serving profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgespec.cli import app
from edgespec.testbed.check import probe

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("args, option", [
    (["--answer-tokens", "64"], "--answer-tokens"),  # serving options without --serving
    (["--attach-verifier", "127.0.0.1:1"], "--attach-verifier"),
    (["--serving", "--answer-tokens", "1"], "--answer-tokens"),
    (["--serving", "--answer-tokens", "a,b"], "--answer-tokens"),
    (["--serving", "--q-mode", "sparse"], "--q-mode"),
    (["--serving", "--scenario", "missing.toml"], "--scenario"),
    (["--serving", "--attach-verifier", "127.0.0.1:1"], "--attach-metrics"),
    (["--serving", "--attach-verifier", "nope", "--attach-metrics", "http://x/metrics", "--attach-drafters", "127.0.0.1:2"], "--attach-verifier"),
    (["--serving", "--attach-verifier", "127.0.0.1:1", "--attach-metrics", "x", "--attach-drafters", "127.0.0.1:2"], "--attach-metrics"),
    (["--serving", "--auth-token-file", "t"], "--auth-token-file"),
    (["--max-host-load", "1"], "--max-host-load"),
    (["--serving", "--max-host-load", "-1"], "--max-host-load"),
    (["--batch-sizes", "1,2"], "--batch-sizes"),
    (["--serving", "--batch-sizes", "0,2"], "--batch-sizes"),
    (["--serving", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["--serving", "--batch-sizes", "1,65"], "--batch-sizes"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, args, option):
    result = runner.invoke(app, ["profile", "--out", str(tmp_path / "p.json"), *args])
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "p.json").exists()


def test_a_scenario_gives_the_setting_lengths_and_quotas():
    from edgespec.models.serving_profile import plan_from_scenario

    hetero = plan_from_scenario(ROOT / "examples" / "testbed_hetero.toml")
    assert (hetero.gamma, hetero.q_mode, hetero.temperature, hetero.answer_tokens, hetero.slowdowns) == (4, "tokens", 0.0, (64,), (2.0,))
    assert hetero.batch_window_ms == pytest.approx(2.0)  # the verifier batches as the scenario's (and the testbed's) does
    slow = plan_from_scenario(ROOT / "examples" / "testbed_slowlinks.toml", answer_tokens=(32, 48))
    assert (slow.gamma, slow.q_mode, slow.top_k, slow.temperature, slow.answer_tokens, slow.slowdowns) == (3, "topk", 8, 1.0, (32, 48), (2.0, 3.0))
    assert slow.setting.label() == "topk K=8 T=1" and hetero.setting.label() == "greedy"
    # the probe measures a batch with as many sessions open as the scenario's closed-loop users keep at the verifier
    assert (hetero.probe_grid.open_sessions, slow.probe_grid.open_sessions) == (4, 5)


def test_batch_sizes_set_the_probe_and_the_bare_grid():
    from edgespec.models.serving_cli import _plan

    plan = _plan(None, None, None, None, None, None, False, 0, False, batch_sizes="24,1,8")
    assert plan.batch_sizes == (1, 8, 24) and plan.probe_grid.batch_sizes == (1, 8, 24) and plan.probe_grid.open_sessions == 0
    scenario = _plan(ROOT / "examples" / "testbed_hetero.toml", None, None, None, None, None, False, 0, False, batch_sizes="1,2")
    assert scenario.probe_grid.batch_sizes == (1, 2) and scenario.probe_grid.open_sessions == 4


def test_the_profile_prompts_are_not_the_benchmark_prompts():
    from edgespec.bench.prompts import PROMPTS
    from edgespec.models.serving_profile import PROFILE_PROMPTS

    assert not set(PROFILE_PROMPTS) & set(PROMPTS) and len(PROFILE_PROMPTS) >= 2 * len(PROMPTS)


@pytest.mark.parametrize("scenario", ["testbed_hetero.toml", "testbed_slowlinks.toml"])
def test_the_profile_workload_is_not_the_fidelity_runs(scenario):
    """benchmarks/testbed_fidelity.py sends the scenario's workload (workload_of) on its links; the profile sends its own
    prompts, in waves of 1, 2 and 4 sessions started together, on nodes with links of no latency."""
    from edgespec.models.serving_profile import PROFILE_PROMPTS, _testbed_spec, plan_from_scenario
    from edgespec.sim.scenario import load_sim_config
    from edgespec.testbed.run import workload_of

    config = load_sim_config(ROOT / "examples" / scenario)
    fidelity = workload_of(config)
    assert fidelity.prompts and not set(fidelity.prompts) & set(PROFILE_PROMPTS)
    assert fidelity.workload.kind == "closed" and fidelity.workload.users_per_node == 1
    profile_bed = _testbed_spec(plan_from_scenario(ROOT / "examples" / scenario), 4)
    assert all(d.uplink.latency_s == 0 and d.slowdown == 1 for d in profile_bed.drafters)
    assert all(g.uplink.latency_s > 0 for g in config.drafters) and any(g.slowdown > 1 for g in config.drafters)


CAPS = probe()


@pytest.mark.slow
@pytest.mark.skipif(CAPS.missing is not None or CAPS.cpu_quota is not None,
                    reason=CAPS.summary() if CAPS.missing else f"no CPU quota: {CAPS.cpu_quota}")
def test_a_short_serving_profile_of_real_nodes(tmp_path):
    """The whole measurement, shortened (few rounds, one probe repeat): every term is measured, positive where it must be, and loads back.
    Other tests may run meanwhile (pytest -n 2): the host-load check is relaxed (it guards a profile's accuracy, not its structure)."""
    from edgespec.plan.pairprofile import load_pair_profile
    from edgespec.plan.servingprofile import load_serving_profile

    out = tmp_path / "serving.json"
    result = runner.invoke(app, ["profile", "--serving", "--quick", "--out", str(out), "--answer-tokens", "24",
                                 "--scenario", str(ROOT / "examples" / "testbed_hetero.toml"), "--max-host-load", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    pp = load_pair_profile(out)
    sp = load_serving_profile(out)
    assert pp.format == "edgespec-pair-profile/2" and summary["format"] == pp.format
    assert sp.setting.gamma == 4 and sp.setting.q_mode == "tokens" and pp.acceptance[0].answer_tokens == 24
    assert (sp.target_forward.step.time_s > 0).all() and (sp.draft_step.step.time_s > 0).all()
    assert sp.target_forward.prefill is not None and sp.quota is not None and sp.shared_core is not None
    for value in (sp.open_s, sp.request_s, sp.overlap_s, *sp.verifier_framework.seconds, *sp.drafter_framework.seconds):
        assert math.isfinite(value) and value >= 0
    assert sp.open_s > 0 and sp.request_s > 0 and sp.first_round_s > sp.target_forward.step.time_s[0, 0]
    assert 0 < sp.core_efficiency() <= 1 and 0 < sp.quota_cap(2.0) <= 1


def test_a_node_phase_disturbed_by_other_processes_is_measured_again_and_refused_when_it_stays_so(monkeypatch):
    """Other processes' CPU would count as the devices' (and slow the nodes): such a phase is taken again, at most 3 times."""
    from edgespec.models import serving_profile as sp
    from edgespec.testbed.cpuload import LoadReport

    loads = iter([0.4, 0.3, 0.02])
    monkeypatch.setattr(sp, "_one_phase", lambda *a: sp._Phase([], {}, {}, 1.0, LoadReport(1.0, next(loads), (0.5, 0.5))))
    said = []
    ph = sp._run_phase(None, {"d0": 1}, 1, 8, sp.ServingPlan(), 0, "one session", lambda *_: None, said.append)
    assert ph.host.foreign_cores == 0.02 and len(said) == 2 and "0.40 cores" in said[0]
    loads = iter([0.4, 0.3, 0.2])
    with pytest.raises(sp.HostBusy, match=r"one session: other processes of this host took 0.20 cores .* in each of 3 tries"):
        sp._run_phase(None, {"d0": 1}, 1, 8, sp.ServingPlan(), 0, "one session", lambda *_: None)
