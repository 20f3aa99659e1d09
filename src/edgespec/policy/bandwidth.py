"""Uplink bandwidth policies (uniform, min-max, min-sum) as thin objects over edgespec.plan.bandwidth, for live use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from edgespec.plan.bandwidth import Channels, allocate

__all__ = ["UplinkDemand", "BandwidthPolicy", "UniformBandwidth", "MinMaxBandwidth", "MinSumBandwidth", "channels"]


@dataclass(frozen=True)
class UplinkDemand:
    """One user's pending upload: bits, and a fixed spectral efficiency or a = P·g/N0 (Hz) for Shannon rates."""

    bits: float
    spectral_efficiency_bps_per_hz: Optional[float] = None
    snr_hz: Optional[float] = None

    def __post_init__(self) -> None:
        if self.bits <= 0:
            raise ValueError(f"bits must be > 0, got {self.bits}")
        if (self.spectral_efficiency_bps_per_hz is None) == (self.snr_hz is None):
            raise ValueError("give exactly one of spectral_efficiency_bps_per_hz or snr_hz")


def channels(demands: Sequence[UplinkDemand]) -> Channels:
    """The planner's Channels for a list of demands."""
    nan = float("nan")
    return Channels(
        np.array([d.bits for d in demands], dtype=float),
        np.array([nan if d.spectral_efficiency_bps_per_hz is None else d.spectral_efficiency_bps_per_hz for d in demands]),
        np.array([nan if d.snr_hz is None else d.snr_hz for d in demands]),
    )


@dataclass(frozen=True)
class BandwidthPolicy:
    """Split `total_hz` among the demands by a named rule; shares are returned in demand order and sum to total_hz."""

    rule: str = "uniform"

    def allocate(self, demands: Sequence[UplinkDemand], total_hz: float) -> np.ndarray:
        if not demands:
            return np.zeros(0)
        return allocate(self.rule, channels(demands), total_hz)


@dataclass(frozen=True)
class UniformBandwidth(BandwidthPolicy):
    """b_k = B/K."""

    rule: str = "uniform"


@dataclass(frozen=True)
class MinMaxBandwidth(BandwidthPolicy):
    """All uploads finish together, as early as possible."""

    rule: str = "min_max"


@dataclass(frozen=True)
class MinSumBandwidth(BandwidthPolicy):
    """The sum (mean) of upload times is least."""

    rule: str = "min_sum"
