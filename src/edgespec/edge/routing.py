"""Join-shortest-queue routing: the verifier a new session joins, from the load hints each verifier last reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["VerifierLoad", "choose_shortest_queue"]


@dataclass(frozen=True)
class VerifierLoad:
    """What the drafter knows about one verifier's load: its last hints plus the sessions placed there since."""

    queue_depth: int = 0  # verification requests waiting at the verifier (last hint)
    active_sessions: int = 0  # sessions open on the verifier, all drafter nodes (last hint)
    placed_since_hint: int = 0  # sessions this drafter opened there after that hint arrived

    @property
    def queue_estimate(self) -> int:
        return self.queue_depth + self.placed_since_hint


def choose_shortest_queue(loads: Sequence[VerifierLoad]) -> int:
    """Index of the verifier with the shortest estimated queue; ties go to fewer sessions, then the lower index."""
    if not loads:
        raise ValueError("no verifier to choose from")
    return min(range(len(loads)), key=lambda i: (loads[i].queue_estimate, loads[i].active_sessions + loads[i].placed_since_hint, i))
