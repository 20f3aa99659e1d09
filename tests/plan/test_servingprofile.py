"""Serving profiles (edgespec-pair-profile/2): round trip, errors naming the field, older and newer versions refused or read with a clear message."""

from __future__ import annotations

import copy
import json

import pytest

from edgespec.plan.pairprofile import PairProfileError, acceptance_curve, load_pair_profile, pair_profile_from_dict, write_pair_profile
from edgespec.plan.profile import ProfileError
from edgespec.plan.scenario import ScenarioError, loads_scenario
from edgespec.plan.servingprofile import ServingProfileError, load_serving_profile

from test_pairprofile import BASE, _model, _with


def _v2() -> dict:
    data = copy.deepcopy(BASE)
    data["format"] = "edgespec-pair-profile/2"
    data["acceptance"][0]["answer_tokens"] = 64
    data["acceptance"].append({**data["acceptance"][0], "answer_tokens": 128, "per_position": [0.8, 0.8, 0.8, 0.8]})
    data["serving"] = {
        "setting": {"q_mode": "tokens", "temperature": 0.0, "top_k": None, "gamma": 4},
        "target_forward": _model([[0.007, 0.008, 0.01], [0.008, 0.01, 0.013]], [1, 3, 5]),
        "draft_step": _model([[0.0012], [0.0014]], [1]),
        "framework": {"batch_sizes": [1, 2], "verifier_s": [0.002, 0.003], "drafter_s": [0.0015, 0.0015]},
        "overlap_s": 0.002,
        "session": {"open_s": 0.001, "request_s": 0.004, "first_round_s": 0.05},
        "shared_core": {"devices": [1, 2], "draft_pass_s": [0.008, 0.02]},
        "quota": {"slowdowns": [2.0], "draft_pass_s": [0.011]},
    }
    return data


def test_round_trip_keeps_the_serving_part(tmp_path):
    pp = pair_profile_from_dict(_v2())
    assert pp.format == "edgespec-pair-profile/2" and pp.serving.overlap_s == 0.002
    write_pair_profile(pp, tmp_path / "s.json")
    again = load_pair_profile(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["format"] == "edgespec-pair-profile/2"
    sp = again.serving
    assert (sp.open_s, sp.request_s, sp.first_round_s) == (0.001, 0.004, 0.05)
    assert sp.verifier_framework.seconds == (0.002, 0.003) and sp.drafter_framework.at(2) == pytest.approx(0.0015)
    assert sp.core_efficiency() == pytest.approx(2 * 0.008 / 0.02) and sp.quota_cap(2.0) == pytest.approx(0.008 / 0.011)
    assert sp.core_efficiency(1) == 1.0
    assert sp.target_forward.step.time_s.tolist() == pp.serving.target_forward.step.time_s.tolist()


def test_core_efficiency_from_the_devices_cpu_per_round():
    data = _with("serving.shared_core", {"devices": [1, 2, 4], "draft_pass_s": [0.008, 0.016, 0.03],
                                         "cpu_per_round_s": [0.01, 0.011, 0.015]}, _v2())
    sp = pair_profile_from_dict(data).serving
    assert sp.core_efficiency(2) == pytest.approx(0.01 / 0.011) and sp.core_efficiency(4) == pytest.approx(0.01 / 0.015)
    assert sp.core_efficiency(6) == pytest.approx(0.01 / 0.015) and sp.core_efficiency(3) == pytest.approx(0.01 / 0.013)


def test_curves_per_answer_length_are_picked_by_the_nearest_length():
    pp = pair_profile_from_dict(_v2())
    assert acceptance_curve(pp, "tokens", 0.0, answer_tokens=48).answer_tokens == 64
    assert acceptance_curve(pp, "tokens", 0.0, answer_tokens=120).answer_tokens == 128
    assert acceptance_curve(pp, "tokens", 0.0).answer_tokens == 64  # no length asked: the first


def test_a_v1_profile_still_loads_and_is_refused_as_a_serving_profile_saying_what_to_do(tmp_path):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(BASE))
    pp = load_pair_profile(path)
    assert pp.serving is None and pp.format == "edgespec-pair-profile/1"
    with pytest.raises(ServingProfileError, match=r"edgespec-pair-profile/1 holds bare forwards only.*edgespec profile --serving"):
        load_serving_profile(path)


