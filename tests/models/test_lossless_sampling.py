"""Statistical losslessness end to end: SD with real (toy) models emits the target's joint distribution of tokens (on the CPU, and on CUDA where there is a GPU)."""

import numpy as np
import pytest
import torch

from edgespec.models.decoder import GenerationConfig, generate_sd
from edgespec.models.runtime import CausalLM
from edgespec.spec.sampling import SamplingParams, probs_from_logits

from lossless_stats import assert_matches

PROMPT = [3, 5, 2]
TRIALS = 4000
SETTINGS = {
    "t1": SamplingParams(temperature=1.0),
    "t0.7_k4": SamplingParams(temperature=0.7, top_k=4),
    "t1.3_p0.8": SamplingParams(temperature=1.3, top_p=0.8),
}


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")])


@pytest.fixture(scope="module", params=["cpu", CUDA])
def models(request, tiny_vocab_pair):
    """(draft, adversary, target) on the device under test: the CPU models, or the same checkpoints loaded on CUDA."""
    if request.param == "cpu":
        return tiny_vocab_pair
    return tuple(CausalLM.load(lm.path, device="cuda") for lm in tiny_vocab_pair)


def _target_joint(target, params: SamplingParams) -> np.ndarray:
    """Exact P(t1, t2 | PROMPT) under `params` from the target alone: [V, V]."""
    v = target.vocab_size
    kv = target.new_kv(v)
    logits = target.forward(kv, [PROMPT + [t] for t in range(v)], [2] * v).view(v, 2, v)
    p1 = probs_from_logits(logits[0, 0], params)  # same for every row
    p2 = probs_from_logits(logits[:, 1], params)  # [t1, t2]
    return (p1[:, None] * p2).double().cpu().numpy()


def _sd_joint(draft, target, params, q_mode, gamma=3, seed=0) -> np.ndarray:
    cfg = GenerationConfig(max_new_tokens=2, sampling=params, gamma=gamma, q_mode=q_mode, q_top_k=3, seed=seed, stop_at_eos=False)
    out = generate_sd(draft, target, [PROMPT] * TRIALS, cfg)
    v = target.vocab_size
    counts = np.zeros((v, v))
    for r in out:
        counts[r.token_ids[0], r.token_ids[1]] += 1
    return counts


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("q_mode", ["full", "topk", "tokens"])
def test_sd_matches_target_distribution(models, setting, q_mode):
    draft, _, target = models
    params = SETTINGS[setting]
    assert_matches(_sd_joint(draft, target, params, q_mode), _target_joint(target, params))


@pytest.mark.parametrize("q_mode", ["full", "topk", "tokens"])
def test_adversarial_drafter_still_lossless(models, q_mode):
    """A draft whose logits are the target's negated (it proposes what the target least wants)."""
    _, adversary, target = models
    params = SETTINGS["t1"]
    counts = _sd_joint(adversary, target, params, q_mode, gamma=4, seed=1)
    assert_matches(counts, _target_joint(target, params))


def test_self_draft_accepts_everything_at_temperature_one(models):
    _, _, target = models
    cfg = GenerationConfig(max_new_tokens=6, sampling=SETTINGS["t1"], gamma=3, q_mode="full", seed=2, stop_at_eos=False)
    out = generate_sd(target, target, [PROMPT] * 50, cfg)
    assert sum(r.num_accepted_tokens for r in out) == sum(r.num_draft_tokens for r in out)
