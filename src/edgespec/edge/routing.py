"""Join-shortest-queue routing for the drafter node: the policy lives in `edgespec.policy.routing` (shared with the simulator)."""

from edgespec.policy.routing import VerifierLoad, choose_shortest_queue

__all__ = ["VerifierLoad", "choose_shortest_queue"]
