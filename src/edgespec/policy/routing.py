"""Routing among verifier nodes: round robin, join-shortest-queue and power-of-two choices, from the load hints a drafter node holds."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["VerifierLoad", "choose_shortest_queue", "RoundRobinRouting", "ShortestQueueRouting", "PowerOfTwoRouting", "make_routing"]


@dataclass(frozen=True)
class VerifierLoad:
    """What the drafter knows about one verifier's load: its last hints plus the sessions placed there since."""

    queue_depth: int = 0  # verification requests waiting at the verifier (last hint)
    active_sessions: int = 0  # sessions open on the verifier, all drafter nodes (last hint)
    placed_since_hint: int = 0  # sessions this drafter opened there after that hint arrived

    @property
    def queue_estimate(self) -> int:
        return self.queue_depth + self.placed_since_hint


def _load_key(loads: Sequence[VerifierLoad], i: int) -> tuple[int, int, int]:
    return (loads[i].queue_estimate, loads[i].active_sessions + loads[i].placed_since_hint, i)


def choose_shortest_queue(loads: Sequence[VerifierLoad]) -> int:
    """Index of the verifier with the shortest estimated queue; ties go to fewer sessions, then the lower index."""
    if not loads:
        raise ValueError("no verifier to choose from")
    return min(range(len(loads)), key=lambda i: _load_key(loads, i))


class RoundRobinRouting:
    """Verifiers in turn, ignoring load."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, loads: Sequence[VerifierLoad]) -> int:
        if not loads:
            raise ValueError("no verifier to choose from")
        i = self._next % len(loads)
        self._next = i + 1
        return i


class ShortestQueueRouting:
    """Join-shortest-queue over every verifier."""

    def choose(self, loads: Sequence[VerifierLoad]) -> int:
        return choose_shortest_queue(loads)


class PowerOfTwoRouting:
    """Power of two choices: sample two verifiers (seeded), join the shorter queue."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, loads: Sequence[VerifierLoad]) -> int:
        if not loads:
            raise ValueError("no verifier to choose from")
        if len(loads) == 1:
            return 0
        a, b = self.rng.sample(range(len(loads)), 2)
        return min(a, b, key=lambda i: _load_key(loads, i))


def make_routing(name: str, rng: Optional[random.Random] = None):
    """A routing policy by name: round_robin, jsq, power_of_two (needs `rng`)."""
    if name == "round_robin":
        return RoundRobinRouting()
    if name == "jsq":
        return ShortestQueueRouting()
    if name == "power_of_two":
        if rng is None:
            raise ValueError("power_of_two routing needs a seeded random.Random")
        return PowerOfTwoRouting(rng)
    raise ValueError(f"unknown routing {name!r}; choose one of round_robin, jsq, power_of_two")
