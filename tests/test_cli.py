"""The CLI end to end (in-process through typer's runner): generate with --json, clear errors for bad input."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgespec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def toy_dirs(toy_pair):
    draft, target = toy_pair
    return ["--draft", str(draft.path), "--target", str(target.path)]


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["sd", "ad"])
def test_generate_json(toy_dirs, mode):
    res = runner.invoke(app, ["generate", "--prompt", "w3 w5 w7", "--mode", mode, "--max-tokens", "12", "--json", *toy_dirs])
    assert res.exit_code == 0, res.output
    out = _last_json(res.output)
    for key in ("text", "token_ids", "mode", "num_rounds", "num_draft_tokens", "num_accepted_tokens", "acceptance_rate", "wall_s", "tokens_per_s"):
        assert key in out
    assert out["mode"] == mode and 1 <= len(out["token_ids"]) <= 12


def test_generate_sd_and_ad_agree_greedy(toy_dirs):
    outs = [
        _last_json(runner.invoke(app, ["generate", "--prompt", "w9 w4", "--mode", m, "--max-tokens", "10", "--json", *toy_dirs]).output)
        for m in ("sd", "ad")
    ]
    assert outs[0]["token_ids"] == outs[1]["token_ids"]


def test_generate_sampled_is_seeded(toy_dirs):
    args = ["generate", "--prompt", "w9 w4", "--temperature", "1.0", "--top-p", "0.9", "--max-tokens", "10", "--seed", "3", "--json", *toy_dirs]
    a, b = (_last_json(runner.invoke(app, args).output) for _ in range(2))
    assert a["token_ids"] == b["token_ids"]


def test_generate_seed_gives_the_same_text_for_sd_and_ad(toy_dirs):
    """A seed makes sampled output a function of (seed, prompt): SD at any γ and q mode equals AD; another seed differs."""
    base = ["generate", "--prompt", "w9 w4", "--temperature", "0.8", "--top-p", "0.95", "--max-tokens", "16", "--json", *toy_dirs]
    runs = [("ad", "1", "full", "5"), ("sd", "1", "tokens", "5"), ("sd", "4", "topk", "5"), ("ad", "1", "full", "6")]
    outs = [_last_json(runner.invoke(app, [*base, "--mode", m, "--gamma", g, "--q-mode", q, "--seed", s]).output)["token_ids"] for m, g, q, s in runs]
    assert outs[0] == outs[1] == outs[2] != outs[3]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--mode", "xx"], "--mode"),
        (["--q-mode", "dense"], "--q-mode"),
        (["--temperature", "-1"], "--temperature"),
        (["--gamma", "99"], "--gamma"),
        (["--top-p", "0"], "--top-p"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_generate_bad_options(toy_dirs, args, needle):
    res = runner.invoke(app, ["generate", "--prompt", "w3", *args, *toy_dirs])
    assert res.exit_code == 2
    assert needle in res.output


def test_generate_missing_model_dir(tmp_path):
    res = runner.invoke(app, ["generate", "--prompt", "x", "--target", str(tmp_path / "nope"), "--draft", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "not found" in res.output


def test_cli_module_does_not_import_torch():
    code = "import sys, edgespec.cli, edgespec.spec.theory; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
