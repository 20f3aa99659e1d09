"""Seeded (coupled) drafting over `CausalLM`s: draft tokens by Gumbel-max with each request's position-keyed noise.

`CoupledDraw` is a draw for `decoder.draft_loop`: at step t the rows still drafting are those with γ_b > t
(the loop's contract), and row b's token is at transcript position starts[b] + t, so it is
argmax (log q + G_{seeds[b], starts[b] + t}) (`edgespec.spec.coupling`). Blocks carry tokens only: the coupled
rule needs no q. Temperature 0 is plain greedy drafting (the seed plays no part there).
"""

from __future__ import annotations

from typing import Sequence

import torch

from edgespec.spec.coupling import coupled_tokens, noise_rows
from edgespec.spec.sampling import SamplingParams, greedy_tokens, probs_from_logits

__all__ = ["CoupledDraw"]


class CoupledDraw:
    """A `draft_loop` draw: row b's step-t token is the Gumbel-max draw from q at position starts[b] + t under seeds[b]."""

    def __init__(self, params: SamplingParams, seeds: Sequence[int], starts: Sequence[int], gammas: Sequence[int]) -> None:
        if not len(seeds) == len(starts) == len(gammas):
            raise ValueError("need a seed, a start position and a γ per row")
        self.params, self.seeds, self.starts, self.gammas = params, list(seeds), list(starts), list(gammas)
        self.step = 0

    def __call__(self, logits: torch.Tensor) -> tuple:
        """logits [R, V] of the rows still drafting at this step -> tokens [R], no q, no q ids, confidence q(x) [R]."""
        live = [b for b, g in enumerate(self.gammas) if g > self.step]
        if len(live) != logits.shape[0]:
            raise ValueError(f"step {self.step}: {logits.shape[0]} rows of logits for {len(live)} drafting rows")
        if self.params.greedy:
            tokens = greedy_tokens(logits)
            probs = torch.softmax(logits.float(), dim=-1)
        else:
            probs = probs_from_logits(logits, self.params)  # [R, V]
            noise = noise_rows([self.seeds[b] for b in live], [self.starts[b] + self.step for b in live], probs.shape[-1], probs.device)
            tokens = coupled_tokens(probs, noise)
        self.step += 1
        return tokens, None, None, probs.gather(1, tokens[:, None]).squeeze(1)
