"""Tiny random-weight Llama models with a shared word-level tokenizer, for tests and examples (no training, no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["make_toy_model", "make_toy_gguf", "toy_tokenizer"]


def toy_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over "<eos>", "<pad>", "w2" … "w{V-1}" (whitespace-separated words); its post-processor puts BOS (<eos>) first."""
    vocab = {"<eos>": 0, "<pad>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<eos> $A", pair="<eos> $A $B:1", special_tokens=[("<eos>", 0)])
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


def make_toy_gguf(path: str | Path, *, vocab_size: int = 64, hidden: int = 16, layers: int = 1, heads: int = 2, seed: int = 0) -> Path:
    """Write a tiny random Llama as a GGUF file (float32 tensors, a character-level GPT-2-style tokenizer); needs the `gguf` package."""
    import numpy as np
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    ffn = 2 * hidden
    tokens = ["<s>", "</s>"] + [chr(ord("a") + i) for i in range(vocab_size - 2)]
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("toy")
    for add, value in ((writer.add_block_count, layers), (writer.add_context_length, 128), (writer.add_embedding_length, hidden),
                       (writer.add_feed_forward_length, ffn), (writer.add_head_count, heads), (writer.add_head_count_kv, heads),
                       (writer.add_rope_dimension_count, hidden // heads), (writer.add_layer_norm_rms_eps, 1e-5),
                       (writer.add_rope_freq_base, 10000.0), (writer.add_file_type, 0)):
        add(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_add_bos_token(False)

    def weight(*shape: int):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab_size, hidden))
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", weight(vocab_size, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
