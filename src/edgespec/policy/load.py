"""What a verifier tells its drafters about its load: the queue, the shape of its recent batches and a model of its forward time.

These are the facts behind the wire's `LoadHints` (edgespec.proto), torch-free so that the
simulator's verifiers publish them exactly as the real node does. A verification forward pads
every row to the widest one, so its cost is modelled on padded positions (rows × width, width =
the widest draft + 1) and on rows (per-row work such as reading a row's KV cache), plus a fixed part
(weights read once per forward, kernel launches, framework time):

    t_forward(rows, width) = base_s + per_position_s · rows · width + per_row_s · rows

On a CPU the per-position term dominates (compute-bound: γ + 1 positions cost about γ + 1 decode
steps); on a GPU the fixed part does (memory-bound: a few positions per row cost about one step).
`ForwardCostFit` fits the three coefficients online from the forwards a verifier actually ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["ForwardCost", "VerifierHints", "ForwardCostFit", "CALIBRATION_SHAPES", "PACK_SHARE", "packs", "computed_positions"]

# (rows, width) of a verifier's start-up calibration of the forward-time model: both terms identified at a few batch sizes
CALIBRATION_SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (1, 5), (4, 1), (4, 5), (16, 1), (16, 5), (1, 9), (32, 1), (32, 3))
CALIBRATION_CONTEXT_TOKENS = 32  # context each calibration row holds

# A ragged forward (rows padded to the widest) whose real tokens fill at most this share of rows × width runs its
# projections and MLPs on the real tokens alone (the lean Llama forward, `models.fastpath`); attention stays padded
PACK_SHARE = 0.75


def packs(tokens: int, rows: int, width: int) -> bool:
    """Whether a forward of `rows` rows padded to `width` new positions, `tokens` of them real, runs packed (see PACK_SHARE)."""
    return width > 1 and tokens <= PACK_SHARE * rows * width


def computed_positions(tokens: int, rows: int, width: int) -> int:
    """Positions a forward's projections compute: the real tokens when it runs packed, else every padded position."""
    return tokens if packs(tokens, rows, width) else rows * width


