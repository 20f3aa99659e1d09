"""Closed-form theory of speculative decoding: expected tokens per round, speedups, and TK-SLT's optimal draft length.

Pure functions on floats; needs numpy and scipy only (never torch), so the planner and simulator
can use it where torch is not installed.

Symbols (DESIGN §3):
- alpha: i.i.d. per-position acceptance probability, 0 <= alpha < 1.
- gamma: draft length (tokens proposed per round), an integer >= 0.
- c: t_draft / t_target, the draft step time relative to one target decode step.
- b: uplink time per drafted position / t_target (TK-SLT); L = b + c.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence, Union


__all__ = [
    "expected_tokens_per_round",
    "fit_alpha",
    "leviathan_speedup",
    "tkslt_speedup",
    "tkslt_gamma0",
    "odld_gamma",
    "as2_choice",
    "AS2Choice",
]


def _check_alpha(alpha: float) -> None:
    if not (0.0 <= alpha < 1.0) or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")


def _check_gamma(gamma: int) -> None:
    if int(gamma) != gamma or gamma < 0:
        raise ValueError(f"gamma must be a non-negative integer, got {gamma!r}")


def expected_tokens_per_round(alpha: float, gamma: int) -> float:
    """E(γ) = (1 − α^(γ+1)) / (1 − α): tokens emitted per round (accepted + 1) under i.i.d. acceptance."""
    _check_alpha(alpha)
    _check_gamma(gamma)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def fit_alpha(tokens_per_round: float, gamma: Union[int, Sequence[int]]) -> float:
    """The i.i.d. α whose E(γ), averaged over the rounds' draft lengths `gamma` (one γ or one per round), equals the measured tokens per round.

    The measured mean is clamped to [1, mean(γ) + 1]: no draft ever accepted gives α = 0, every
    draft accepted gives α = 1 (where E(γ) = γ + 1).
    """
    counts = Counter([gamma] if isinstance(gamma, int) else list(gamma))
    for g in counts:
        _check_gamma(g)
    rounds = sum(counts.values())
    if not rounds or not any(counts.keys()):
        raise ValueError("fitting alpha needs at least one round with gamma >= 1")
    most = sum((g + 1) * n for g, n in counts.items()) / rounds
    if not math.isfinite(tokens_per_round):
        raise ValueError(f"tokens_per_round must be finite, got {tokens_per_round!r}")
    if tokens_per_round <= 1.0:
        return 0.0
    if tokens_per_round >= most:
        return 1.0

    def excess(alpha: float) -> float:
        if alpha >= 1.0:
            return most - tokens_per_round
        return sum(expected_tokens_per_round(alpha, g) * n for g, n in counts.items()) / rounds - tokens_per_round

    from scipy.optimize import brentq  # scipy loads on first use: `edgespec sim`/`plan` start faster

    return float(brentq(excess, 0.0, 1.0))


def leviathan_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al.'s walltime speedup over AD, S = E(γ) / (γ·c + 1), assuming a verify pass costs one decode step."""
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c!r}")
    return expected_tokens_per_round(alpha, gamma) / (gamma * c + 1.0)


def tkslt_speedup(alpha: float, gamma: int, L: float) -> float:
    """TK-SLT speedup S(γ) = (1 − α^(γ+1)) / ((1 − α)(1 + γL)), with L = b + c (upload plus draft time per position)."""
    if L < 0:
        raise ValueError(f"L must be >= 0, got {L!r}")
    return expected_tokens_per_round(alpha, gamma) / (1.0 + gamma * L)


def tkslt_gamma0(alpha: float, L: float) -> float:
    """Continuous maximiser of TK-SLT's S(γ): γ0 = (W₋₁(−α^(1/L − 1)/e) + 1)/ln α − 1/L (Lambert W, lower branch).

    Setting dS/dγ = 0 gives α^(γ+1)·(−ln α)(1 + γL) = L(1 − α^(γ+1)); with z = (γ + 1/L)·ln α this
    becomes z·e^z = −α^(1/L − 1)/e, whose argument lies in (−1/e, 0) for 0 < α < 1 and L > 0, and the
    root with S increasing before it is on the lower branch W₋₁. Valid for 0 < α < 1 and 0 < L < 1.
    """
    _check_alpha(alpha)
    if alpha == 0.0:
        return 0.0
    if not (0.0 < L < 1.0):
        raise ValueError(f"L must be in (0, 1) for the TK-SLT optimum, got {L!r}")
    arg = -(alpha ** (1.0 / L - 1.0)) / math.e
    from scipy.special import lambertw

    w = lambertw(arg, k=-1).real
    return (w + 1.0) / math.log(alpha) - 1.0 / L


def odld_gamma(alpha: float, L: float) -> int:
    """ODLD: γ* = 1 if γ0 < 1, else whichever of ⌊γ0⌋, ⌈γ0⌉ gives the larger S (ties go to ⌈γ0⌉)."""
    g0 = tkslt_gamma0(alpha, L)
    if g0 < 1.0:
        return 1
    lo, hi = math.floor(g0), math.ceil(g0)
    return lo if tkslt_speedup(alpha, lo, L) > tkslt_speedup(alpha, hi, L) else hi


@dataclass(frozen=True)
class AS2Choice:
    """AS²'s decision: speculate with `gamma` if `use_sd`, else decode autoregressively; `speedup` is S(γ*)."""

    use_sd: bool
    gamma: int
    speedup: float


def as2_choice(alpha: float, L: float) -> AS2Choice:
    """AS²: use SD with γ* = ODLD(α, L) only if S(γ*) > 1; otherwise fall back to AD (γ = 0, S = 1)."""
    if L >= 1.0:
        return AS2Choice(use_sd=False, gamma=0, speedup=1.0)
    gamma = odld_gamma(alpha, L)
    s = tkslt_speedup(alpha, gamma, L)
    if s > 1.0:
        return AS2Choice(use_sd=True, gamma=gamma, speedup=s)
    return AS2Choice(use_sd=False, gamma=0, speedup=1.0)
