"""The smollm2 pair (SmolLM2-135M-Instruct from its GGUF release, and the draft distilled here), in process: tokenisation as transformers
does it, greedy SD ≡ AD, and the emitted joint distribution of sampled tokens equals the target's for full and top-K q."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from edgespec.api import SpeculativeDecoder
from edgespec.bench.prompts import INSTRUCTIONS, PROMPTS
from edgespec.bench.sd_vs_ad import prompt_ids
from edgespec.models.bundle import bundled_path
from edgespec.models.catalog import SMOLLM2_DRAFT_DIR
from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.prompting import encode_chat, encode_text
from edgespec.spec.sampling import SamplingParams, probs_from_logits

from lossless_stats import assert_matches

TEXTS = ["Write a Python function that reverses a string.", "def read_config(path):\n", "  two  spaces, ünïcode and <|im_start|> ", ""]


def test_shipped_draft_layers_fit_the_wheel_budget():
    recipe = json.loads((SMOLLM2_DRAFT_DIR / "draft.json").read_text())
    size = (SMOLLM2_DRAFT_DIR / "layers.safetensors").stat().st_size
    assert size <= 32 * 1024 * 1024
    assert recipe["layers"] >= 1 and recipe["storage_dtype"] == "bfloat16"


@pytest.mark.parametrize("text", TEXTS)
def test_bundled_ids_are_what_transformers_gives(text):
    """The bundled tokenizer's post-processor adds its BOS, so `tokenizer(text)` is what edgespec always fed the bundled pair."""
    path = bundled_path("target")
    reference = AutoTokenizer.from_pretrained(path)(text).input_ids
    dec = SpeculativeDecoder.bundled()
    assert dec.encode(text) == reference == prompt_ids(dec.target, [text])[0]
    assert reference[0] == dec.target.tokenizer.bos_token_id  # the ids the pair has always seen: BOS first


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_ids_are_what_transformers_gives(smollm2_pair, smollm2_dirs, text):
    _, target = smollm2_pair
    reference = AutoTokenizer.from_pretrained(smollm2_dirs[1])(text).input_ids
    assert encode_text(target.tokenizer, text) == reference == SpeculativeDecoder(target).encode(text)
    if text:
        assert reference[0] != target.tokenizer.bos_token_id  # SmolLM2's post-processor adds no BOS


def test_smollm2_detokenize_is_the_tokenizers_own_decode(smollm2_pair):
    """As for the bundled pair: the fast decode path gives exactly transformers' `decode(ids, skip_special_tokens=True)`."""
    import random

    _, target = smollm2_pair
    tok, rng = target.tokenizer, random.Random(1)
    for _ in range(200):
        ids = [rng.randrange(target.vocab_size) for _ in range(rng.randrange(0, 12))] + [tok.eos_token_id]
        rng.shuffle(ids)
        assert target.detokenize(ids) == tok.decode(ids, skip_special_tokens=True)


def test_smollm2_draft_is_built_from_the_target(smollm2_pair):
    draft, target = smollm2_pair
    assert target.dtype == torch.float32 and target.vocab_size == draft.vocab_size == 49152
    assert draft.num_parameters < target.num_parameters / 3
    assert torch.equal(draft.model.model.embed_tokens.weight.float(), target.model.model.embed_tokens.weight.to(draft.dtype).float())


def test_smollm2_greedy_sd_equals_ad(smollm2_pair):
    """Three held-back instructions in one ragged batch (each its own γ), and every one alone: the text of AD, token for token."""
    draft, target = smollm2_pair
    prompts = prompt_ids(target, INSTRUCTIONS[:3], chat=True)
    cfg = GenerationConfig(max_new_tokens=40, stop_at_eos=False)
    ad = generate_ad(target, prompts, cfg)
    sd = generate_sd(draft, target, prompts, cfg, gammas=[2, 4, 6])
    assert [r.token_ids for r in sd] == [r.token_ids for r in ad]
    alone = generate_sd(draft, target, prompts[:1], GenerationConfig(max_new_tokens=40, gamma=4, stop_at_eos=False))[0]
    assert alone.token_ids == ad[0].token_ids
    assert sum(r.num_accepted_tokens for r in sd) > 0.05 * sum(r.num_draft_tokens for r in sd)  # distilled: an untrained truncation accepts ~1 %


# ---------------------------------------------------------------------- the emitted distribution

# A chat turn, the regime the draft was distilled for: after the raw text "My favourite colour is" its top-4 shares no token
# with the target's, so every draft would be rejected and the accept path never taken.
PROMPT_MESSAGES = [{"role": "system", "content": ""}, {"role": "user", "content": "What is your favourite colour?"}]  # an empty system turn: 20 tokens, not the default 36
PARAMS = SamplingParams(temperature=1.0, top_k=4)  # p keeps 4 tokens per position: the joint of two tokens has 16 cells
TRIALS = 2000


def _target_joint(target, prompt: list[int]) -> dict:
    """Exact P(t1, t2 | prompt) under PARAMS from the target alone, over its support."""
    kv = target.new_kv(1)
    p1 = probs_from_logits(target.prefill(kv, [prompt])[0], PARAMS)
    firsts = p1.nonzero().squeeze(-1).tolist()
    kv = target.new_kv(len(firsts))
    p2 = probs_from_logits(target.forward(kv, [prompt + [t] for t in firsts], [1] * len(firsts)), PARAMS)  # [4, V]
    return {(a, b): float(p1[a] * p2[i, b]) for i, a in enumerate(firsts) for b in p2[i].nonzero().squeeze(-1).tolist()}


@pytest.mark.slow
@pytest.mark.parametrize("q_mode", ["full", "topk"])
def test_smollm2_sampled_tokens_follow_the_target_distribution(smollm2_pair, q_mode):
    """Top-4 p at temperature 1; full q (exactly zero outside the draft's sub-vocabulary head) or its renormalised top-8."""
    draft, target = smollm2_pair
    prompt = encode_chat(target.tokenizer, PROMPT_MESSAGES)
    joint = _target_joint(target, prompt)
    cfg = GenerationConfig(max_new_tokens=2, sampling=PARAMS, gamma=1, q_mode=q_mode, q_top_k=8, seed=3, stop_at_eos=False)
    outs = [r for start in range(0, TRIALS, 500) for r in generate_sd(draft, target, [prompt] * 500, replace(cfg, seed=cfg.seed + start))]
    cells = sorted(joint)
    counts = {cell: 0 for cell in cells}
    for r in outs:
        pair = tuple(r.token_ids[:2])
        assert pair in counts, f"emitted {pair}, which the target gives probability 0"
        counts[pair] += 1
    drafted = sum(r.num_draft_tokens for r in outs)
    accepted = sum(r.num_accepted_tokens for r in outs)
    assert 0 < accepted < drafted  # both the accept and the reject-and-resample paths were taken
    assert_matches(np.array([counts[c] for c in cells]), np.array([joint[c] for c in cells]))
