"""Row surgery on a `RaggedKV` (one row per session slot): grow or shrink the number of rows, and take a subset of rows out and put them back.

`CausalLM.forward` pads every row of a cache to the widest row's new tokens, so a forward over a cache
whose rows mostly sit idle computes mostly padding. The runner therefore runs small batches on a cache
of just their rows (`take_rows`), then merges it back (`put_rows`): two copies of those rows' KV instead
of a forward over every row. Keys and values are gathered, never recomputed, so a row's cache stays
exactly that of its prefix; columns a row does not use are masked by `valid`, whatever they hold.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache

from edgespec.models.runtime import CausalLM, RaggedKV

__all__ = ["resize_rows", "take_rows", "put_rows"]


def _layers(kv: RaggedKV) -> list:
    """The cache layers holding tensors ([B, heads, C, head_dim]); empty before the first forward."""
    return [layer for layer in kv.cache.layers if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4]


def _from_tensors(lm: CausalLM, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor, lengths: torch.Tensor) -> RaggedKV:
    cache = DynamicCache(ddp_cache_data=list(zip(keys, values)), config=lm.config) if keys else DynamicCache(config=lm.config)
    return RaggedKV(cache=cache, valid=valid, lengths=lengths)


def resize_rows(lm: CausalLM, kv: RaggedKV, rows: int) -> RaggedKV:
    """`kv` with `rows` rows: new rows are empty; dropped rows (trailing) must hold no tokens."""
    old = kv.batch_size
    if rows < old and int(kv.lengths[rows:].sum()):
        raise ValueError("cannot drop rows that still hold tokens")
    layers = _layers(kv)
    if rows == 0 or not layers:  # nothing cached (columns appear only with the tensors of a forward)
        return lm.new_kv(rows)
    if rows <= old:
        for layer in layers:
            layer.keys, layer.values = layer.keys[:rows].contiguous(), layer.values[:rows].contiguous()
        kv.valid, kv.lengths = kv.valid[:rows].contiguous(), kv.lengths[:rows].contiguous()
        return kv
    extra = rows - old
    for layer in layers:
        layer.keys = torch.cat([layer.keys, layer.keys.new_zeros((extra, *layer.keys.shape[1:]))], dim=0)
        layer.values = torch.cat([layer.values, layer.values.new_zeros((extra, *layer.values.shape[1:]))], dim=0)
    kv.valid = torch.cat([kv.valid, kv.valid.new_zeros((extra, kv.columns))], dim=0)
    kv.lengths = torch.cat([kv.lengths, kv.lengths.new_zeros(extra)], dim=0)
    return kv


def take_rows(lm: CausalLM, kv: RaggedKV, rows: Sequence[int]) -> RaggedKV:
    """A new cache holding copies of `rows` (in that order); `kv` is unchanged."""
    idx = torch.tensor(list(rows), dtype=torch.long, device=kv.valid.device)
    layers = _layers(kv)
    keys = [layer.keys.index_select(0, idx) for layer in layers]
    values = [layer.values.index_select(0, idx) for layer in layers]
    return _from_tensors(lm, keys, values, kv.valid.index_select(0, idx), kv.lengths.index_select(0, idx))


def put_rows(lm: CausalLM, kv: RaggedKV, sub: RaggedKV, rows: Sequence[int]) -> RaggedKV:
    """`kv` with `rows` replaced by the rows of `sub` (as `take_rows` took them, then extended); columns are padded to fit both."""
    idx = torch.tensor(list(rows), dtype=torch.long, device=kv.valid.device)
    width = max(kv.columns, sub.columns)
    sub_layers, main_layers = _layers(sub), _layers(kv)
    valid = torch.zeros(kv.batch_size, width, dtype=torch.bool, device=kv.valid.device)
    valid[:, : kv.columns] = kv.valid
    valid[idx] = False
    valid[idx, : sub.columns] = sub.valid
    lengths = kv.lengths.clone()
    lengths[idx] = sub.lengths
    if not sub_layers:  # nothing was ever computed
        kv.valid, kv.lengths = valid, lengths
        return kv
    keys, values = [], []
    for j, s in enumerate(sub_layers):
        shape = (kv.batch_size, s.keys.shape[1], width, s.keys.shape[3])
        for name, out in (("keys", keys), ("values", values)):
            merged = getattr(s, name).new_zeros(shape)
            if main_layers:
                main = getattr(main_layers[j], name)
                merged[:, :, : main.shape[2]] = main
            merged[idx, :, : sub.columns] = getattr(s, name)
            out.append(merged)
    if main_layers:
        for layer, k, v in zip(main_layers, keys, values):
            layer.keys, layer.values = k, v
        kv.valid, kv.lengths = valid, lengths
        return _trim(kv)
    return _trim(_from_tensors(lm, keys, values, valid, lengths))


def _trim(kv: RaggedKV) -> RaggedKV:
    """Drop trailing columns that no row uses."""
    used = kv.valid.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else 0
    if keep < kv.columns:
        for layer in _layers(kv):
            layer.keys, layer.values = layer.keys[:, :, :keep], layer.values[:, :, :keep]
        kv.valid = kv.valid[:, :keep]
    return kv
