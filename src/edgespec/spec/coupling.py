"""Position-keyed Gumbel-max coupling: seeded sampling whose tokens depend only on (seed, prompt), and its verification rule.

A request with seed s at temperature > 0 emits at absolute transcript position j the token
    y_j = argmax_x (log p_j(x) + G_{s,j}(x)),
where p_j is the processed target distribution (temperature, top-k, top-p; log 0 = −inf outside its
support) and G_{s,j} is i.i.d. standard Gumbel noise over the vocabulary, a pure function of (s, j)
(`gumbel_noise`). That is autoregressive Gumbel-max sampling: y_j | y_<j ~ p_j, so the output is
distributed exactly as p (lossless), and it is a deterministic function of (seed, prompt) — the same
whatever γ, drafter, drafted tokens, q encoding, pipelining, load or verifier produced it.

A drafter that knows s drafts x_j = argmax_x (log q_j(x) + G_{s,j}(x)) with the same noise, so its
draft agrees with the target where q_j is close to p_j. Verification (`verify_coupled`) accepts drafted
tokens while x_j == y_j and emits y_j at the first disagreement, or the bonus y after the last drafted
token. Any drafted tokens are fine (they cannot change y), so q never needs to travel.

Noise: Philox4x64-10 (numpy's `Philox`, Random123's generator) keyed by the 128-bit key (s mod 2^64, j),
counter blocks 1, 2, … (numpy increments its counter, initially 0, before each block of four outputs); the
i-th 64-bit output r_i gives u_i = ((r_i >> 11) + ½) / 2^53 ∈ (0, 1) and G(i) = −log(−log u_i), in
float64 on the host. Philox is a counter-based generator with published known-answer vectors, so the
noise is the same on every platform and device (it is moved to the logits' device afterwards).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from edgespec.spec.verify import DraftBatch, VerifyResult, verify_greedy

__all__ = ["gumbel_noise", "noise_rows", "block_noise", "coupled_scores", "coupled_tokens", "verify_coupled"]

_MASK64 = (1 << 64) - 1
_TWO_POW_MINUS_53 = 2.0**-53


def gumbel_noise(seed: int, position: int, vocab_size: int) -> np.ndarray:
    """G_{seed,position}: `vocab_size` i.i.d. standard Gumbel draws, a pure function of its arguments. -> [V] float64."""
    if position < 0 or vocab_size < 1:
        raise ValueError(f"need position >= 0 and vocab_size >= 1, got {position}, {vocab_size}")
    key = np.array([int(seed) & _MASK64, int(position) & _MASK64], dtype=np.uint64)
    raw = np.random.Philox(key=key).random_raw(vocab_size)  # [V] uint64
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * _TWO_POW_MINUS_53
    return -np.log(-np.log(u))


def noise_rows(seeds: Sequence[int], positions: Sequence[int], vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Row r is G_{seeds[r], positions[r]}. -> [R, V] float64 on `device`."""
    if len(seeds) != len(positions):
        raise ValueError(f"need a seed per position, got {len(seeds)} seeds and {len(positions)} positions")
    if not positions:
        return torch.zeros(0, vocab_size, dtype=torch.float64, device=device)
    rows = np.stack([gumbel_noise(s, j, vocab_size) for s, j in zip(seeds, positions)])
    return torch.from_numpy(rows).to(device)


def block_noise(draft: DraftBatch, seeds: Sequence[int], positions: Sequence[int], vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise of every target row of a ragged draft batch: sequence i (seed seeds[i], block at transcript position
    positions[i], γ_i drafted tokens) has rows for positions positions[i] … positions[i] + γ_i. -> [N + B, V] float64."""
    gammas = draft.gammas.tolist()
    if len(seeds) != len(gammas) or len(positions) != len(gammas):
        raise ValueError(f"need a seed and a position per sequence ({len(gammas)}), got {len(seeds)} and {len(positions)}")
    row_seeds = [s for s, g in zip(seeds, gammas) for _ in range(g + 1)]
    row_positions = [p + k for p, g in zip(positions, gammas) for k in range(g + 1)]
    return noise_rows(row_seeds, row_positions, vocab_size, device)


def coupled_scores(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log p + G, with −inf where p = 0 (outside the support). probs [R, V], noise [R, V] -> [R, V] float64."""
    return torch.log(probs.double()) + noise.to(device=probs.device, dtype=torch.float64)


def coupled_tokens(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One Gumbel-max draw per row: argmax (log p + G) (ties to the lowest id; they have probability 0). -> [R] int64."""
    return coupled_scores(probs, noise).argmax(dim=-1)


def verify_coupled(target_probs: torch.Tensor, draft: DraftBatch, noise: torch.Tensor) -> VerifyResult:
    """Coupled verification of a ragged draft batch: y = argmax (log p + G) per target row; accept drafted x while x == y,
    then emit y (at the first disagreement, or the bonus row after the last drafted token).

    target_probs [N + B, V] is p under the session's sampling settings and noise [N + B, V] the Gumbel noise of the
    same rows (`block_noise`); q is not used, so any drafted tokens (and any q encoding) give the same output.
    """
    if target_probs.shape != noise.shape:
        raise ValueError(f"target_probs {tuple(target_probs.shape)} and noise {tuple(noise.shape)} must have the same shape")
    return verify_greedy(coupled_scores(target_probs, noise), draft)
