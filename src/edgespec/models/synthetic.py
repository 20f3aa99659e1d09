"""Llama-shaped targets with random weights, built directly on the device, for timing forwards of real model sizes without their checkpoints.

A forward's time depends on the shapes (layers, widths, heads, vocabulary, batch, context) and the
dtype, not on the weights' values: the same kernels run on the same sizes. So step times of a
randomly initialised Llama-2-7B-shaped model are the step times of Llama-2-7B, while its outputs are
meaningless (never use them for acceptance). The model is created on the target device in the
target dtype (no CPU copy of 7B parameters, no float32 detour): about 13.5 GB of bf16 for the 7B
shape, initialised in seconds on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LlamaShape", "SHAPES", "random_llama"]


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama decoder: what a forward's time depends on."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tie_embeddings: bool = False
    max_positions: int = 4096
    like: str = ""  # the public model it mirrors

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def parameters(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        attn = self.hidden * self.hidden * 2 + 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.ffn
        per_layer = attn + mlp + 2 * self.hidden
        head = 0 if self.tie_embeddings else self.vocab * self.hidden
        return self.layers * per_layer + self.vocab * self.hidden + head + self.hidden


SHAPES: dict[str, LlamaShape] = {
    # Llama-3.2-1B: GQA 32/8, 128k vocabulary, tied embeddings (1.24 B parameters)
    "llama1b": LlamaShape("llama1b", 2048, 16, 32, 8, 8192, 128256, tie_embeddings=True, like="Llama-3.2-1B"),
    # Llama-2-7B: multi-head attention, 32k vocabulary (6.74 B parameters)
    "llama7b": LlamaShape("llama7b", 4096, 32, 32, 32, 11008, 32000, like="Llama-2-7B"),
    # tiny stand-ins with the same structure, for the CPU smoke run of the measurement
    "smoke-gqa": LlamaShape("smoke-gqa", 64, 2, 8, 2, 192, 1024, tie_embeddings=True, like="llama1b (tiny)"),
    "smoke-mha": LlamaShape("smoke-mha", 128, 2, 4, 4, 344, 512, like="llama7b (tiny)"),
}


def random_llama(shape: LlamaShape, device: torch.device | str, dtype: torch.dtype, seed: int = 0, cuda_graphs=None):
    """A `CausalLM` of `shape` with random weights (std 0.02), made on `device` in `dtype`; graphs as `CausalLM.load` sets them."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from edgespec.models.runtime import CausalLM
    from edgespec.models.toy import toy_tokenizer

    device = torch.device(device)
    cfg = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tie_embeddings, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):  # seeded without touching the caller's generators
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    lm = CausalLM(model, toy_tokenizer(64))  # the tokenizer is never used for timing
    lm.default_graphs(cuda_graphs)
    return lm
