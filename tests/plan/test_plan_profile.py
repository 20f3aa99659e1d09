"""Measured profiles: format validation, round trip, interpolation, and use by the latency model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edgespec.plan.latency import prefill_time_s, step_time_s
from edgespec.plan.profile import (
    ProfileError,
    load_profile,
    profile_from_dict,
    profile_prefill_time_s,
    profile_step_time_s,
    profile_to_dict,
    write_profile,
)
from edgespec.plan.scenario import load_scenario

from plan_helpers import EXAMPLES, toy_system

BASE = {
    "format": "edgespec-profile/1",
    "device": "cpu",
    "model": "toy",
    "context_tokens": 128,
    "batch_sizes": [1, 2, 4],
    "new_tokens": [1, 5],
    # time = 0.01 + 0.001·batch + 0.002·(tokens − 1)·batch: bilinear on this grid is exact
    "step_time_s": [[0.011, 0.019], [0.012, 0.028], [0.014, 0.046]],
}


def test_round_trip(tmp_path):
    prof = profile_from_dict(BASE)
    write_profile(prof, tmp_path / "p.json")
    again = load_profile(tmp_path / "p.json")
    assert profile_to_dict(again) == profile_to_dict(prof)
    assert json.loads((tmp_path / "p.json").read_text())["format"] == "edgespec-profile/1"


def test_interpolation_on_and_between_grid_points():
    prof = profile_from_dict(BASE)
    assert float(profile_step_time_s(prof, 2, 5)) == pytest.approx(0.028)
    assert float(profile_step_time_s(prof, 3, 3)) == pytest.approx(0.01 + 0.003 + 0.002 * 2 * 3)
    got = profile_step_time_s(prof, np.array([1, 2, 4]), np.array([1, 1, 5]))
    assert got == pytest.approx([0.011, 0.012, 0.046])


def test_extrapolation_linear_above_constant_below():
    prof = profile_from_dict(BASE)
    # above: batch 8 × 9 tokens continues the last segments' slopes
    assert float(profile_step_time_s(prof, 8, 9)) == pytest.approx(0.01 + 0.008 + 0.002 * 8 * 8)
    # below the smallest batch/token counts it is held at the nearest measured value
    assert float(profile_step_time_s(prof, 0.5, 0)) == pytest.approx(0.011)


def test_extrapolation_never_falls_below_the_nearest_measurement():
    noisy = dict(BASE, step_time_s=[[0.011, 0.019], [0.012, 0.028], [0.010, 0.020]])
    prof = profile_from_dict(noisy)
    assert float(profile_step_time_s(prof, 64, 1)) == pytest.approx(0.010)


def test_prefill_table_or_fallback():
    prof = profile_from_dict(BASE)
    assert float(profile_prefill_time_s(prof, 1, 9)) == pytest.approx(0.01 + 0.001 + 0.002 * 8)
    with_prefill = profile_from_dict(
        dict(BASE, prefill={"batch_sizes": [1, 2], "prompt_tokens": [64, 128], "time_s": [[0.1, 0.2], [0.2, 0.4]]})
    )
    assert float(profile_prefill_time_s(with_prefill, 2, 96)) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"format": "other"}, "format"),
        ({"batch_sizes": [1, 4, 2]}, "batch_sizes"),
        ({"batch_sizes": [0, 2, 4]}, "batch_sizes"),
        ({"new_tokens": []}, "new_tokens"),
        ({"step_time_s": [[0.1, 0.2]]}, "step_time_s"),
        ({"step_time_s": [[0.011, -1], [0.012, 0.028], [0.014, 0.046]]}, "step_time_s"),
        ({"context_tokens": -1}, "context_tokens"),
        ({"extra": 1}, "extra"),
        ({"prefill": {"batch_sizes": [1], "prompt_tokens": [8], "time_s": [[0.1, 0.2]]}}, "prefill.time_s"),
    ],
)
def test_bad_profiles_name_the_field(change, field):
    with pytest.raises(ProfileError, match=rf"^{field}"):
        profile_from_dict(dict(BASE, **change))


def test_node_with_profile_uses_it_instead_of_flops():
    prof = profile_from_dict(BASE)
    sys_ = toy_system()
    node = replace(sys_.verifier, profile=prof)
    assert float(step_time_s(node, 2, 5, context_tokens=10_000)) == pytest.approx(0.028)
    assert float(prefill_time_s(node, 1, 5)) == pytest.approx(0.019)


def test_example_scenario_loads_its_profile():
    sc = load_scenario(EXAMPLES / "heterogeneous.toml")
    prof = sc.system.drafter.profile
    assert prof is not None and prof.meta.get("synthetic") is True
    assert float(step_time_s(sc.system.drafter, 1, 1, 0)) == pytest.approx(prof.step.time_s[0, 0])
