"""Allocation of the shared wireless uplink bandwidth among tasks: uniform, min-max, min-sum and deadline-driven.

Each task k uploads D_k bits over a share b_k of the total bandwidth B (FDMA, Σ b_k ≤ B). Its
rate is either r_k = b_k·e_k for a fixed spectral efficiency e_k, or Shannon's
r_k = b_k·log2(1 + a_k / b_k) with a_k = P_k·g_k / N0 (the SNR depends on the share because
noise power grows with bandwidth). Upload time T_k = D_k / r_k.

- min-max (minimise the last upload): fixed e gives b_k ∝ D_k/e_k and T* = Σ D_k/e_k / B; with
  Shannon rates all tasks finish together at the T* where Σ b_k(T*) = B, found by bisection,
  and b_k(T) (the bandwidth that reaches rate D_k/T) has a closed form via Lambert W.
- min-sum (minimise Σ T_k): fixed e gives b_k ∝ sqrt(D_k/e_k); Shannon rates solve the KKT
  condition D_k·r_k'(b_k)/r_k(b_k)² = λ by nested bisection.
- deadlines (for a given plan): the smallest makespan T such that every task k is uploaded by
  T − tail_k, where tail_k is the serving time left from its batch on (bisection on T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import lambertw

from edgespec.plan.scenario import Task, UplinkSpec

__all__ = [
    "Channels",
    "channels_from_tasks",
    "rate_bps",
    "upload_times_s",
    "required_bandwidth_hz",
    "uniform_shares",
    "min_max_fixed",
    "min_sum_fixed",
    "min_max_shares",
    "min_sum_shares",
    "deadline_shares",
    "min_makespan_shares",
    "allocate",
]

_LN2 = math.log(2.0)


@dataclass(frozen=True, eq=False)
class Channels:
    """Per-task upload demand and channel: bits, and either a fixed efficiency or a = P·g/N0 (Hz) for Shannon rates."""

    bits: np.ndarray  # (K,) > 0
    efficiency_bps_per_hz: np.ndarray  # (K,) fixed e_k, nan where the task uses a Shannon rate
    snr_hz: np.ndarray  # (K,) a_k = P_k g_k / N0, nan where the task uses a fixed efficiency

    @property
    def fixed(self) -> np.ndarray:
        """Mask of tasks with a fixed spectral efficiency."""
        return ~np.isnan(self.efficiency_bps_per_hz)

    def __len__(self) -> int:
        return len(self.bits)


def channels_from_tasks(tasks: Sequence[Task], uplink: UplinkSpec) -> Channels:
    """Channels of the tasks in order (upload bytes → bits)."""
    bits = np.array([8.0 * t.upload_bytes for t in tasks])
    eff = np.array([np.nan if t.spectral_efficiency_bps_per_hz is None else t.spectral_efficiency_bps_per_hz for t in tasks])
    snr = np.array(
        [np.nan if t.spectral_efficiency_bps_per_hz is not None else t.tx_power_w * t.channel_gain / uplink.noise_w_per_hz
         for t in tasks]
    )
    return Channels(bits, eff, snr)


def rate_bps(ch: Channels, bandwidth_hz: np.ndarray) -> np.ndarray:
    """Uplink rate of each task for its bandwidth share."""
    b = np.asarray(bandwidth_hz, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        shannon = np.where(b > 0, b * np.log2(1.0 + ch.snr_hz / np.where(b > 0, b, 1.0)), 0.0)
    return np.where(ch.fixed, b * np.nan_to_num(ch.efficiency_bps_per_hz), np.nan_to_num(shannon))


def upload_times_s(ch: Channels, bandwidth_hz: np.ndarray) -> np.ndarray:
    """Upload time D_k / r_k of each task (inf for a zero share)."""
    r = rate_bps(ch, bandwidth_hz)
    with np.errstate(divide="ignore"):
        return np.where(r > 0, ch.bits / np.where(r > 0, r, 1.0), np.inf)


def required_bandwidth_hz(ch: Channels, target_rate_bps: np.ndarray) -> np.ndarray:
    """Smallest share reaching `target_rate_bps` per task: R/e, or the Lambert-W inverse of b·log2(1 + a/b) (inf if R ≥ a/ln2)."""
    rate = np.asarray(target_rate_bps, dtype=float) * np.ones(len(ch))
    out = np.full(len(ch), np.inf)
    fixed = ch.fixed
    out[fixed] = rate[fixed] / ch.efficiency_bps_per_hz[fixed]
    sh = ~fixed
    if np.any(sh):
        a = ch.snr_hz[sh]
        c = rate[sh] * _LN2 / a  # b·log2(1+a/b) = R  ⇔  y = 1 + a/b solves c(y − 1) = ln y
        ok = c < 1.0
        b = np.full(c.shape, np.inf)
        cc = np.where(ok, np.maximum(c, 1e-300), 0.5)
        y = -lambertw(-cc * np.exp(-cc), k=-1).real / cc
        b[ok] = a[ok] / (y[ok] - 1.0)
        b[rate[sh] <= 0] = 0.0
        out[sh] = b
    return out


def uniform_shares(ch: Channels, total_hz: float) -> np.ndarray:
    """b_k = B / K."""
    return np.full(len(ch), total_hz / len(ch))


def min_max_fixed(bits: np.ndarray, efficiency: np.ndarray, total_hz: float) -> tuple[np.ndarray, float]:
    """Closed form for fixed efficiency: b_k = B·(D_k/e_k)/Σ(D/e) equalises T_k = Σ(D/e)/B, the least possible maximum."""
    w = np.asarray(bits, dtype=float) / np.asarray(efficiency, dtype=float)
    return total_hz * w / w.sum(), float(w.sum() / total_hz)


def min_sum_fixed(bits: np.ndarray, efficiency: np.ndarray, total_hz: float) -> tuple[np.ndarray, float]:
    """Closed form for fixed efficiency: b_k ∝ sqrt(D_k/e_k) minimises Σ D_k/(e_k b_k) = (Σ sqrt(D/e))² / B."""
    w = np.sqrt(np.asarray(bits, dtype=float) / np.asarray(efficiency, dtype=float))
    return total_hz * w / w.sum(), float(w.sum() ** 2 / total_hz)


def _first_feasible(f, lo: float, hi: float, iters: int = 200) -> float:
    """Smallest x in [lo, hi] with f(x) ≤ 0 for f decreasing in x (returns hi-side bound)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if f(mid) <= 0:
            hi = mid
        else:
            lo = mid
    return hi


