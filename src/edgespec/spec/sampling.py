"""Sampling settings and the transforms (temperature, top-k, top-p) that turn logits into the distribution p that decoding samples from.

Autoregressive decoding and speculative verification both call `probs_from_logits` with the same
`SamplingParams`, so "lossless" means: the emitted tokens follow exactly this distribution.
Temperature 0 means greedy: p is one-hot at the argmax (ties go to the lowest id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from edgespec.models.device import upload

__all__ = [
    "SamplingParams",
    "GREEDY",
    "probs_from_logits",
    "greedy_tokens",
    "sample",
    "uniform",
    "sparsify_topk",
]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings: temperature (0 = greedy), top_k (0 = off), top_p (1.0 = off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(temperature=0.0)


_NUMPY_ARGMAX_DTYPES = (torch.float32, torch.float64, torch.float16)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the last dimension, the first (lowest) index among ties (a NaN counts as the maximum). [..., V] -> [...].

    On the CPU numpy's argmax does it: its SIMD reduction is ~15x faster than torch's (0.05 vs 0.7 ms for
    [80, 8192] float32 on one core), with the same tie and NaN rules. Elsewhere, and for bfloat16, torch's.
    """
    if logits.device.type == "cpu" and logits.dtype in _NUMPY_ARGMAX_DTYPES and logits.dim() >= 1:
        return torch.from_numpy(np.asarray(logits.detach().numpy().argmax(axis=-1), dtype=np.int64))
    return logits.argmax(dim=-1)


def _apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [..., 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of highest-probability tokens whose mass reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability mass strictly above each token
    remove_sorted = mass_before >= top_p  # the first token always stays (mass_before = 0)
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def probs_from_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The target distribution p for `params`: [..., V] logits -> [..., V] float32 probabilities.

    Order: temperature, then top-k, then top-p (as in Hugging Face's and vLLM's samplers).
    Greedy (temperature 0) returns the one-hot of the argmax.
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(greedy_tokens(logits), logits.shape[-1]).float()
    logits = logits / params.temperature
    logits = _apply_top_k(logits, params.top_k)
    logits = _apply_top_p(logits, params.top_p)
    return torch.softmax(logits, dim=-1)


def uniform(n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """n draws from U(0, 1) in float64 from an explicit (CPU) generator, placed on `device` (without a stream sync)."""
    return upload(torch.rand(n, generator=generator, dtype=torch.float64), torch.device(device))


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row from [N, V] (unnormalised, non-negative) probabilities -> [N] token ids.

    Inverse-CDF sampling with uniforms from an explicit CPU generator, so the same seed gives the same
    tokens on any device. Tokens with zero probability are never drawn.
    """
    cdf = torch.cumsum(probs.double(), dim=-1)  # [N, V]
    u = uniform(probs.shape[0], generator, probs.device) * cdf[:, -1]
    idx = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def sparsify_topk(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TK-SLT: the K most likely ids and their probabilities renormalised to sum to 1.

    The drafter samples from exactly this distribution, so (ids, probs) *is* q and verification with it
    stays lossless. [..., V] -> ids [..., K] int64, probs [..., K] float32.
    """
    if k < 1:
        raise ValueError(f"top-K size must be >= 1, got {k}")
    k = min(k, probs.shape[-1])
    top = torch.topk(probs.float(), k, dim=-1)
    kept = top.values.clamp_min(0)
    total = kept.sum(dim=-1, keepdim=True)
    # a row whose top-K mass is zero cannot happen for a proper distribution; guard against it anyway
    kept = torch.where(total > 0, kept / total.clamp_min(1e-30), torch.full_like(kept, 1.0 / k))
    return top.indices, kept
