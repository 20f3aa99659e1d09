"""The draft model's KV cache with one row leased per active session: rows are added for new sessions and removed when they end.

Rows hold a cache of a prefix of the session's transcript (plus drafted tokens); drafting crops them
back to the transcript lazily (`drafting.sync_row`), so a row never has to be rebuilt. Not thread-safe:
use it from one thread (the engine's draft thread).
"""

from __future__ import annotations

from typing import Hashable

from edgespec.models.runtime import CausalLM, RaggedKV, drop_unused_columns, resize_rows, take_rows

__all__ = ["KVRows"]


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
        self.kv = resize_rows(self.lm, self.kv, self.kv.batch_size + 1)
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
        keep = [i for i in range(self.kv.batch_size) if i != index]
        self.kv = drop_unused_columns(take_rows(self.lm, self.kv, keep))  # columns only the released row used go too
