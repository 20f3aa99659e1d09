"""`edgespec sim` end to end: the example scenario, JSON last line, plots, trace, clear errors, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgespec.sim.cli import run_sim
from edgespec.sim.scenario import ScenarioError, load_sim_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_runs_with_json_plots_and_trace(tmp_path, capsys):
    code = run_sim(EXAMPLES / "sim_tiny.toml", json_out=True, plot=tmp_path / "plots", trace=tmp_path / "trace.json", requests=40,
                   requests_csv=tmp_path / "requests.csv")
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads(last)
    assert report["requests"] == 40 and report["mode"] == "sd"
    assert report["e2e_s"]["p50"] <= report["e2e_s"]["p99"]
    assert sum(report["breakdown_s"].values()) == pytest.approx(report["e2e_s"]["mean"], rel=1e-6)
    assert set(report["per_group"]) == {"near", "far-slow"}
    assert (tmp_path / "plots" / "latency.png").stat().st_size > 1000
    trace = json.loads((tmp_path / "trace.json").read_text())
    phases = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"draft", "upload", "verify", "downlink"} <= phases
    import csv

    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert len(rows) == 40
    assert sum(float(r["e2e_s"]) for r in rows) / 40 == pytest.approx(report["e2e_s"]["mean"])


def _scenario_with(tmp_path, extra: str) -> Path:
    text = (EXAMPLES / "sim_tiny.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(text + "\n" + extra)
    return path


@pytest.mark.parametrize("extra,needle", [
    ("[sim.slo2]\nx = 1\n", "sim.slo2: unknown field"),
])
def test_unknown_sim_table_is_named(tmp_path, extra, needle):
    with pytest.raises(ScenarioError, match=needle.replace(".", r"\.")):
        load_sim_config(_scenario_with(tmp_path, extra))


def test_requests_per_user_is_read_for_closed_loop_and_refused_elsewhere(tmp_path):
    text = (EXAMPLES / "sim_tiny.toml").read_text()
    closed = text.replace('kind = "poisson"\nrequests = 200\nrate_per_s = 4.0', 'kind = "closed"\nusers_per_node = 2\nrequests_per_user = 3')
    assert closed != text
    (tmp_path / "closed.toml").write_text(closed)
    cfg = load_sim_config(tmp_path / "closed.toml")
    assert cfg.workload.requests_per_user == 3 and cfg.request_count == 3 * 2 * sum(g.count for g in cfg.drafters)
    with pytest.raises(ScenarioError, match="requests_per_user = 3"):
        load_sim_config(tmp_path / "closed.toml", requests=10)
    (tmp_path / "open.toml").write_text(text.replace("requests = 200", "requests = 200\nrequests_per_user = 3"))
    with pytest.raises(ScenarioError, match=r"open\.toml:\d+: sim\.workload\.requests_per_user: is for closed loop only"):
        load_sim_config(tmp_path / "open.toml")


def test_bad_value_names_file_line_and_field(tmp_path, capsys):
    text = (EXAMPLES / "sim_tiny.toml").read_text().replace('routing = "jsq"', 'routing = "random"')
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert run_sim(path) == 2
    err = capsys.readouterr().err
    assert "bad.toml:" in err and "sim.routing" in err and "round_robin" in err


def test_sim_never_imports_torch():
    code = ("import sys, json\nfrom edgespec.sim.cli import run_sim\n"
            f"rc = run_sim({str(EXAMPLES / 'sim_tiny.toml')!r}, requests=5)\n"
            "print(json.dumps([rc, [m for m in ('torch', 'transformers') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    assert json.loads(out) == [0, []]


def test_pair_profile_supplies_costs_and_acceptance(tmp_path):
    """`[sim] pair_profile`: step times from the measured tables, the acceptance curve of the chosen setting."""
    step = lambda rows: {"format": "edgespec-profile/1", "device": "cpu", "model": "toy", "dtype": "float32", "context_tokens": 128,
                         "batch_sizes": [1, 2], "new_tokens": rows[0], "step_time_s": rows[1],
                         "prefill": {"batch_sizes": [1], "prompt_tokens": [16, 512], "time_s": [[0.002, 0.004]]}}
    pair = {"format": "edgespec-pair-profile/1",
            "draft": step(([1], [[0.003], [0.004]])),
            "target": step(([1, 5], [[0.02, 0.03], [0.025, 0.04]])),
            "acceptance": [{"q_mode": "topk", "top_k": 8, "temperature": 1.0, "per_position": [0.6, 0.5, 0.4, 0.3],
                            "alpha": 0.5, "rounds": 10, "drafted_tokens": 40}]}
    (tmp_path / "pair.json").write_text(json.dumps(pair))
    path = _scenario_with(tmp_path, "")
    text = path.read_text().replace('[sim]\n', '[sim]\npair_profile = "pair.json"\nprofile_q_mode = "topk"\n', 1)
    path.write_text(text)
    config = load_sim_config(path)
    assert config.speculation.acceptance == (0.6, 0.5, 0.4, 0.3)
    assert config.draft_cost.step_s(1, 1, 100) == pytest.approx(0.003)
    assert config.verify_cost.step_s(2, 5, 100) == pytest.approx(0.04)
    path.write_text(text.replace('profile_q_mode = "topk"', 'profile_q_mode = "full"'))
    with pytest.raises(ScenarioError, match="pair_profile"):
        load_sim_config(path)


def test_tasks_with_the_default_alpha_follow_the_run_curve(tmp_path):
    path = _scenario_with(tmp_path, "")
    path.write_text(path.read_text().replace('[sim]\n', '[sim]\nacceptance = [0.9, 0.5]\n', 1))
    config = load_sim_config(path)
    alphas = {c.name: c.alpha for c in config.classes}
    assert alphas == {"chat": None, "code": 0.85}  # code sets its own α; chat inherits [speculation] alpha -> the curve
    assert config.speculation.acceptance == (0.9, 0.5)
