"""Pair profiles: round trip, validation naming the field, curves from per-round counts, lookup, and no torch."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from edgespec.plan.pairprofile import (
    AcceptanceCurve,
    PairProfileError,
    acceptance_curve,
    curve_from_rounds,
    load_pair_profile,
    pair_profile_from_dict,
    pair_profile_to_dict,
    write_pair_profile,
)
from edgespec.plan.profile import ProfileError
from edgespec.spec.theory import expected_tokens_per_round


def _model(step: list[list[float]], new_tokens: list[int]) -> dict:
    return {
        "format": "edgespec-profile/1", "device": "cpu", "model": "toy", "dtype": "float32", "context_tokens": 128,
        "batch_sizes": [1, 2], "new_tokens": new_tokens, "step_time_s": step,
        "prefill": {"batch_sizes": [1], "prompt_tokens": [16, 64], "time_s": [[0.002, 0.005]]},
        "meta": {"parameters": 1000},
    }


BASE = {
    "format": "edgespec-pair-profile/1",
    "draft": _model([[0.001], [0.0012]], [1]),
    "target": _model([[0.005, 0.006, 0.008], [0.006, 0.008, 0.011]], [1, 3, 5]),
    "acceptance": [
        {"q_mode": "tokens", "temperature": 0.0, "per_position": [0.9, 0.8, 0.8, 0.7], "alpha": 0.8,
         "rounds": 100, "drafted_tokens": 400},
        {"q_mode": "topk", "top_k": 8, "temperature": 1.0, "per_position": [0.7, 0.7, 0.6, 0.6], "alpha": 0.65,
         "rounds": 120, "drafted_tokens": 480},
        {"q_mode": "full", "temperature": 0.7, "per_position": [0.75, 0.7, 0.7, 0.65], "alpha": 0.7,
         "rounds": 110, "drafted_tokens": 440},
    ],
    "meta": {"host": "test", "threads": 1},
}


def _with(path: str, value, base: dict = BASE) -> dict:
    """`base` with the field at a dotted path (list indices as integers) set, or deleted when value is ...."""
    data = copy.deepcopy(base)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


def test_round_trip(tmp_path):
    pp = pair_profile_from_dict(BASE)
    write_pair_profile(pp, tmp_path / "pair.json")
    again = load_pair_profile(tmp_path / "pair.json")
    assert pair_profile_to_dict(again) == BASE
    assert again.acceptance == pp.acceptance
    assert again.target.step.time_s.shape == (2, 3)


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("format", "edgespec-profile/1", "format:"),
        ("draft", ..., "draft: missing"),
        ("target", [1], "target: must be an object"),
        ("draft.format", "nope", "draft.format:"),
        ("target.step_time_s", [[0.005, 0.006], [0.006, 0.008]], "target.step_time_s:"),
        ("target.prefill.time_s", [[0.002, -1.0]], "target.prefill.time_s:"),
        ("acceptance", [], "acceptance:"),
        ("acceptance.0", "greedy", "acceptance[0]: must be an object"),
        ("acceptance.1.q_mode", "dense", "acceptance[1].q_mode:"),
        ("acceptance.1.top_k", ..., "acceptance[1].top_k:"),
        ("acceptance.1.top_k", 0, "acceptance[1].top_k:"),
        ("acceptance.2.top_k", 8, "acceptance[2].top_k: only allowed"),
        ("acceptance.2.temperature", -0.5, "acceptance[2].temperature:"),
        ("acceptance.2.per_position", [], "acceptance[2].per_position:"),
        ("acceptance.2.per_position.3", 1.2, "acceptance[2].per_position[3]:"),
        ("acceptance.2.per_position.0", float("nan"), "acceptance[2].per_position[0]:"),
        ("acceptance.0.alpha", -0.1, "acceptance[0].alpha:"),
        ("acceptance.0.alpha", True, "acceptance[0].alpha:"),
        ("acceptance.0.rounds", 0, "acceptance[0].rounds:"),
        ("acceptance.0.drafted_tokens", 1.5, "acceptance[0].drafted_tokens:"),
        ("acceptance.0.speed", 3, "acceptance[0].speed: unknown field"),
        ("extra", 1, "extra: unknown field"),
        ("meta", [], "meta:"),
    ],
)
def test_validation_names_the_field(path, value, field):
    with pytest.raises(PairProfileError) as err:
        pair_profile_from_dict(_with(path, value))
    assert str(err.value).startswith(field), str(err.value)


def test_duplicate_setting_is_refused():
    data = copy.deepcopy(BASE)
    data["acceptance"].append({**data["acceptance"][1], "alpha": 0.5})
    with pytest.raises(PairProfileError, match=r"acceptance\[3\]: same setting as acceptance\[1\] \(topk K=8 T=1\)"):
        pair_profile_from_dict(data)


def test_errors_are_profile_errors_and_bad_json_is_reported(tmp_path):
    assert issubclass(PairProfileError, ProfileError)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PairProfileError, match="invalid JSON"):
        load_pair_profile(tmp_path / "bad.json")


def test_lookup_exact_and_greedy_ignores_q_mode():
    pp = pair_profile_from_dict(BASE)
    assert acceptance_curve(pp, "topk", 1.0, top_k=8).alpha == 0.65
    assert acceptance_curve(pp, "full", 0.7).alpha == 0.7
    assert acceptance_curve(pp, "full", 0.0).label == "greedy"  # greedy verification reads tokens only
    for args in (("topk", 1.0, 4), ("full", 1.0), ("tokens", 0.7)):
        with pytest.raises(PairProfileError, match=r"measured: greedy, topk K=8 T=1, full T=0.7"):
            acceptance_curve(pp, *args)


def test_curve_from_rounds_by_hand():
    # (γ, accepted): position 1 reached by all 5 rounds, accepted by 4; position 2 reached by 4, accepted by 2;
    # position 3: the (2, 2) round was cut short by the budget, so 1 round reached it and accepted it
    rounds = [(3, 0), (3, 1), (3, 3), (2, 2), (3, 1)]
    curve = curve_from_rounds("full", 1.0, rounds, max_gamma=3)
    assert curve.per_position == pytest.approx((4 / 5, 2 / 4, 1 / 1))
    assert curve.rounds == 5 and curve.drafted_tokens == 14 and curve.top_k is None
    # α reproduces the measured tokens per round averaged over the rounds' own γ
    mean_e = sum(expected_tokens_per_round(curve.alpha, g) for g, _ in rounds) / 5
    assert mean_e == pytest.approx(sum(n + 1 for _, n in rounds) / 5, abs=1e-5)


def test_curve_from_rounds_extremes():
    perfect = curve_from_rounds("tokens", 0.0, [(4, 4)] * 3 + [(2, 2)], max_gamma=4)
    assert perfect.per_position == (1.0, 1.0, 1.0, 1.0) and perfect.alpha == 1.0
    none = curve_from_rounds("topk", 1.0, [(4, 0)] * 3, max_gamma=4, top_k=8)
    assert none.per_position == (0.0,) * 4 and none.alpha == 0.0 and none.top_k == 8
    with pytest.raises(PairProfileError, match="rounds"):
        curve_from_rounds("full", 1.0, [(2, 3)], max_gamma=2)
    with pytest.raises(PairProfileError, match="rounds"):
        curve_from_rounds("full", 1.0, [(0, 0)], max_gamma=2)


def test_tokens_per_round_matches_iid_formula():
    curve = AcceptanceCurve("full", 1.0, (0.6,) * 5, 0.6, 10, 50)
    for gamma in range(6):
        assert curve.tokens_per_round(gamma) == pytest.approx(expected_tokens_per_round(0.6, gamma))
    with pytest.raises(ValueError, match="gamma"):
        curve.tokens_per_round(6)


def test_pair_profile_module_never_imports_torch():
    code = ("import sys, edgespec.plan.pairprofile; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_written_file_is_plain_json(tmp_path):
    write_pair_profile(pair_profile_from_dict(BASE), tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["format"] == "edgespec-pair-profile/1"


def _rounds(rng, alpha: float, count: int, gamma: int = 4) -> list[tuple[int, int]]:
    """`count` rounds of γ drafts, each accepted with probability `alpha` until the first rejection."""
    out = []
    for _ in range(count):
        n = 0
        while n < gamma and rng.random() < alpha:
            n += 1
        out.append((gamma, n))
    return out


def test_per_prompt_curves_shrink_noise_to_the_pool_and_keep_a_real_spread():
    import random

    from edgespec.plan.pairprofile import curve_from_rounds, shrunk_per_prompt

    rng = random.Random(0)
    same = [_rounds(rng, 0.6, 12) for _ in range(16)]  # one acceptance for every prompt: any spread is noise
    pooled = curve_from_rounds("tokens", 0.0, [r for p in same for r in p], 4).per_position
    raw = [curve_from_rounds("tokens", 0.0, p, 4).per_position[0] for p in same]
    shrunk = [c[0] for c in shrunk_per_prompt(same, pooled)]
    spread = lambda xs: max(xs) - min(xs)  # noqa: E731
    assert spread(shrunk) < 0.5 * spread(raw)
    differ = [_rounds(rng, a, 200) for a in (0.2, 0.9) * 4]  # two kinds of prompt, many rounds each: the spread is real
    pooled = curve_from_rounds("tokens", 0.0, [r for p in differ for r in p], 4).per_position
    firsts = [c[0] for c in shrunk_per_prompt(differ, pooled)]
    assert max(firsts[0::2]) < 0.3 and min(firsts[1::2]) > 0.8
