"""A lean forward for plain Llama-architecture models: the same weights, cache and math as transformers' forward, without its per-call overhead.

transformers spends about 0.55 ms per forward plus 0.2 ms per layer on this CPU outside the
arithmetic (mask building, hooks, output objects; DESIGN §8). For a 2-layer draft that is most of a
decode step, and the draft's share c = t_draft/t_target is what bounds speculative decoding. This
module runs the layers of an already loaded `LlamaForCausalLM` directly with `torch.nn.functional`
and writes keys/values into the same `DynamicCache` through its public `update`, so the cache stays
interchangeable with transformers' own forward. Only configurations whose math is exactly the
plain Llama block are accepted (`supports`); anything else uses transformers' forward.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["supports", "llama_hidden", "attend"]


def supports(model) -> bool:
    """True when `model` is a plain Llama causal LM (default RoPE, SiLU MLP, no sliding window, no soft-capping)."""
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (
        getattr(cfg, "model_type", None) == "llama"
        and rope.get("rope_type", "default") == "default"
        and getattr(cfg, "hidden_act", None) == "silu"
        and getattr(cfg, "pretraining_tp", 1) == 1
        and getattr(cfg, "sliding_window", None) is None
        and type(model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"
    )


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _linear(module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, module.weight, module.bias)


def _rope(decoder, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, n, head_dim] for integer positions [B, n] (transformers' default RoPE)."""
    rot = decoder.rotary_emb
    freqs = positions[..., None].float() * rot.inv_freq.to(positions.device, torch.float)  # [B, n, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * rot.attention_scaling, emb.sin() * rot.attention_scaling
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


@torch.inference_mode()
def llama_hidden(model, ids: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor, cache,
                 packed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Final hidden states [B, n, H] for new tokens `ids` [B, n] at `positions` [B, n], appending to `cache`.

    `mask` is a [B, 1, n, C + n] bool attention mask over past and new columns, or None for a
    hole-free cache, where each new token sees every past column and the new ones up to itself.
    `packed` (optional, [T] indices into the B·n positions, ascending): the positions that hold real
    tokens when rows were right-padded to n. The projections and MLPs then run on those T tokens only
    (a batch mixing γ = 0 rows with γ = 4 rows pays for its tokens, not for B × 5 positions); attention
    and the cache keep the padded [B, n] layout, and padded positions come back as zeros.
    """
    cfg, decoder = model.config, model.model
    bsz, n = ids.shape
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    scale = head_dim**-0.5
    total = bsz * n
    x = F.embedding(_pack(ids.reshape(total), packed), decoder.embed_tokens.weight)  # [T, H] (T = B·n unpacked)
    cos, sin = _rope(decoder, positions, x.dtype)
    attn_mask = mask
    for i, layer in enumerate(decoder.layers):
        # 1. attention block: projections on the tokens, attention on the padded rows
        attn = layer.self_attn
        h = _rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q = _unpack(_linear(attn.q_proj, h), packed, total).view(bsz, n, -1, head_dim).transpose(1, 2)  # [B, heads, n, d]
        k = _unpack(_linear(attn.k_proj, h), packed, total).view(bsz, n, -1, head_dim).transpose(1, 2)  # [B, kv_heads, n, d]
        v = _unpack(_linear(attn.v_proj, h), packed, total).view(bsz, n, -1, head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = cache.update(k, v, i)  # [B, kv_heads, C + n, d]
        if attn_mask is None and i == 0:
            attn_mask = _causal_tail(n, k.shape[2], x.device)  # the same for every layer
        o = attend(q, k, v, attn_mask, scale, groups)
        x = x + _linear(attn.o_proj, _pack(o.transpose(1, 2).reshape(total, -1), packed))
        # 2. MLP block
        mlp = layer.mlp
        h = _rms_norm(x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        x = x + _linear(mlp.down_proj, F.silu(_linear(mlp.gate_proj, h)) * _linear(mlp.up_proj, h))
    return _unpack(_rms_norm(x, decoder.norm.weight, decoder.norm.variance_epsilon), packed, total).view(bsz, n, -1)


def _pack(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows [B·n, …] of the padded layout -> the real tokens' rows [T, …] (as they are without an index)."""
    return x if index is None else x.index_select(0, index)


def _unpack(x: torch.Tensor, index: Optional[torch.Tensor], total: int) -> torch.Tensor:
    """The real tokens' rows [T, …] -> the padded layout [total, …], zeros at padded positions (as they are without an index)."""
    return x if index is None else x.new_zeros((total, *x.shape[1:])).index_copy_(0, index, x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float, groups: int,
           fold: Optional[bool] = None) -> torch.Tensor:
    """Attention of q [B, heads, n, d] over k, v [B, kv_heads, C, d] (heads = groups × kv_heads) under a bool mask [.., n, C].

    `fold` (default: on CUDA with grouped queries) runs grouped-query attention as plain attention over
    the KV heads, each KV head's `groups` query heads stacked along the query axis: CUDA's fused kernels
    take a mask but not `enable_gqa`, for which PyTorch falls back to its math kernel and copies K/V per
    group. Same result either way (tests/models/test_fastpath.py checks it on the CPU).
    """
    fold = (q.is_cuda and groups > 1) if fold is None else fold and groups > 1
    if not fold:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups > 1)
    bsz, heads, n, d = q.shape
    kv_heads = k.shape[1]
    stacked = q.reshape(bsz, kv_heads, groups * n, d)  # head h = kv_head·groups + j -> row j·n + t of its KV head
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape)).repeat(1, 1, groups, 1)  # [.., groups·n, C]
    out = F.scaled_dot_product_attention(stacked, k, v, attn_mask=mask, scale=scale)
    return out.reshape(bsz, heads, n, d)


def _causal_tail(n: int, total: int, device) -> Optional[torch.Tensor]:
    """Mask [n, total] where new token j sees columns ≤ total − n + j; None when n = 1 (it sees everything)."""
    if n == 1:
        return None
    cols = torch.arange(total, device=device)
    rows = total - n + torch.arange(n, device=device)
    return cols[None, :] <= rows[:, None]
