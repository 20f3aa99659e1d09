"""An output head over a subset of the vocabulary: a draft's q is exactly zero outside it, and its head costs S rows instead of V.

A small draft model's decode step is dominated by its output head when the vocabulary is large
(SmolLM2: 49,152 × 576, as much as ~8 of its layers). Keeping only the S tokens the target emits
most often makes that head S/V as costly. The logits of every other token are −inf, so the draft
distribution q is exactly zero there: the verifier's rules stay lossless for any q, and only
acceptance can drop (a token outside the head is never proposed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SubVocabHead"]


class SubVocabHead(torch.nn.Module):
    """Logits [..., V] from hidden states [..., H] with a head over `token_ids` only (−inf elsewhere)."""

    def __init__(self, full_weight: torch.Tensor, token_ids: torch.Tensor):
        super().__init__()
        vocab_size = full_weight.shape[0]
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=full_weight.device)
        if ids.dim() != 1 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"head token ids must be a non-empty list of ids in [0, {vocab_size})")
        if ids.unique().numel() != ids.numel():
            raise ValueError("head token ids must not repeat")
        self.vocab_size = vocab_size
        self.weight = torch.nn.Parameter(full_weight.detach()[ids].contiguous(), requires_grad=False)  # [S, H]
        self.register_buffer("token_ids", ids)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        sub = F.linear(hidden, self.weight)  # [..., S]
        out = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.token_ids, sub)
