"""The draft model's KV cache with one row leased per active session: rows are added for new sessions and removed when they end.

Rows hold a cache of a prefix of the session's transcript (plus drafted tokens); drafting crops them
back to the transcript lazily (`drafting.sync_row`), so a row never has to be rebuilt. Not thread-safe:
use it from one thread (the engine's draft thread).
"""

from __future__ import annotations

from typing import Hashable

import torch

from edgespec.models.runtime import CausalLM, RaggedKV

__all__ = ["KVRows"]


def _layers(kv: RaggedKV):
    """Cache layers that hold tensors [B, heads, columns, head_dim] (before the first forward there are none)."""
    return [layer for layer in kv.cache.layers if getattr(layer, "keys", None) is not None and layer.keys.dim() == 4]


class KVRows:
    """A `RaggedKV` of the draft model whose rows are leased to sessions (`row(key)`, `release(key)`)."""

    def __init__(self, lm: CausalLM):
        self.lm = lm
        self.kv: RaggedKV = lm.new_kv(0)
        self._keys: list[Hashable] = []

    @property
    def size(self) -> int:
        return len(self._keys)

    def keys(self) -> tuple[Hashable, ...]:
        return tuple(self._keys)

    def row(self, key: Hashable) -> int:
        """The row of `key`, appending an empty row for a new key."""
        try:
            return self._keys.index(key)
        except ValueError:
            pass
        kv = self.kv
        for layer in _layers(kv):
            pad = torch.zeros((1, *layer.keys.shape[1:]), dtype=layer.keys.dtype, device=layer.keys.device)
            layer.keys = torch.cat([layer.keys, pad], dim=0)
            layer.values = torch.cat([layer.values, pad.clone()], dim=0)
        kv.valid = torch.cat([kv.valid, torch.zeros(1, kv.columns, dtype=torch.bool, device=kv.valid.device)], dim=0)
        kv.lengths = torch.cat([kv.lengths, torch.zeros(1, dtype=torch.long, device=kv.lengths.device)])
        self._keys.append(key)
        return len(self._keys) - 1

    def release(self, key: Hashable) -> None:
        """Drop the row of `key` (no-op for an unknown key); later rows move up by one."""
        if key not in self._keys:
            return
        index = self._keys.index(key)
        del self._keys[index]
        if not self._keys:
            self.kv = self.lm.new_kv(0)
            return
        kv = self.kv
        keep = torch.tensor([i for i in range(kv.batch_size) if i != index], dtype=torch.long, device=kv.valid.device)
        for layer in _layers(kv):
            layer.keys, layer.values = layer.keys.index_select(0, keep), layer.values.index_select(0, keep)
        kv.valid, kv.lengths = kv.valid.index_select(0, keep), kv.lengths.index_select(0, keep)
        used = kv.valid.any(dim=0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 0
        if width < kv.columns:  # columns only the released row used
            for layer in _layers(kv):
                layer.keys, layer.values = layer.keys[..., :width, :], layer.values[..., :width, :]
            kv.valid = kv.valid[:, :width]
