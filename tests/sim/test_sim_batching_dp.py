"""The simulator with `batching = "dp"`: scenario files, completion, determinism, the DP's batch sizes, clear errors."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plan"))
from plan_helpers import toy_system  # noqa: E402
from sim_helpers import tiny_config  # noqa: E402

from edgespec.policy.batching import DpBatching  # noqa: E402
from edgespec.sim.cli import run_sim  # noqa: E402
from edgespec.sim.config import VerifierConfig  # noqa: E402
from edgespec.sim.metrics import summarize  # noqa: E402
from edgespec.sim.run import simulate  # noqa: E402
from edgespec.sim.scenario import ScenarioError, load_sim_config  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WINDOW = '''[sim.verifiers]
count = 1
batching = "window"
window_s = 0.002
'''


def _scenario(tmp_path, verifiers: str, extra: str = "") -> Path:
    text = (EXAMPLES / "sim_tiny.toml").read_text()
    assert WINDOW in text
    path = tmp_path / "dp.toml"
    path.write_text(text.replace(WINDOW, verifiers) + extra)
    return path


def _report(cfg) -> dict:
    r = summarize(simulate(cfg)).to_dict()
    for k in ("wall_s", "events_per_s", "conversations_per_s"):
        r.pop(k)
    return r


def test_scenario_with_dp_batching_runs_to_completion_deterministically(tmp_path):
    path = _scenario(tmp_path, '[sim.verifiers]\ncount = 1\nbatching = "dp"\ndp_max_tasks = 8\n')
    cfg = load_sim_config(path, requests=20)
    assert cfg.verifiers.batching == "dp" and cfg.verifiers.dp_max_tasks == 8
    assert cfg.verifiers.plan_system.link.latency_s == pytest.approx(0.005)  # the scenario's [link]
    run = simulate(cfg)
    assert len(run.sessions) == 20 and all(s.emitted == s.output_tokens for s in run.sessions)
    policy = run.verifiers[0].scheduler.policy
    assert isinstance(policy, DpBatching) and policy.calls > 0 and 0 < policy.plans_computed <= policy.calls
    assert _report(cfg) == _report(cfg)  # same seed, same report
    assert _report(cfg) != _report(replace(cfg, seed=cfg.seed + 1))
    assert run_sim(path, requests=8) == 0  # and through the CLI


def test_a_pipelining_plan_halves_the_batches_the_verifier_runs():
    # Four closed-loop sessions on four nodes. With max batching every round verifies all four together; the toy
    # latency model with a drafter as slow as the verifier makes the DP alternate two groups of two (A5).
    base = tiny_config(nodes=4, requests=8, output_tokens=24, gamma=2, kind="closed")
    runs = {}
    for name, vc in (("max", VerifierConfig(batching="max")),
                     ("dp", VerifierConfig(batching="dp", plan_system=toy_system(draft_flops=1e3)))):
        runs[name] = simulate(replace(base, verifiers=vc))
        assert all(s.emitted == s.output_tokens for s in runs[name].sessions)
    assert max(runs["max"].verifiers[0].batch_sizes) == 4
    assert max(runs["dp"].verifiers[0].batch_sizes) == 2


def test_dp_needs_a_latency_model():
    with pytest.raises(ValueError, match="dp"):
        tiny_config(verifiers=VerifierConfig(batching="dp"))  # constant costs and no plan_system


@pytest.mark.parametrize("verifiers,extra,needle", [
    ('[sim.verifiers]\nbatching = "dp"\n', "\n[sim.costs]\ndraft_step_s = 0.01\nverify_step_s = 0.02\n",
     r"sim\.verifiers\.batching: \"dp\" plans with the latency model .* cannot plan with \[sim\.costs\]"),
    ('[sim.verifiers]\nbatching = "window"\ndp_max_tasks = 8\n', "", r"sim\.verifiers\.dp_max_tasks: only applies with batching = \"dp\""),
    ('[sim.verifiers]\nbatching = "dp"\ndp_max_tasks = 0\n', "", r"sim\.verifiers\.dp_max_tasks: must be an integer > 0"),
    ('[sim.verifiers]\nbatching = "plan"\n', "", r"sim\.verifiers\.batching: must be one of window, max, dp; got 'plan'"),
])
def test_scenario_errors_name_the_line_and_field(tmp_path, verifiers, extra, needle):
    path = _scenario(tmp_path, verifiers, extra)
    with pytest.raises(ScenarioError, match=r"dp\.toml:\d+: " + needle):
        load_sim_config(path)


def test_a_session_as_the_dp_sees_it():
    import random

    from edgespec.server.scheduler import QueuedDraft
    from edgespec.sim.batching import session_task_state
    from edgespec.sim.entities import Session

    s = Session(3, 0, None, 0.0, prompt_tokens=10, output_tokens=50, policy=None, curve=(0.9, 0.4), rng=random.Random(0))
    s.emitted, s.gamma = 20, 2
    t = session_task_state(QueuedDraft(s, 0, 1.0, 3))
    assert (t.task_id, t.context_tokens, t.remaining_tokens, t.gamma) == (3, 30, 30, 2)
    assert t.alpha == pytest.approx(0.6)  # geometric mean of the curve over the draft's 2 positions


def test_the_derived_latency_model_uses_the_groups_mean_link():
    from edgespec.sim.batching import plan_system
    from edgespec.sim.links import LinkModel

    cfg = load_sim_config(EXAMPLES / "sim_tiny.toml")
    near, far = cfg.drafters
    cfg = replace(cfg, drafters=(replace(near, count=3, uplink=LinkModel(40e6, 0.002, 0.001)),
                                 replace(far, count=1, uplink=LinkModel(8e6, 0.010))))
    system = plan_system(cfg)
    assert system.link.uplink_bps == pytest.approx((3 * 40e6 + 8e6) / 4)
    assert system.link.latency_s == pytest.approx((3 * 0.003 + 0.010) / 4)
    assert system.verifier is cfg.verify_cost.node and system.drafter is cfg.draft_cost.node
