"""Greedy decodings of one target in reduced precision: where two of them part, and whether they part at a rounding tie of its logits.

Speculative decoding computes the target's logits for γ + 1 positions in one forward, autoregressive
decoding one position per forward. The arithmetic is the same, the kernels' summation order is not, so
the logits differ by rounding. In float32 that is far below any gap between the top tokens and greedy
SD equals AD token for token (the test suite checks it). In bfloat16 or float16 logits are rounded to
8 or 11 significant bits: two tokens often tie exactly, and which of them is the argmax then depends on
the forward's shape. The two decodings then part at that token and go on as two valid greedy answers.
vLLM's documentation states the same limit: lossless up to the precision of hardware numerics.

`divergence` makes that claim checkable: at the first token where two decodings differ, it recomputes
the target's logits of the common prefix in a fresh forward and measures the gap between the two
tokens. A rounding tie is a gap within a few units in the last place (ulp) of the dtype at the logits'
magnitude; an error of the verification rule (a wrong token accepted) leaves a gap of whole logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

__all__ = ["TIE_ULPS", "Divergence", "divergence", "first_difference", "ulp"]

TIE_ULPS = 4  # a gap within this many ulps of the dtype at the logits' magnitude is a rounding tie


@dataclass(frozen=True)
class Divergence:
    """The first token where two greedy decodings differ, and the target's logit gap there (reference's token − other's)."""

    index: int  # position in the generated tokens (0 = the first new token)
    reference_token: int
    other_token: int
    gap: float  # logit of reference_token − logit of other_token, from a fresh forward over prompt + common prefix
    tolerance: float  # TIE_ULPS ulps of the model's dtype at the largest logit's magnitude

    @property
    def tie(self) -> bool:
        """True when the gap is within the dtype's rounding: both tokens are the target's greedy choice up to rounding."""
        return abs(self.gap) <= self.tolerance


def ulp(magnitude: float, dtype: torch.dtype) -> float:
    """The spacing of `dtype`'s representable numbers at `magnitude` (e.g. 0.125 for bfloat16 at 16 ≤ |x| < 32)."""
    magnitude = abs(float(magnitude))
    info = torch.finfo(dtype)
    if magnitude < info.tiny:
        return info.eps * info.tiny
    return info.eps * 2.0 ** math.floor(math.log2(magnitude))


def first_difference(reference: Sequence[int], other: Sequence[int]) -> Optional[int]:
    """Index of the first differing token, the shorter length when one is a prefix of the other, None when they are equal."""
    for i, (a, b) in enumerate(zip(reference, other)):
        if a != b:
            return i
    return None if len(reference) == len(other) else min(len(reference), len(other))


@torch.inference_mode()
def divergence(target, prompt: Sequence[int], reference: Sequence[int], other: Sequence[int],
               ulps: int = TIE_ULPS) -> Optional[Divergence]:
    """Where greedy decodings `reference` and `other` of `target` (a CausalLM) after `prompt` first differ, with the logit gap there.

    None when they are equal. Raises ValueError when one is a strict prefix of the other (not a choice of tokens).
    """
    k = first_difference(reference, other)
    if k is None:
        return None
    if k >= min(len(reference), len(other)):
        raise ValueError(f"one decoding is a prefix of the other ({len(reference)} vs {len(other)} tokens): they differ in length, not in a token")
    kv = target.new_kv(1)
    logits = target.prefill(kv, [list(prompt) + list(reference[:k])])[-1].float()  # [V]: the next token's logits
    top = float(logits.abs().max())
    gap = float(logits[reference[k]] - logits[other[k]])
    return Divergence(k, int(reference[k]), int(other[k]), gap, ulps * ulp(top, target.dtype))
