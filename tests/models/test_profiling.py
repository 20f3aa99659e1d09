"""`edgespec profile` on toy models: table shapes and monotonicity, valid acceptance curves, draft == target accepts everything, the per-round hook, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgespec.cli import app
from edgespec.models.decoder import GenerationConfig, generate_sd
from edgespec.models.profiling import AcceptanceSetting, ProfileGrid, _monotone, measure_acceptance, measure_pair
from edgespec.plan.pairprofile import acceptance_curve, load_pair_profile, pair_profile_from_dict, pair_profile_to_dict
from edgespec.spec.sampling import SamplingParams

TINY = ProfileGrid(
    batch_sizes=(1, 2, 3), verify_tokens=(1, 3), prefill_batch_sizes=(1, 2), prefill_tokens=(4, 8), context_tokens=16,
    warmup=0, repeats=1, max_gamma=3, new_tokens=12,
    settings=(AcceptanceSetting("tokens", 0.0), AcceptanceSetting("full", 1.0), AcceptanceSetting("topk", 0.7, 4)),
)
PROMPTS = [[0, 5, 9, 12], [0, 7], [0, 30, 31, 2, 8]]


def _never(_phase, _done, _total):
    pass


@pytest.fixture(scope="module")
def toy_profile(toy_pair):
    draft, target = toy_pair
    phases: dict = {}
    pp = measure_pair(draft, target, TINY, PROMPTS, progress=lambda ph, d, t: phases.__setitem__(ph, (d, t)), command="test")
    return pp, phases


def test_tables_follow_the_grid_and_never_decrease(toy_profile):
    pp, _ = toy_profile
    for prof, tokens in ((pp.draft, TINY.draft_tokens), (pp.target, TINY.verify_tokens)):
        assert prof.step.batch_sizes.tolist() == list(TINY.batch_sizes)
        assert prof.step.tokens.tolist() == list(tokens)
        assert prof.prefill.batch_sizes.tolist() == list(TINY.prefill_batch_sizes)
        assert prof.prefill.tokens.tolist() == list(TINY.prefill_tokens)
        for table in (prof.step.time_s, prof.prefill.time_s):
            assert np.all(table > 0) and np.all(np.isfinite(table))
            assert np.all(np.diff(table, axis=0) >= 0) and np.all(np.diff(table, axis=1) >= 0)
        assert prof.context_tokens == TINY.context_tokens and prof.dtype == "float32"
    assert pp.meta["threads"] >= 1 and pp.meta["command"] == "test" and pp.meta["max_gamma"] == 3


def test_curves_are_valid_and_survive_the_file_format(toy_profile, tmp_path):
    pp, _ = toy_profile
    assert [c.label for c in pp.acceptance] == ["greedy", "full T=1", "topk K=4 T=0.7"]
    for curve in pp.acceptance:
        assert len(curve.per_position) == TINY.max_gamma
        assert all(0.0 <= a <= 1.0 for a in curve.per_position) and 0.0 <= curve.alpha <= 1.0
        assert curve.rounds >= len(PROMPTS) and 0 < curve.drafted_tokens <= curve.rounds * TINY.max_gamma
    again = pair_profile_from_dict(json.loads(json.dumps(pair_profile_to_dict(pp))))
    assert again.acceptance == pp.acceptance
    assert acceptance_curve(again, "topk", 0.7, top_k=4) == pp.acceptance[2]


def test_progress_reports_every_phase_to_completion(toy_profile):
    _, phases = toy_profile
    assert set(phases) == {"draft steps", "draft prefill", "target steps", "target prefill", "acceptance greedy",
                           "acceptance full T=1", "acceptance topk K=4 T=0.7"}
    assert all(done == total for done, total in phases.values())


def test_draft_equal_to_target_is_always_accepted_when_greedy(toy_pair):
    _, target = toy_pair
    curve = measure_acceptance(target, target, AcceptanceSetting("tokens", 0.0), PROMPTS, TINY, _never)
    assert curve.per_position == (1.0, 1.0, 1.0) and curve.alpha == 1.0


def test_tokens_only_q_accepts_less_than_everything_even_for_equal_models(toy_pair):
    _, target = toy_pair  # one-hot q accepts x with probability p(x) < 1
    curve = measure_acceptance(target, target, AcceptanceSetting("tokens", 1.0), PROMPTS, TINY, _never)
    assert max(curve.per_position) < 1.0 and curve.alpha < 1.0


def test_monotone_envelope_cuts_noise_from_above():
    raw = np.array([[1.0, 5.0, 3.0], [2.0, 2.5, 4.0]])
    envelope, cut = _monotone(raw)
    assert envelope.tolist() == [[1.0, 2.5, 3.0], [2.0, 2.5, 4.0]]
    assert cut == pytest.approx(0.5)


def test_round_hook_observes_without_changing_output(toy_pair):
    draft, target = toy_pair
    cfg = GenerationConfig(max_new_tokens=15, sampling=SamplingParams(temperature=1.0), gamma=4, seed=7, stop_at_eos=False)
    rounds: list = []
    seen = generate_sd(draft, target, PROMPTS, cfg, on_round=lambda b, g, n: rounds.append((b, g, n)))
    plain = generate_sd(draft, target, PROMPTS, cfg)
    assert [r.token_ids for r in seen] == [r.token_ids for r in plain]
    for b, r in enumerate(seen):
        mine = [(g, n) for s, g, n in rounds if s == b]
        assert len(mine) == r.num_rounds
        assert sum(n for _, n in mine) == r.num_accepted_tokens and sum(g for g, _ in mine) == r.num_draft_tokens


# ---------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture(scope="module")
def toy_dirs(toy_pair):
    draft, target = toy_pair
    return ["--draft", str(draft.path), "--target", str(target.path)]


def test_cli_quick_writes_a_loadable_profile(toy_dirs, tmp_path):
    out = tmp_path / "pair.json"
    res = runner.invoke(app, ["profile", *toy_dirs, "--out", str(out), "--quick", "--max-gamma", "3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    pp = load_pair_profile(out)
    assert summary["profile"] == str(out) and len(summary["acceptance"]) == len(pp.acceptance) == 4
    assert pp.target.step.tokens.tolist() == [1, 3, 4, 5]  # γ + 1 = 4 joins the quick verify grid
    assert all(len(c.per_position) == 3 for c in pp.acceptance)
    assert "--max-gamma 3" in pp.meta["command"] and "acceptance (static γ = 3)" in res.output


@pytest.mark.parametrize(
    "out,needle",
    [("missing_dir/pair.json", "does not exist"), (".", "is a directory")],
)
def test_cli_refuses_a_bad_out_before_measuring(toy_dirs, tmp_path, monkeypatch, out, needle):
    monkeypatch.chdir(tmp_path)  # short paths: rich wraps long ones in the error box
    res = runner.invoke(app, ["profile", *toy_dirs, "--out", out, "--quick"])
    assert res.exit_code == 2 and needle in res.output and "--out" in res.output


def test_cli_bad_model_dir(tmp_path):
    res = runner.invoke(app, ["profile", "--draft", str(tmp_path / "nope"), "--target", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "p.json"), "--quick"])
    assert res.exit_code == 2 and "not found" in res.output
