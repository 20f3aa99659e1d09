"""Seeded random streams, one per entity and purpose, derived from the run's seed and a name (no global RNG)."""

from __future__ import annotations

import random

__all__ = ["stream"]


def stream(seed: int, *names: object) -> random.Random:
    """An independent generator for (seed, names...): the same names and seed always give the same sequence.

    Seeding from a string goes through SHA-512 (CPython's version-2 seeding), so streams do not
    depend on hash randomisation and neighbouring names are uncorrelated.
    """
    return random.Random("edgespec-sim/" + str(int(seed)) + "/" + "/".join(str(n) for n in names))
