"""Routing among verifier nodes: round robin cycles, join-shortest-queue, power of two choices (seeded)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edgespec.policy.routing import PowerOfTwoRouting, RoundRobinRouting, ShortestQueueRouting, VerifierLoad, make_routing


def test_round_robin_cycles_ignoring_load():
    r = RoundRobinRouting()
    loads = [VerifierLoad(queue_depth=q) for q in (9, 0, 5)]
    assert [r.choose(loads) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_shortest_queue_counts_placements_since_the_hint_and_breaks_ties_by_sessions():
    loads = [VerifierLoad(2, 5, 0), VerifierLoad(1, 9, 2), VerifierLoad(2, 3, 0)]
    assert ShortestQueueRouting().choose(loads) == 2  # queue estimates 2, 3, 2; fewer sessions wins the tie


def test_power_of_two_picks_the_shorter_of_two_sampled_and_is_seeded():
    loads = [VerifierLoad(queue_depth=q) for q in (0, 10, 20, 30)]
    picks = [PowerOfTwoRouting(random.Random(7)).choose(loads) for _ in range(3)]
    assert len(set(picks)) == 1  # same seed, same choice
    counts = Counter(PowerOfTwoRouting(random.Random(s)).choose(loads) for s in range(400))
    assert counts[3] == 0  # the longest queue can never be the shorter of two distinct verifiers
    assert counts[0] > counts[1] > counts[2]  # P = 3/6, 2/6, 1/6


def test_make_routing_names_and_errors():
    assert isinstance(make_routing("round_robin"), RoundRobinRouting)
    with pytest.raises(ValueError, match="needs a seeded"):
        make_routing("power_of_two")
    with pytest.raises(ValueError, match="unknown routing"):
        make_routing("random")