def deadline_shares(ch: Channels, deadlines_s: np.ndarray, total_hz: float) -> np.ndarray | None:
    """Shares that upload every task by its deadline with the least bandwidth, scaled up to use all of B; None if infeasible."""
    d = np.asarray(deadlines_s, dtype=float)
    with np.errstate(divide="ignore"):
        need = required_bandwidth_hz(ch, np.where(d > 0, ch.bits / np.where(d > 0, d, 1.0), np.inf))
    if not np.all(np.isfinite(need)) or need.sum() > total_hz * (1 + 1e-9):
        return None
    return _spread(need, total_hz)


def _spread(need: np.ndarray, total_hz: float) -> np.ndarray:
    """Scale minimal shares up proportionally so that they sum to B (never slower; sum exactly B)."""
    s = need.sum()
    if s <= 0:
        return np.full(len(need), total_hz / len(need))
    return need * (total_hz / s)


def min_makespan_shares(ch: Channels, tails_s: np.ndarray, total_hz: float) -> tuple[np.ndarray, float]:
    """Least T with every task uploaded by T − tail_k (Σ b_k(T) ≤ B), by bisection; tails all equal gives min-max.

    Returns the shares and T. A task's `tail_k` is the serving time from its batch's start to the
    end of the plan, so T is the plan's makespan when uploads are on the critical path.
    """
    tails = np.asarray(tails_s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = np.where(ch.fixed, 0.0, ch.bits * _LN2 / ch.snr_hz)  # a Shannon link never beats a/ln2 bit/s
    lo = float(np.max(tails + np.nan_to_num(floor)))

    def excess(t: float) -> float:
        with np.errstate(divide="ignore"):
            need = required_bandwidth_hz(ch, ch.bits / np.maximum(t - tails, 1e-300))
        return float(need.sum() - total_hz)

    hi = max(lo, 1e-12) * 2.0 + 1e-9
    while excess(hi) > 0:
        hi = lo + 2.0 * (hi - lo)
    t = _first_feasible(excess, lo, hi)
    need = required_bandwidth_hz(ch, ch.bits / (t - tails))
    return _spread(need, total_hz), t


def min_max_shares(ch: Channels, total_hz: float) -> tuple[np.ndarray, float]:
    """Minimise the last upload time: closed form when every task has a fixed efficiency, else bisection."""
    if np.all(ch.fixed):
        return min_max_fixed(ch.bits, ch.efficiency_bps_per_hz, total_hz)
    return min_makespan_shares(ch, np.zeros(len(ch)), total_hz)


def _marginal(ch: Channels, b: np.ndarray) -> np.ndarray:
    """h_k(b) = D_k·r_k'(b)/r_k(b)², the decrease of T_k per extra Hz; decreasing in b."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = ch.snr_hz / b
        r = b * np.log2(1.0 + x)
        dr = np.log2(1.0 + x) - x / ((1.0 + x) * _LN2)
        fixed_h = ch.bits / (np.nan_to_num(ch.efficiency_bps_per_hz) * b * b)
        return np.where(ch.fixed, fixed_h, ch.bits * dr / (r * r))


def min_sum_shares(ch: Channels, total_hz: float) -> tuple[np.ndarray, float]:
    """Minimise Σ T_k: closed form for fixed efficiencies, else nested bisection on the KKT multiplier λ."""
    if np.all(ch.fixed):
        return min_sum_fixed(ch.bits, ch.efficiency_bps_per_hz, total_hz)

    def shares_for(lam: float) -> np.ndarray:
        lo = np.full(len(ch), total_hz * 1e-15)
        hi = np.full(len(ch), total_hz)
        for _ in range(64):  # per-task geometric bisection: h_k(b) = λ, h_k decreasing in b
            mid = np.sqrt(lo * hi)
            above = _marginal(ch, mid) > lam
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        return np.sqrt(lo * hi)

    # at λ = min h_k(B) every share would be ≥ B (too much); at λ = max h_k(B/K) each is ≤ B/K (enough)
    lam_lo = float(np.min(_marginal(ch, np.full(len(ch), float(total_hz)))))
    lam_hi = float(np.max(_marginal(ch, np.full(len(ch), total_hz / len(ch)))))
    for _ in range(200):  # Σ b(λ) decreases in λ
        lam = math.sqrt(lam_lo * lam_hi)
        if shares_for(lam).sum() > total_hz:
            lam_lo = lam
        else:
            lam_hi = lam
        if lam_hi / lam_lo < 1 + 1e-13:
            break
    b = shares_for(lam_hi)
    b = b * (total_hz / b.sum())
    return b, float(upload_times_s(ch, b).sum())


def allocate(mode: str, ch: Channels, total_hz: float) -> np.ndarray:
    """Shares for a fixed rule: 'uniform', 'min_max' or 'min_sum'."""
    if mode == "uniform":
        return uniform_shares(ch, total_hz)
    if mode == "min_max":
        return min_max_shares(ch, total_hz)[0]
    if mode == "min_sum":
        return min_sum_shares(ch, total_hz)[0]
    raise ValueError(f"unknown bandwidth rule {mode!r}; expected uniform, min_max or min_sum")
