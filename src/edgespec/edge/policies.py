"""γ policies by name, one instance per session: static, heuristic (+2/−1), confidence (SLED), odld (TK-SLT), leviathan."""

from __future__ import annotations

from edgespec.policy.gamma import ConfidenceGamma, GammaPolicy, HeuristicGamma, LeviathanGamma, OdldGamma, StaticGamma

__all__ = ["GAMMA_POLICIES", "make_gamma_policy"]

GAMMA_POLICIES: tuple[str, ...] = ("static", "heuristic", "confidence", "odld", "leviathan")


def make_gamma_policy(name: str, gamma: int = 4, max_gamma: int = 16, confidence_threshold: float = 0.3) -> GammaPolicy:
    """A fresh γ policy: `gamma` is the static value (static) or the starting value (heuristic); `max_gamma` bounds all of them."""
    if not 0 <= gamma <= max_gamma:
        raise ValueError(f"need 0 <= gamma <= max_gamma, got gamma={gamma}, max_gamma={max_gamma}")
    if name == "static":
        return StaticGamma(gamma)
    if name == "heuristic":
        return HeuristicGamma(initial=max(gamma, 1), min_gamma=1, max_gamma=max(max_gamma, 1))
    if name == "confidence":
        return ConfidenceGamma(confidence_threshold, max_gamma=max_gamma)
    if name == "odld":
        return OdldGamma(max_gamma=max_gamma)
    if name == "leviathan":
        return LeviathanGamma(max_gamma=max(max_gamma, 1))
    raise ValueError(f"unknown γ policy {name!r}; choose one of {', '.join(GAMMA_POLICIES)}")
