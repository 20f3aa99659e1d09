"""Admission control for the verifier's KV cache: each open session reserves its worst-case token count against a fixed budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

__all__ = ["KvBudget", "Admission"]


@dataclass(frozen=True)
class Admission:
    """The answer to a reservation request: admitted, or why not (`never`: the session alone is over the budget)."""

    admitted: bool
    reserved_tokens: int
    free_tokens: int
    never: bool = False


class KvBudget:
    """Reservations of KV tokens per session against `budget_tokens`; a session that does not fit is refused, nothing admitted is touched."""

    def __init__(self, budget_tokens: int) -> None:
        if budget_tokens < 1:
            raise ValueError(f"budget_tokens must be >= 1, got {budget_tokens}")
        self.budget_tokens = budget_tokens
        self._reserved: dict[Hashable, int] = {}
        self._total = 0

    @property
    def reserved_tokens(self) -> int:
        return self._total

    @property
    def free_tokens(self) -> int:
        return self.budget_tokens - self._total

    def reserve(self, key: Hashable, tokens: int) -> Admission:
        """Reserve `tokens` for `key` if they fit (a key holds at most one reservation)."""
        if key in self._reserved:
            raise KeyError(f"{key!r} already holds a reservation")
        if tokens > self.budget_tokens:
            return Admission(False, tokens, self.free_tokens, never=True)
        if tokens > self.free_tokens:
            return Admission(False, tokens, self.free_tokens)
        self._reserved[key] = tokens
        self._total += tokens
        return Admission(True, tokens, self.free_tokens)

    def release(self, key: Hashable) -> int:
        """Free `key`'s reservation (0 if it held none); returns the tokens freed."""
        tokens = self._reserved.pop(key, 0)
        self._total -= tokens
        return tokens

    def reservation(self, key: Hashable) -> int:
        return self._reserved.get(key, 0)
