"""Greedy SD output equals greedy AD output token for token (float32), across γ, batch sizes and ragged lengths."""

import pytest
import torch

from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.runtime import CausalLM, TokenizerMismatchError
from edgespec.models.toy import make_toy_model, toy_tokenizer


def _prompts(seed: int, lengths):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("gamma", [1, 2, 4, 7])
@pytest.mark.parametrize("lengths", [(6,), (3, 11), (1, 8, 4, 15, 2)])
def test_greedy_sd_equals_ad(toy_pair, gamma, lengths):
    draft, target = toy_pair
    for seed in range(4):
        prompts = _prompts(seed * 31 + len(lengths), lengths)
        cfg = GenerationConfig(max_new_tokens=24, gamma=gamma, stop_at_eos=False)
        ad = generate_ad(target, prompts, cfg)
        sd = generate_sd(draft, target, prompts, cfg)
        for a, s in zip(ad, sd):
            assert s.token_ids == a.token_ids
            assert len(s.token_ids) == 24
        assert sum(s.num_accepted_tokens for s in sd) > 0  # the toy draft agrees often enough to exercise acceptance


def test_greedy_equal_with_per_sequence_gammas_including_zero(toy_pair):
    draft, target = toy_pair
    prompts = _prompts(99, (5, 2, 9, 7))
    cfg = GenerationConfig(max_new_tokens=20, stop_at_eos=False)
    ad = generate_ad(target, prompts, cfg)
    sd = generate_sd(draft, target, prompts, cfg, gammas=[0, 3, 8, 1])
    assert [s.token_ids for s in sd] == [a.token_ids for a in ad]
    assert sd[0].num_draft_tokens == 0 and sd[0].num_rounds == 20


def test_batched_equals_single(toy_pair):
    """A sequence's greedy output does not depend on what else is in its batch."""
    draft, target = toy_pair
    prompts = _prompts(5, (4, 13, 1))
    cfg = GenerationConfig(max_new_tokens=16, gamma=3, stop_at_eos=False)
    batched = generate_sd(draft, target, prompts, cfg)
    for p, b in zip(prompts, batched):
        assert generate_sd(draft, target, [p], cfg)[0].token_ids == b.token_ids


def test_eos_stops_both_modes_alike(toy_pair):
    draft, target = toy_pair
    prompts = _prompts(7, (3, 6, 9, 2, 5, 8))
    cfg = GenerationConfig(max_new_tokens=60, gamma=4, stop_at_eos=True)
    ad, sd = generate_ad(target, prompts, cfg), generate_sd(draft, target, prompts, cfg)
    assert [s.token_ids for s in sd] == [a.token_ids for a in ad]
    assert [s.finished_by for s in sd] == [a.finished_by for a in ad]


def test_tokenizer_mismatch_refused(tmp_path, toy_pair):
    _, target = toy_pair
    other = toy_tokenizer(64)
    other.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    odd = CausalLM.load(make_toy_model(tmp_path / "odd", vocab_size=64, tokenizer=other))
    with pytest.raises(TokenizerMismatchError, match="do not share a tokenizer"):
        generate_sd(odd, target, [[2, 3]], GenerationConfig(max_new_tokens=2))
    small = CausalLM.load(make_toy_model(tmp_path / "small", vocab_size=32))
    with pytest.raises(TokenizerMismatchError):
        generate_sd(small, target, [[2, 3]], GenerationConfig(max_new_tokens=2))


def test_empty_prompt_refused(toy_pair):
    draft, target = toy_pair
    with pytest.raises(ValueError, match="empty"):
        generate_sd(draft, target, [[]], GenerationConfig())