@dataclass(frozen=True)
class ForwardCost:
    """Seconds of one verification forward of `rows` rows padded to `width` new positions each (coefficients ≥ 0)."""

    base_s: float
    per_position_s: float
    per_row_s: float

    def __post_init__(self) -> None:
        for name in ("base_s", "per_position_s", "per_row_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def seconds(self, rows: float, width: float) -> float:
        """Predicted wall time of a forward over `rows` rows of `width` new positions each."""
        return self.base_s + self.per_position_s * rows * width + self.per_row_s * rows


@dataclass(frozen=True)
class VerifierHints:
    """One verdict's load hints (None: the verifier did not say)."""

    queue_depth: int = 0  # drafts waiting at the verifier
    active_sessions: int = 0  # open sessions, all drafter nodes
    verify_s: Optional[float] = None  # recent wall time of one batch (prefill, forward, verification)
    batch_rows: Optional[float] = None  # mean drafts per verification forward, recent batches
    batch_width: Optional[float] = None  # mean new positions per row of those forwards (the widest draft + 1)
    forward_cost: Optional[ForwardCost] = None  # the verifier's model of its forward time


class ForwardCostFit:
    """Online fit of `ForwardCost` to observed forwards: exponentially weighted least squares, ridge-pulled towards a prior.

    Each `observe(rows, width, seconds)` decays the old evidence by `memory` and adds the new point.
    The prior (a calibration at start-up, or none) keeps the fit defined where the data cannot tell
    the terms apart — e.g. a verifier whose drafters all run γ = 0 only sees width 1, where the
    per-position and per-row terms are collinear. Coefficients are kept ≥ 0 (a term whose
    unconstrained estimate is negative is dropped and the rest refitted).
    """

    def __init__(self, prior: Optional[ForwardCost] = None, memory: float = 0.99, prior_weight: float = 4.0) -> None:
        if not 0.0 < memory <= 1.0:
            raise ValueError(f"memory must be in (0, 1], got {memory}")
        if prior_weight < 0.0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
        self.memory, self.prior_weight = memory, prior_weight
        self.prior = prior
        # discounted sums over forwards of x·xᵀ and x·seconds, x = (1, rows·width, rows), kept as plain floats (cheap per forward)
        self._sums = [0.0] * 9  # Σ1, Σp, Σr, Σpp, Σpr, Σrr, Σy, Σpy, Σry
        self._cached: Optional[ForwardCost] = prior
        self._dirty = False

    @property
    def observations(self) -> float:
        """The discounted number of forwards the fit rests on."""
        return self._sums[0]

    def observe(self, rows: int, width: int, seconds: float) -> None:
        """Fold in one forward of `rows` rows padded to `width` positions that took `seconds`."""
        if rows < 1 or width < 1 or not (math.isfinite(seconds) and seconds >= 0.0):
            return
        p, r, y, m = float(rows * width), float(rows), seconds, self.memory
        new = (1.0, p, r, p * p, p * r, r * r, y, p * y, r * y)
        self._sums = [m * old + v for old, v in zip(self._sums, new)]
        self._dirty = True

    def fit_points(self, points: Sequence[tuple[int, int, float]]) -> ForwardCost:
        """Observe every (rows, width, seconds) point, then return the fit (a calibration)."""
        for rows, width, seconds in points:
            self.observe(rows, width, seconds)
        return self.cost()

    def cost(self) -> Optional[ForwardCost]:
        """The current estimate (the prior before any observation; None with neither)."""
        if self._dirty:
            self._cached = self._solve()
            self._dirty = False
        return self._cached

    def _solve(self) -> ForwardCost:
        """Ridge least squares on the active terms, dropping the most negative term until all are ≥ 0 (pure Python: a
        3 × 3 system per forward costs microseconds this way, tens of them through numpy)."""
        n, sp, sr, spp, spr, srr, sy, spy, sry = self._sums
        a = ((n, sp, sr), (sp, spp, spr), (sr, spr, srr))
        b = (sy, spy, sry)
        theta0, strength = (0.0, 0.0, 0.0), 1e-6
        if self.prior is not None:
            theta0 = (self.prior.base_s, self.prior.per_position_s, self.prior.per_row_s)
            strength = self.prior_weight / max(n, 1.0)
        ridge = [strength * max(a[i][i], 1e-12) for i in range(3)]  # by feature magnitude: the ridge acts alike on each term
        active = [0, 1, 2]
        theta = [0.0, 0.0, 0.0]
        while active:
            lhs = [[a[i][j] + (ridge[i] if i == j else 0.0) for j in active] for i in active]
            rhs = [b[i] + ridge[i] * theta0[i] for i in active]
            sol = _solve_small(lhs, rhs)
            if sol is None:  # the points cannot tell the terms apart and there is no prior
                sol = [float(v) for v in np.linalg.lstsq(np.array(lhs), np.array(rhs), rcond=None)[0]]
            if all(v >= 0.0 for v in sol):
                for i, v in zip(active, sol):
                    theta[i] = v
                break
            active.pop(min(range(len(sol)), key=sol.__getitem__))  # the most negative term leaves; refit the others
        return ForwardCost(*theta)


def _solve_small(lhs: list[list[float]], rhs: list[float]) -> Optional[list[float]]:
    """x with lhs · x = rhs for a small dense system (Gaussian elimination, partial pivoting); None if it is singular."""
    k = len(rhs)
    rows = [list(row) + [value] for row, value in zip(lhs, rhs)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(rows[r][col]))
        if rows[pivot][col] == 0.0:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, k):
            factor = rows[r][col] / rows[col][col]
            if factor:
                rows[r] = [x - factor * y for x, y in zip(rows[r], rows[col])]
    x = [0.0] * k
    for r in range(k - 1, -1, -1):
        x[r] = (rows[r][k] - sum(rows[r][c] * x[c] for c in range(r + 1, k))) / rows[r][r]
    return x
