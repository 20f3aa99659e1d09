"""γ policies by name for the drafter node: the factory lives in `edgespec.policy.gamma` (shared with the simulator)."""

from edgespec.policy.gamma import GAMMA_POLICIES, make_gamma_policy

__all__ = ["GAMMA_POLICIES", "make_gamma_policy"]
