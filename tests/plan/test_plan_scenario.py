"""Scenario files: the examples load, and bad files get errors naming the field and the line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgespec.plan.scenario import ScenarioError, load_scenario, loads_scenario, locate_line, path_loss_gain

from plan_helpers import EXAMPLES

GOOD = """\
[scenario]
name = "t"

[uplink]
bandwidth_hz = 1e6

[drafter]
effective_flops = 1e12

[drafter.model]
name = "d"
n_layers = 2
hidden = 64
ffn_hidden = 256
vocab = 100

[verifier]
effective_flops = 1e13

[verifier.model]
name = "v"
n_layers = 4
hidden = 128
ffn_hidden = 512
vocab = 100

[link]
uplink_bps = 1e8

[speculation]
alpha = 0.7

[[task]]
input_tokens = 10
output_tokens = 20
spectral_efficiency_bps_per_hz = 2.0

[[task]]
input_tokens = 30
output_tokens = 40
tx_power_dbm = 20
distance_m = 100
"""


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_load(path: Path):
    sc = load_scenario(path)
    assert sc.tasks and sc.name and sc.source == path


def test_paper_example_mirrors_the_paper():
    sc = load_scenario(EXAMPLES / "paper_2510_11331.toml")
    assert len(sc.tasks) == 100
    assert sc.system.drafter.model.name == "llama-68m" and sc.system.verifier.model.name == "llama-2-7b"
    assert 10e6 <= sc.uplink.bandwidth_hz <= 20e6


def test_good_scenario_values():
    sc = loads_scenario(GOOD)
    t0, t1 = sc.tasks
    assert t0.upload_bytes == 10 * 4 and t0.spectral_efficiency_bps_per_hz == 2.0 and t0.alpha == 0.7
    assert t1.tx_power_w == pytest.approx(0.1) and t1.channel_gain == pytest.approx(float(path_loss_gain(100)))
    assert sc.system.link.downlink_bps == 1e8 and sc.planner.gamma_max == 8
    assert sc.uplink.noise_w_per_hz == pytest.approx(10 ** (-17.4) / 1000)


def test_path_loss_by_hand():
    assert float(path_loss_gain(1000)) == pytest.approx(10 ** (-12.81))


def expect_error(text: str, field: str, needle: str | None, match: str = ""):
    with pytest.raises(ScenarioError) as info:
        loads_scenario(text, source="bad.toml")
    msg = str(info.value)
    assert f": {field}:" in msg, msg
    if needle is not None:
        assert msg.startswith(f"bad.toml:{line_of(text, needle)}:"), msg
    assert match in msg, msg
    return msg


def test_wrong_value_names_field_and_line():
    bad = GOOD.replace("hidden = 128", "hidden = -128")
    expect_error(bad, "verifier.model.hidden", "hidden = -128", "integer > 0")


def test_wrong_type_names_field_and_line():
    bad = GOOD.replace("bandwidth_hz = 1e6", 'bandwidth_hz = "wide"')
    expect_error(bad, "uplink.bandwidth_hz", "bandwidth_hz", "a number > 0")


def test_missing_field_points_at_its_table():
    bad = GOOD.replace("uplink_bps = 1e8", "latency_s = 0.001")
    expect_error(bad, "link.uplink_bps", "[link]", "missing required field")


def test_missing_table():
    bad = GOOD.replace("[speculation]\nalpha = 0.7\n", "")
    expect_error(bad, "speculation", None, "missing required table")


def test_unknown_field_is_an_error():
    bad = GOOD.replace("[link]\n", "[link]\nbandwith = 3\n")
    expect_error(bad, "link.bandwith", "bandwith = 3", "unknown field")


def test_error_inside_the_second_task_names_its_index_and_line():
    bad = GOOD.replace("output_tokens = 40", "output_tokens = 0")
    expect_error(bad, "task[1].output_tokens", "output_tokens = 0", "integer > 0")


def test_task_channel_must_be_given_once():
    bad = GOOD.replace("output_tokens = 20\n", "output_tokens = 20\ntx_power_dbm = 20\n")
    expect_error(bad, "task[0].spectral_efficiency_bps_per_hz", None, "exactly one")


def test_bad_choice_lists_the_options():
    bad = GOOD.replace("alpha = 0.7", 'alpha = 0.7\nq_mode = "sparse"')
    expect_error(bad, "speculation.q_mode", 'q_mode = "sparse"', "topk, full, ids")


def test_alpha_out_of_range():
    bad = GOOD.replace("alpha = 0.7", "alpha = 1.0")
    expect_error(bad, "speculation.alpha", "alpha = 1.0", "[0, 1)")


def test_generator_range_errors():
    text = GOOD + "\n[task_generator]\ncount = 5\ninput_tokens = [50, 10]\noutput_tokens = 8\nspectral_efficiency_bps_per_hz = 1\n"
    expect_error(text, "task_generator.input_tokens", "input_tokens = [50, 10]", "low <= high")


def test_generator_is_reproducible_and_in_range():
    text = GOOD + "\n[task_generator]\ncount = 50\nseed = 3\ninput_tokens = [5, 9]\noutput_tokens = [1, 4]\ntx_power_dbm = 23\ndistance_m = [10, 20]\nalpha = [0.5, 0.6]\n"
    a, b = loads_scenario(text), loads_scenario(text)
    assert a.tasks == b.tasks and len(a.tasks) == 52
    gen = a.tasks[2:]
    assert all(5 <= t.input_tokens <= 9 and 1 <= t.output_tokens <= 4 and 0.5 <= t.alpha <= 0.6 for t in gen)
    assert [t.task_id for t in a.tasks] == list(range(52))
    other = loads_scenario(text.replace("seed = 3", "seed = 4"))
    assert other.tasks != a.tasks


def test_gamma_range_checked():
    bad = GOOD + "\n[planner]\ngamma_min = 5\ngamma_max = 2\n"
    expect_error(bad, "planner.gamma_max", "gamma_max = 2", ">= gamma_min")


def test_task_that_cannot_fit_in_memory():
    bad = GOOD.replace("[verifier]\n", "[verifier]\nmemory_bytes = 1000\n")
    expect_error(bad, "verifier.memory_bytes", "memory_bytes = 1000", "needs")


def test_invalid_toml_reports_the_line():
    with pytest.raises(ScenarioError, match=r"bad.toml: invalid TOML: .*line 5"):
        loads_scenario(GOOD.replace("bandwidth_hz = 1e6", "bandwidth_hz = = 1"), source="bad.toml")


def test_missing_profile_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("[drafter]\neffective_flops = 1e12", '[drafter]\nprofile = "nope.json"'))
    with pytest.raises(ScenarioError, match=r"s.toml:8: drafter.profile: cannot load profile"):
        load_scenario(path)


def test_no_tasks():
    text = GOOD[: GOOD.index("[[task]]")]
    expect_error(text, "task", None, "no tasks")


def test_locate_line_handles_tables_arrays_and_dotted_keys():
    text = "a = 1\n[x]\n# b = 0\nb = 2\n[x.y]\nc.d = 3\n[[t]]\ne = 4\n[[t]]\ne = 5\n"
    assert locate_line(text, ("a",)) == 1
    assert locate_line(text, ("x", "b")) == 4
    assert locate_line(text, ("x", "y", "c", "d")) == 6
    assert locate_line(text, ("t", 1, "e")) == 10
    assert locate_line(text, ("t", 1, "missing")) == 9
    assert locate_line(text, ("nowhere",)) is None


def test_infinite_defaults_mean_unlimited():
    sc = loads_scenario(GOOD)
    assert math.isinf(sc.system.verifier.memory_bytes) and math.isinf(sc.system.verifier.memory_bandwidth_bytes_per_s)
