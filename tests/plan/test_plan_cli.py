"""`edgespec plan` end to end, and the planner's promise never to import torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgespec.cli import app

from plan_helpers import EXAMPLES


@pytest.mark.parametrize("name", ["tiny.toml", "heterogeneous.toml"])
def test_plan_json_last_line(name, tmp_path):
    png = tmp_path / "plan.png"
    result = CliRunner().invoke(app, ["plan", "--scenario", str(EXAMPLES / name), "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    data = json.loads(last)
    assert {"plan", "predicted_latency_s", "baselines"} <= set(data)
    assert data["predicted_latency_s"] > 0
    assert all(data["predicted_latency_s"] <= v * (1 + 1e-9) for v in data["baselines"].values())
    assert "ad" in data["baselines"] and data["plan"]["batches"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Joint plan vs baselines" in result.output


def test_plan_without_json_prints_tables_only():
    result = CliRunner().invoke(app, ["plan", "--scenario", str(EXAMPLES / "tiny.toml")])
    assert result.exit_code == 0
    assert not result.output.strip().splitlines()[-1].startswith("{")


def test_bad_scenario_exits_2_naming_field_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((EXAMPLES / "tiny.toml").read_text().replace("top_k = 8", "top_k = 0"))
    line = next(i for i, s in enumerate(bad.read_text().splitlines(), 1) if s.startswith("top_k = 0"))
    result = CliRunner().invoke(app, ["plan", "--scenario", str(bad)])
    assert result.exit_code == 2
    assert f"bad.toml:{line}: speculation.top_k: must be an integer > 0" in result.output


def test_missing_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["plan", "--scenario", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "cannot read scenario" in result.output


def test_planner_and_policies_never_import_torch():
    code = (
        "import sys, edgespec.plan.cli, edgespec.plan.joint, edgespec.plan.plot, edgespec.policy.gamma, "
        "edgespec.policy.batching, edgespec.policy.bandwidth; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_subprocess_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgespec.cli", "plan", "--scenario", str(EXAMPLES / "tiny.toml"), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["scenario"] == "tiny"
