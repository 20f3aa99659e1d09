"""Tiny random-weight Llama models with a shared word-level tokenizer, for tests and examples (no training, no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["make_toy_model", "toy_tokenizer"]


def toy_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over "<eos>", "<pad>", "w2" … "w{V-1}" (whitespace-separated words)."""
    vocab = {"<eos>": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>", pad_token="<pad>")


def make_toy_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 64,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    seed: int = 0,
    logit_scale: float = 1.0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    like: str | Path | None = None,
    noise: float = 0.0,
) -> Path:
    """Write a random Llama causal LM + tokenizer to `out_dir` in Hugging Face format; returns the path.

    `logit_scale` multiplies the output head so that toy distributions can be made sharper (> 1) or flatter
    (negative values make an adversarial model). With `like`, start from that toy model's weights and add
    Gaussian noise of std `noise`: a draft that agrees with its target only partly. `kv_heads` < `heads`
    gives grouped-query attention.
    """
    out = Path(out_dir)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=1,
    )
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(like) if like is not None else LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if like is not None:
                p.add_(torch.randn(p.shape, generator=gen) * noise)
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(like) if like is not None else toy_tokenizer(vocab_size)
    tokenizer.save_pretrained(out)
    return out
