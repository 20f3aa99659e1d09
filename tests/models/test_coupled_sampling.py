"""Seeded (coupled) sampling in-process: SD emits exactly AD's tokens for every γ, q mode and drafter, and both follow the target's joint distribution."""

import numpy as np
import pytest
import torch

from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.spec.sampling import SamplingParams

from lossless_stats import assert_matches
from test_lossless_sampling import PROMPT, SETTINGS, _target_joint

TRIALS = 4000


def _cfg(params, **kw):
    return GenerationConfig(max_new_tokens=kw.pop("max_new_tokens", 2), sampling=params, stop_at_eos=False, coupled=True, **kw)


def _joint(results, v) -> np.ndarray:
    counts = np.zeros((v, v))
    for r in results:
        counts[r.token_ids[0], r.token_ids[1]] += 1
    return counts


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_coupled_ad_follows_the_target_distribution(tiny_vocab_pair, setting):
    _, _, target = tiny_vocab_pair
    params = SETTINGS[setting]
    out = generate_ad(target, [PROMPT] * TRIALS, _cfg(params), seeds=range(TRIALS))
    assert_matches(_joint(out, target.vocab_size), _target_joint(target, params))


@pytest.mark.parametrize("drafter", ["draft", "adversary"])
@pytest.mark.parametrize("setting", ["t1", "t0.7_k4"])
def test_coupled_sd_follows_the_target_distribution_and_equals_ad(tiny_vocab_pair, drafter, setting):
    """Over 4000 seeds the emitted pair follows the target's joint, and every sequence equals AD with its seed —
    also for the adversarial draft, whose logits are the target's negated (it drafts what the target least wants)."""
    draft, adversary, target = tiny_vocab_pair
    params = SETTINGS[setting]
    seeds = [10_000 + i for i in range(TRIALS)]
    sd = generate_sd(draft if drafter == "draft" else adversary, target, [PROMPT] * TRIALS, _cfg(params, gamma=3), seeds=seeds)
    ad = generate_ad(target, [PROMPT] * TRIALS, _cfg(params), seeds=seeds)
    assert [r.token_ids for r in sd] == [r.token_ids for r in ad]
    assert_matches(_joint(sd, target.vocab_size), _target_joint(target, params))


def test_shared_noise_makes_the_draft_agree(tiny_vocab_pair):
    """The drafter draws with the request's noise, so its first token agrees with the target's far more often than
    two independent draws would (Σ p·q), and the adversarial draft far less often."""
    draft, adversary, target = tiny_vocab_pair
    params = SETTINGS["t1"]
    p = torch.softmax(target.prefill(target.new_kv(1), [PROMPT]), -1)[0]
    agree, independent = {}, {}
    for name, model in (("draft", draft), ("adversary", adversary)):
        q = torch.softmax(model.prefill(model.new_kv(1), [PROMPT]), -1)[0]
        out = generate_sd(model, target, [PROMPT] * TRIALS, _cfg(params, gamma=1), seeds=range(TRIALS))
        agree[name] = sum(r.accepted_per_position[0] for r in out) / sum(r.drafted_per_position[0] for r in out)
        independent[name] = float((p * q).sum())
    assert agree["draft"] > independent["draft"] + 0.15, (agree, independent)
    assert agree["adversary"] < agree["draft"] - 0.1, (agree, independent)


@pytest.mark.parametrize("gamma", [0, 1, 4])
@pytest.mark.parametrize("q_mode", ["full", "topk", "tokens"])
def test_coupled_sd_equals_ad_token_for_token(toy_pair, gamma, q_mode):
    draft, target = toy_pair
    params = SamplingParams(temperature=0.8, top_p=0.95)
    prompts = [[3, 5, 2], [7, 1], [9, 9, 4, 2]]
    cfg = _cfg(params, max_new_tokens=24, gamma=gamma, q_mode=q_mode, seed=42)
    sd = generate_sd(draft, target, prompts, cfg)
    ad = generate_ad(target, prompts, cfg)
    assert [r.token_ids for r in sd] == [r.token_ids for r in ad]
    assert all(len(r.token_ids) == 24 for r in sd)


def test_seed_decides_the_text(toy_pair):
    _, target = toy_pair
    params = SamplingParams(temperature=1.0)
    a, b = (generate_ad(target, [[3, 5, 2]], _cfg(params, max_new_tokens=16, seed=7))[0].token_ids for _ in range(2))
    c = generate_ad(target, [[3, 5, 2]], _cfg(params, max_new_tokens=16, seed=8))[0].token_ids
    assert a == b and a != c
    rejection = generate_ad(target, [[3, 5, 2]], GenerationConfig(max_new_tokens=16, sampling=params, seed=7, stop_at_eos=False))[0].token_ids
    assert rejection != a  # the coupled draw is its own rule, not the generator's inverse-CDF draw


def test_coupled_greedy_is_plain_greedy(toy_pair):
    draft, target = toy_pair
    greedy = SamplingParams(temperature=0.0)
    plain = generate_ad(target, [[3, 5, 2]], GenerationConfig(max_new_tokens=12, sampling=greedy))[0].token_ids
    assert generate_sd(draft, target, [[3, 5, 2]], GenerationConfig(max_new_tokens=12, sampling=greedy, coupled=True, seed=9))[0].token_ids == plain


def test_seeds_must_match_prompts(toy_pair):
    _, target = toy_pair
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate_ad(target, [[1], [2]], _cfg(SamplingParams(1.0)), seeds=[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_coupled_sd_on_cuda_equals_ad_on_cpu(toy_pair):
    """The noise is made on the host, so a seed means the same draws on either device (up to float near-ties of p)."""
    from edgespec.models.runtime import CausalLM

    draft, target = toy_pair
    cuda_draft, cuda_target = CausalLM.load(draft.path, device="cuda"), CausalLM.load(target.path, device="cuda")
    cfg = _cfg(SamplingParams(temperature=0.8), max_new_tokens=16, gamma=3, seed=5)
    prompts = [[3, 5, 2], [7, 1]]
    gpu = generate_sd(cuda_draft, cuda_target, prompts, cfg)
    assert [r.token_ids for r in gpu] == [r.token_ids for r in generate_ad(cuda_target, prompts, cfg)]
    cpu = generate_ad(target, prompts, cfg)
    for g, c in zip(gpu, cpu):  # a near-tie flipped by device rounding would change every later token: compare prefixes
        assert g.token_ids[:8] == c.token_ids[:8]
