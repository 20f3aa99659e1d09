"""The pipelining gate: whether a session drafts its next block speculatively while the current one is verified, from its hit rate and whether the draft device has other work.

A speculative block (drafted assuming the whole block in flight is accepted plus the draft's guess
of the bonus token) saves one draft pass of latency when the verdict is a hit and is thrown away on a
miss. On a draft device with nothing else to do that costs nothing but energy, so it is always
allowed; on a device that also has fresh blocks to draft for other sessions it takes their compute,
so it is allowed only while the session's hit rate h (an exponential moving average of hits) is at
least `min_hit_rate` — at h = 1/2 the expected saving of one session equals the expected cost to the
others. A session below the bar still speculates once every `probe_every` refusals, so a rate that
recovers is seen. No clock and no randomness.
"""

from __future__ import annotations

__all__ = ["PipelineGate"]


class PipelineGate:
    """One session's pipelining decision (see the module docstring)."""

    def __init__(self, min_hit_rate: float = 0.5, smoothing: float = 0.2, prior: float = 0.6, probe_every: int = 8) -> None:
        if not 0.0 <= min_hit_rate <= 1.0 or not 0.0 <= prior <= 1.0:
            raise ValueError("min_hit_rate and prior must be in [0, 1]")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if probe_every < 0:
            raise ValueError(f"probe_every must be >= 0, got {probe_every}")
        self.min_hit_rate, self.smoothing, self.probe_every = min_hit_rate, smoothing, probe_every
        self.hit_rate = prior
        self.refused = 0  # speculative blocks refused since the last one allowed
        self.refusals = 0  # in all

    def allow(self, device_busy: bool) -> bool:
        """Whether to draft a speculative block now; `device_busy`: the same draft pass has fresh blocks of other sessions."""
        if not device_busy or self.hit_rate >= self.min_hit_rate:
            self.refused = 0
            return True
        if self.probe_every and self.refused >= self.probe_every:
            self.refused = 0
            return True
        self.refused += 1
        self.refusals += 1
        return False

    def observe(self, hit: bool) -> None:
        """A speculative block of this session was used (hit) or dropped (miss)."""
        self.hit_rate += self.smoothing * ((1.0 if hit else 0.0) - self.hit_rate)
