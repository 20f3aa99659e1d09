"""Greedy SD vs AD in reduced precision: identical, or parting at a rounding tie of the target's logits, and nothing else passes as one."""

import pytest
import torch

from edgespec.bench.prompts import PROMPTS
from edgespec.bench.sd_vs_ad import _Tally, prompt_ids
from edgespec.models.bundle import bundled_path
from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.numerics import TIE_ULPS, divergence, first_difference, ulp
from edgespec.models.runtime import CausalLM


@pytest.fixture(scope="module")
def bf16_pair():
    return CausalLM.load(bundled_path("draft"), dtype=torch.bfloat16), CausalLM.load(bundled_path("target"), dtype=torch.bfloat16)


def test_ulp_is_the_spacing_of_the_dtype():
    assert ulp(20.0, torch.bfloat16) == 0.125  # 8 significant bits: 16 ≤ x < 32 in steps of 2^-3
    assert ulp(-1.5, torch.bfloat16) == 2.0**-7
    assert ulp(20.0, torch.float16) == 2.0**-6
    assert ulp(20.0, torch.float32) == 2.0**-19
    assert 0 < ulp(0.0, torch.bfloat16) < 1e-30


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_bf16_greedy_sd_is_ad_up_to_rounding_ties(bf16_pair):
    draft, target = bf16_pair
    cfg = GenerationConfig(max_new_tokens=40, stop_at_eos=False)
    for gamma in (2, 4):
        tally = _Tally()
        for prompt in prompt_ids(target, PROMPTS[:4]):
            ad = generate_ad(target, [prompt], cfg)[0].token_ids
            sd = generate_sd(draft, target, [prompt], GenerationConfig(max_new_tokens=40, gamma=gamma, stop_at_eos=False))[0].token_ids
            d = divergence(target, prompt, ad, sd)
            assert d is None or d.tie, f"γ={gamma}: SD parts from AD at token {d.index} with a gap of {d.gap} logits (> {d.tolerance})"
            tally.check(target, gamma, prompt, ad, sd)  # the bench's own check agrees
        assert tally.identical + tally.ties == 4


def test_a_wrong_token_is_not_a_tie(bf16_pair):
    _, target = bf16_pair
    prompt = prompt_ids(target, PROMPTS[:1])[0]
    ad = generate_ad(target, [prompt], GenerationConfig(max_new_tokens=12, stop_at_eos=False))[0].token_ids
    k = 6
    logits = target.prefill(target.new_kv(1), [prompt + ad[:k]])[-1].float()
    wrong = ad[:k] + [int(logits.argmin())] + ad[k + 1:]  # what a broken verification rule could accept
    d = divergence(target, prompt, ad, wrong)
    assert d is not None and d.index == k and not d.tie
    assert d.gap > 10 * d.tolerance and d.tolerance == pytest.approx(TIE_ULPS * ulp(float(logits.abs().max()), torch.bfloat16))
    with pytest.raises(AssertionError, match="losslessness violated"):
        _Tally().check(target, 4, prompt, ad, wrong)
    with pytest.raises(ValueError, match="prefix"):
        divergence(target, prompt, ad, ad[:-1])


def test_float32_allows_no_divergence_at_all():
    target = CausalLM.load(bundled_path("target"))
    prompt = prompt_ids(target, PROMPTS[:1])[0]
    ad = generate_ad(target, [prompt], GenerationConfig(max_new_tokens=8, stop_at_eos=False))[0].token_ids
    logits = target.prefill(target.new_kv(1), [prompt + ad[:3]])[-1]
    second = int(logits.topk(2).indices[1])  # even the runner-up is refused in float32
    with pytest.raises(AssertionError, match="float32"):
        _Tally().check(target, 4, prompt, ad, ad[:3] + [second] + ad[4:])
