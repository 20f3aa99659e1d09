"""Step-time grids: random-weight Llama shapes built on the device, measured through the runtime, written as valid profiles named by device and shape."""

import math

import pytest
import torch

from edgespec.models.graphs import GraphConfig
from edgespec.models.stepgrid import RANDOM_WEIGHTS_NOTE, GridSpec, grid_profile, measure_grid, profile_file_name
from edgespec.models.synthetic import SHAPES, random_llama
from edgespec.plan.profile import load_profile, write_profile


def test_shapes_have_the_public_models_parameter_counts():
    assert round(SHAPES["llama7b"].parameters / 1e9, 2) == 6.74
    assert round(SHAPES["llama1b"].parameters / 1e9, 2) == 1.24


@pytest.mark.parametrize("name", ["smoke-gqa", "smoke-mha"])
def test_random_llama_is_made_in_its_dtype_and_matches_its_shape(name):
    shape = SHAPES[name]
    lm = random_llama(shape, "cpu", torch.bfloat16, seed=3)
    assert lm.dtype == torch.bfloat16 and lm.fast_path and lm.graphs is None
    assert lm.num_parameters == shape.parameters
    again = random_llama(shape, "cpu", torch.bfloat16, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(lm.model.parameters(), again.model.parameters()))  # seeded


def test_a_grid_is_measured_and_written_as_a_profile(tmp_path):
    lm = random_llama(SHAPES["smoke-gqa"], "cpu", torch.bfloat16)
    lm.use_graphs(GraphConfig(capture=False))
    spec = GridSpec(batch_sizes=(1, 3), new_tokens=(1, 5), context_tokens=12, warmup=1, repeats=2)
    times = measure_grid(lm, spec)
    medians = times.step_s
    assert set(medians) == {(1, 1), (1, 5), (3, 1), (3, 5)} and all(t > 0 for t in medians.values())
    assert set(times.prefill_s) == {1, 3} and all(t > 0 for t in times.prefill_s.values())
    prefill = {(b, 12): s for b, s in times.prefill_s.items()} | {(b, 24): 2 * s for b, s in times.prefill_s.items()}
    profile = grid_profile(lm, medians, spec, "smoke-gqa", {"note": RANDOM_WEIGHTS_NOTE}, prefill)
    path = tmp_path / profile_file_name("NVIDIA H200", "smoke-gqa", lm.dtype, "arena-eager", 12, 12)
    write_profile(profile, path)
    loaded = load_profile(path)
    assert path.name == "h200_smoke-gqa_bf16.json"
    assert loaded.context_tokens == 12 and loaded.dtype == "bfloat16" and loaded.meta["graphs"] == "arena-eager"
    assert loaded.meta["verify_over_decode"]["3"]["5"] == pytest.approx(medians[(3, 5)] / medians[(3, 1)], rel=1e-3)
    assert "random weights" in loaded.meta["note"]
    assert loaded.step.time_s.shape == (2, 2) and (loaded.step.time_s > 0).all()
    assert loaded.prefill.tokens.tolist() == [12, 24] and loaded.prefill.batch_sizes.tolist() == [1, 3]


def test_file_names_mark_eager_runs_and_other_contexts():
    assert profile_file_name("NVIDIA H200", "llama7b", torch.bfloat16, "cuda-graphs", 1024, 1024) == "h200_llama7b_bf16.json"
    assert profile_file_name("NVIDIA H100 80GB HBM3", "llama1b", torch.bfloat16, "eager", 128, 1024) == "h100_80gb_hbm3_llama1b_bf16_eager_ctx128.json"


@pytest.mark.parametrize("example", ["paper_2510_11331.toml", "sim_tiny.toml"])
def test_a_grid_profile_costs_the_verifier_of_the_examples(tmp_path, example):
    """The planner's and the simulator's examples take a profile written by the GPU measurement as their verifier's `profile`."""
    from pathlib import Path

    from edgespec.plan.joint import plan_scenario
    from edgespec.plan.scenario import load_scenario
    from edgespec.sim.metrics import summarize
    from edgespec.sim.run import simulate
    from edgespec.sim.scenario import load_sim_config

    lm = random_llama(SHAPES["smoke-mha"], "cpu", torch.bfloat16)
    spec = GridSpec(batch_sizes=(1, 4), new_tokens=(1, 5), context_tokens=8, warmup=0, repeats=1)
    times = measure_grid(lm, spec)
    write_profile(grid_profile(lm, times.step_s, spec, "smoke-mha", {}, {(b, 8): s for b, s in times.prefill_s.items()}),
                  tmp_path / "gpu.json")
    source = Path(__file__).resolve().parents[2] / "examples" / example
    text = source.read_text().replace('# profile = "profiles/h200_llama7b_bf16.json"', f'profile = "{tmp_path / "gpu.json"}"')
    assert text != source.read_text()
    scenario = tmp_path / example
    scenario.write_text(text)
    if example.startswith("paper"):
        report = plan_scenario(load_scenario(scenario), baselines=False)
        assert math.isfinite(report.joint.makespan_s) and report.joint.makespan_s > 0
    else:
        assert load_sim_config(scenario).verify_cost.node.profile is not None
        assert summarize(simulate(load_sim_config(scenario, requests=10))).throughput_tok_per_s > 0