def test_a_newer_version_is_refused_naming_it_and_what_to_do():
    with pytest.raises(PairProfileError, match=r"version '3' of the pair-profile format is not one this edgespec reads.*take the profile again"):
        pair_profile_from_dict({**_v2(), "format": "edgespec-pair-profile/3"})
    with pytest.raises(PairProfileError, match=r"format: must be one of"):
        pair_profile_from_dict({**_v2(), "format": "something-else/1"})


@pytest.mark.parametrize("data, where", [
    (_with("serving", {}), r"serving: unknown field \(edgespec-pair-profile/1 has no serving part"),
    (_with("serving", ..., _v2()), r"serving: missing"),
    (_with("serving.framework.verifier_s", [0.002, 0.003, 0.004], _v2()), r"serving.framework.verifier_s: must be a list of 2 numbers \(one per batch_sizes entry\) \(or one"),
    (_with("serving.framework.drafter_s.1", -1, _v2()), r"serving.framework.drafter_s\[1\]: must be a finite number"),
    (_with("serving.session.open_s", ..., _v2()), r"serving.session.open_s: missing"),
    (_with("serving.setting.gamma", 0, _v2()), r"serving.setting.gamma: must be an integer >= 1"),
    (_with("serving.setting.q_mode", "topk", _v2()), r"serving.setting.top_k: must be an integer >= 1"),
    (_with("serving.target_forward.step_time_s", [[0.1]], _v2()), r"serving.target_forward.step_time_s: shape must be"),
    (_with("serving.shared_core.devices", [2, 1], _v2()), r"serving.shared_core.devices: must be strictly increasing"),
    (_with("serving.quota.slowdowns", [0.5], _v2()), r"serving.quota.slowdowns: must be a non-empty list of numbers >= 1"),
    (_with("serving.extra", 1, _v2()), r"serving.extra: unknown field"),
    (_with("acceptance.0.answer_tokens", 0, _v2()), r"acceptance\[0\].answer_tokens: must be an integer >= 1"),
])
def test_errors_name_the_field(data, where):
    with pytest.raises(ProfileError, match=where):  # PairProfileError or, inside the serving part, ServingProfileError
        pair_profile_from_dict(data)


def test_the_planner_reads_a_serving_profile_and_refuses_a_v1_file_clearly(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(_v2()))
    (tmp_path / "v1.json").write_text(json.dumps(BASE))
    text = _TINY
    sc = loads_scenario(text + '\n[serving]\nprofile = "s.json"\n', "s.toml", tmp_path)
    assert sc.system.serving is not None and sc.system.serving.request_s == 0.004
    with pytest.raises(ScenarioError, match=r"s.toml:\d+: serving.profile: cannot use serving profile .*edgespec-pair-profile/1 holds bare forwards only"):
        loads_scenario(text + '\n[serving]\nprofile = "v1.json"\n', "s.toml", tmp_path)


_TINY = """
[scenario]
name = "t"
[uplink]
bandwidth_hz = 1e6
[drafter]
effective_flops = 1e9
[drafter.model]
name = "d"
n_layers = 1
hidden = 8
ffn_hidden = 16
vocab = 32
[verifier]
effective_flops = 1e9
[verifier.model]
name = "v"
n_layers = 1
hidden = 8
ffn_hidden = 16
vocab = 32
[link]
uplink_bps = 1e6
downlink_bps = 1e6
[speculation]
alpha = 0.5
[[task]]
input_tokens = 4
output_tokens = 8
spectral_efficiency_bps_per_hz = 1.0
"""
