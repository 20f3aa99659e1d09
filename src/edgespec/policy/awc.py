"""Adaptive window control (AWC, after DSD): per-round γ minimising predicted time per emitted token from a session's observed queue, RTT, device speed, verify time and acceptance.

How it decides (docs/policies.md has the derivation, the ablations and the training):

1. **Features** (`AwcFeatures`): exponential moving averages of what each `RoundObservation`
   carries — acceptance α̂ (the truncated-geometric MLE), per-token draft time t_tok (device
   speed; a slowly rising floor, since a batched draft pass lasts as long as its longest draft),
   verify time t_v, round trip rtt (block sent → verdict back), the verifier's queue depth q, its
   trend Δq and how often it is non-zero, γ̄ (the draft length they were measured at), and the last
   `RECENT_ROUNDS` rounds' draft pass and wait at the verifier for their batch to start (rtt − t_v −
   upload − the wire floor). Any field may be None; what is missing is not used.
2. **The drafter node's pool** (`AwcNodeStats`, one per node, shared by its sessions' policies in
   the real node and the simulator alike): acceptance per request class as the prior of a new
   session, the wire floor and the link's jitter, a regression of verify time on γ, and the node's
   γ — its sessions draft in one batched pass, so they draft the γ that minimises their summed
   predicted time per token.
3. **Analytic fallback** (hand-tuned, always available): time per emitted token
       τ(γ) = R(γ) / E(γ; α̂),   E(γ; α) = (1 − α^(γ+1)) / (1 − α),
   with the round time R(γ) = d̄ + shift(γ) + t_net + t_v(γ): the recent rounds' mean draft pass d̄
   and the net time t_net = rtt − t_v as measured, shift(γ) what drafting γ would have changed in
   those rounds (`ready_shift_s`: free up to a longer pass-mate's draft and within the wait for the
   batch in progress; a missed batch costs a verify pass), and t_v(γ) = t_v + c·(γ − γ̄), c the
   node's regression slope (a batch padded to another session's longer draft does not grow with
   this one's γ) or, without one, the queue proxy t_v·f/(γ̄ + 1), f = q̂/(q̂ + q_half).
4. **Learned correction** (`AwcModel`, shipped as `awc_weights.json`, fitted by
   `scripts/train_awc.py` on oracle labels from static-γ sweeps in the simulator): a ridge
   regression of the residual log τ_true(γ) − log τ_analytic(γ) on features ⊗ (1, d, d²), where
   d = (γ − γ̄)/gamma_scale. The corrected prediction is τ_analytic(γ)·exp(residual(γ)). It is
   used once the session has `min_rounds` observations with draft, verify and RTT times;
   before that (or with no weights) the fallback decides alone.

No clock reads, no randomness: times come from the observations and the `now_s` passed in.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from edgespec.policy.gamma import GammaPolicy, RoundObservation

__all__ = [
    "AwcFeatures",
    "AwcNodeStats",
    "AwcSnapshot",
    "AwcModel",
    "AwcWeightsError",
    "AwcGamma",
    "FEATURE_NAMES",
    "WEIGHTS_FORMAT",
    "analytic_tau",
    "feature_vector",
    "load_awc_weights",
    "default_awc_model",
]

WEIGHTS_FORMAT = "edgespec-awc/2"
# model features, computed from a snapshot by `feature_vector` (the same function in training and at run time)
FEATURE_NAMES: tuple[str, ...] = ("bias", "alpha", "log_draft_over_verify", "log_net_over_verify", "log1p_queue", "queue_trend",
                                  "wait_over_verify", "busy")
GAMMA_BASIS: tuple[str, ...] = ("1", "d", "d2")  # d = (γ − γ̄) / gamma_scale


def expected_tokens(alpha: float, gamma: int) -> float:
    """E(γ; α) = (1 − α^(γ+1)) / (1 − α), tokens emitted by a round of γ drafts (γ + 1 at α → 1)."""
    if alpha >= 1.0 - 1e-9:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


@dataclass(frozen=True)
class AwcSnapshot:
    """What a session knows now (seconds; None where never observed). `rounds` counts rounds with drafts."""

    rounds: int
    alpha: float
    gamma_obs: float  # EWMA of γ in the rounds these figures come from
    draft_per_token_s: Optional[float]
    verify_s: Optional[float]
    rtt_s: Optional[float]
    upload_s: Optional[float]
    queue: Optional[float]
    queue_trend: float
    # the last rounds with drafts: (draft pass s, drafted, wait at the verifier for the batch to start s; 0: idle or unknown)
    recent: tuple[tuple[float, int, float], ...] = ()
    # the node's regression of verify time on drafted tokens: slope (s per token) and how far it is identified (0–1)
    verify_slope_s: float = 0.0
    verify_slope_weight: float = 0.0
    busy_share: Optional[float] = None  # share of recent verdicts after which the verifier had drafts queued (None: no queue hints)
    # what one more drafted token per row adds to the verify pass by the verifier's own forward-time model (per-position
    # cost × rows per forward, from its load hints); None when the verifier sends no model
    hinted_slope_s: Optional[float] = None

    @property
    def wait_s(self) -> float:
        """Mean wait at the verifier over the recent rounds (0 when unknown)."""
        return sum(r[2] for r in self.recent) / len(self.recent) if self.recent else 0.0

    @property
    def wait_share(self) -> float:
        """Share of the recent rounds that waited for the verifier (the rest found it idle, or did not say)."""
        return sum(1 for r in self.recent if r[2] > 0.0) / len(self.recent) if self.recent else 0.0

    @property
    def net_s(self) -> float:
        """Round time outside drafting and the verify pass: rtt − t_v (wire and queueing), else the upload time, else 0."""
        if self.rtt_s is not None:
            return max(self.rtt_s - (self.verify_s or 0.0), 0.0)
        return self.upload_s or 0.0

    @property
    def complete(self) -> bool:
        """Draft, verify and RTT times are all known (the learned model needs them)."""
        return self.draft_per_token_s is not None and self.verify_s is not None and self.rtt_s is not None


class AwcNodeStats:
    """What one drafter node's sessions pool (the node drafts for all of them and sees every verdict).

    - acceptance: discounted accepted and rejection counts per request class (None: the node's
      sessions of unknown class), forgetting `POOL_MEMORY` per round; a new session starts from its
      class's pooled α̂ as a prior worth up to `POOL_PRIOR_ROUNDS` rejections instead of a fixed guess;
    - the wire floor: the least rtt − t_v − upload seen by any of its sessions (the downlink and
      fixed overheads, no waiting), drifting up slowly, and the uplink's jitter (EWMA of upload time
      above its own floor), to tell the verifier's queueing from the network's noise.
    """

    KEY = "awc"  # where it lives in a node's shared-state dict

    def __init__(self) -> None:
        self._counts: dict[Optional[str], list[float]] = {}
        self.net_floor_s: Optional[float] = None
        self.upload_floor_s: Optional[float] = None
        self.jitter_s = 0.0
        self._reg = [0.0] * 5  # discounted Σ1, Σx, Σy, Σxx, Σxy of (x = drafted tokens, y = verify time)
        self._votes: dict[int, tuple[float, float, int, list[float]]] = {}  # session → (seen at s, lapses after s, min γ, τ(γ) list)
        self.version = 0  # counts votes: a session asks for the node's γ again only when it changed
        self._common: Optional[int] = None

    def vote(self, key: int, now_s: float, live_s: float, min_gamma: int, taus: list[float]) -> None:
        """A session's predicted time per token for every γ from `min_gamma` on; it counts until `live_s` after `now_s` without news."""
        self._votes[key] = (now_s, live_s, min_gamma, taus)
        self.version += 1
        self._common = None

    def common_gamma(self, now_s: float) -> Optional[int]:
        """The γ with the least summed time per token over the node's live sessions (they share draft passes), or None."""
        if self._common is not None:
            return self._common
        votes = self._votes
        stale = [k for k, v in votes.items() if now_s - v[0] > v[1]]
        for k in stale:
            del votes[k]
        if not votes:
            return None
        lo = max(v[2] for v in votes.values())
        hi = min(v[2] + len(v[3]) - 1 for v in votes.values())
        if hi < lo:
            return None
        best, best_sum = lo, math.inf
        for g in range(lo, hi + 1):
            total = 0.0
            for v in votes.values():
                total += v[3][g - v[2]]
            if total < best_sum:  # ties to the shorter γ
                best, best_sum = g, total
        self._common = best
        return best

    @staticmethod
    def of(node_state: Optional[dict]) -> Optional["AwcNodeStats"]:
        """The node's stats in its shared-state dict (created on first use); None without a dict."""
        if node_state is None:
            return None
        stats = node_state.get(AwcNodeStats.KEY)
        if not isinstance(stats, AwcNodeStats):
            stats = node_state[AwcNodeStats.KEY] = AwcNodeStats()
        return stats

    def observe_counts(self, request_class: Optional[str], accepted: float, rejected: float) -> None:
        """Fold one round's accepted drafts and rejection (0 or 1) into the class's pooled counts."""
        c = self._counts.get(request_class)
        if c is None:
            c = self._counts[request_class] = [0.0, 0.0]
        c[0] = POOL_MEMORY * c[0] + accepted
        c[1] = POOL_MEMORY * c[1] + rejected

    def prior(self, request_class: Optional[str]) -> Optional[tuple[float, float]]:
        """Pseudo-counts (accepted, rejections) for a session of this class, or None before any evidence."""
        c = self._counts.get(request_class)
        if c is None or c[1] <= 0.0:
            return None
        alpha = c[0] / (c[0] + c[1])
        weight = min(POOL_PRIOR_ROUNDS, c[1])
        return alpha / (1.0 - alpha) * weight if alpha < 1.0 else c[0], weight

    def observe_verify(self, drafted: int, verify_s: float) -> None:
        """Fold one round's (drafted tokens, verify time) into the node's regression."""
        r, m, x = self._reg, SLOPE_MEMORY, float(drafted)
        r[0] = m * r[0] + 1.0
        r[1] = m * r[1] + x
        r[2] = m * r[2] + verify_s
        r[3] = m * r[3] + x * x
        r[4] = m * r[4] + x * verify_s

    def verify_slope(self) -> tuple[float, float]:
        """(slope ≥ 0 of verify time per drafted token, its weight in [0, 1]: how much spread of γ and data it rests on).

        Drafts of the node's sessions that are not the longest in their verifier batch do not change
        its pass (the verifier pads to the longest): then the slope is near zero, whatever the queue.
        """
        n, sx, sy, sxx, sxy = self._reg
        if n < 3.0:
            return 0.0, 0.0
        var = sxx / n - (sx / n) ** 2
        if var <= 1e-9:
            return 0.0, 0.0
        slope = (sxy / n - sx * sy / (n * n)) / var
        weight = var / (var + SLOPE_SPREAD) * n / (n + SLOPE_ROUNDS)
        return max(slope, 0.0), weight

    def observe_wire(self, raw_s: float, upload_s: Optional[float]) -> float:
        """Fold in one round's rtt − t_v − upload; returns the node's current floor of it."""
        floor = self.net_floor_s
        self.net_floor_s = floor = raw_s if floor is None or raw_s < floor else floor + NODE_FLOOR_DRIFT * (raw_s - floor)
        if upload_s is not None:
            up = self.upload_floor_s
            self.upload_floor_s = up = upload_s if up is None or upload_s < up else up + NODE_FLOOR_DRIFT * (upload_s - up)
            self.jitter_s += JITTER_SMOOTHING * (upload_s - up - self.jitter_s)
            # a verdict is small and the link's latency the same both ways: the downlink takes no longer than the
            # uplink, which bounds the floor when every round so far has waited (a verifier that is never idle)
            floor = min(floor, up)
        return floor


class AwcFeatures:
    """EWMAs of one session's round observations (the features AWC decides on)."""

    def __init__(self, smoothing: float = 0.2, alpha_prior: float = 0.6, gamma_prior: float = 4.0, alpha_memory: float = 0.97,
                 node: Optional[AwcNodeStats] = None, request_class: Optional[str] = None) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.0 <= alpha_prior < 1.0:
            raise ValueError(f"alpha_prior must be in [0, 1), got {alpha_prior}")
        if not 0.0 < alpha_memory <= 1.0:
            raise ValueError(f"alpha_memory must be in (0, 1], got {alpha_memory}")
        self.smoothing, self.alpha_memory = smoothing, alpha_memory
        self.node, self.request_class = node, request_class
        self.rounds = 0
        # discounted counts for α̂ = accepted / (accepted + rejections), with a prior worth two rounds
        self._prior = (2.0 * alpha_prior / (1.0 - alpha_prior) if alpha_prior > 0 else 0.0, 2.0)
        self._accepted = self._rejected = 0.0
        self.gamma_obs = gamma_prior
        self.draft_per_token_s: Optional[float] = None
        self.verify_s: Optional[float] = None
        self.rtt_s: Optional[float] = None
        self.upload_s: Optional[float] = None
        self.queue: Optional[float] = None
        self.queue_trend = 0.0
        self._last_queue: Optional[int] = None
        self.busy_share: Optional[float] = None
        self.hinted_slope_s: Optional[float] = None
        self.net_floor_s: Optional[float] = None  # the least rtt − t_v seen: wire time without waiting
        self._recent: deque[tuple[float, int, float]] = deque(maxlen=RECENT_ROUNDS)
        self._seen_times = 0  # verdicts seen (the first one's times are provisional)

    def _ema(self, old: Optional[float], new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)

    @property
    def alpha(self) -> float:
        """Discounted MLE of i.i.d. acceptance: accepted / (accepted + rejections), forgetting `alpha_memory` per round."""
        prior = self._prior
        if self.node is not None:
            prior = self.node.prior(self.request_class) or prior
        a = self._accepted + prior[0]
        return a / (a + self._rejected + prior[1])

    def update(self, obs: RoundObservation) -> None:
        """Fold one verdict in. Times that are None or not finite are skipped; an AD round (drafted 0) updates times only.

        The first round's times stand only until the second round's replace them: the first block
        carries the session's open (prompt upload, prefills on both sides), so its draft, upload,
        verify and round-trip times overstate every later round's.
        """
        ok = lambda v: v is not None and math.isfinite(v) and v >= 0  # noqa: E731
        ema = self._ema if self._seen_times > 1 else (lambda old, new: new)
        if obs.drafted > 0:
            self.rounds += 1
            m = self.alpha_memory
            rejected = 1.0 if obs.accepted < obs.drafted else 0.0
            self._accepted = m * self._accepted + obs.accepted
            self._rejected = m * self._rejected + rejected
            if self.node is not None:
                self.node.observe_counts(self.request_class, obs.accepted, rejected)
            self.gamma_obs = self._ema(self.gamma_obs, obs.drafted) if self.rounds > 1 else float(obs.drafted)
            if ok(obs.draft_time_s):
                t = obs.draft_time_s / obs.drafted
                old = self.draft_per_token_s
                # a floor that drifts up slowly: a batched draft pass runs as long as its longest draft, so a
                # session that drafts fewer tokens than its pass-mates sees an inflated per-token time
                if old is None or self._seen_times <= 1 or t < old:
                    self.draft_per_token_s = t
                else:
                    self.draft_per_token_s = old + DRAFT_DRIFT * (t - old)
        if ok(obs.verify_time_s):
            self.verify_s = ema(self.verify_s, obs.verify_time_s)
            if self.node is not None and obs.drafted > 0 and self._seen_times >= 1:
                self.node.observe_verify(obs.drafted, obs.verify_time_s)
        if ok(obs.rtt_s):
            self.rtt_s = ema(self.rtt_s, obs.rtt_s)
        if self._seen_times >= 1 and obs.drafted > 0 and ok(obs.draft_time_s):
            wait = 0.0
            if ok(obs.rtt_s) and ok(obs.verify_time_s):
                up = obs.upload_time_s if ok(obs.upload_time_s) else None
                wait = self._wait(max(obs.rtt_s - obs.verify_time_s - (up or 0.0), 0.0), up, obs.verify_time_s)
            self._recent.append((obs.draft_time_s, obs.drafted, wait))
        if ok(obs.upload_time_s):
            self.upload_s = ema(self.upload_s, obs.upload_time_s)
        self._seen_times += 1
        hints = obs.hints
        if hints is not None and hints.forward_cost is not None:
            slope = hints.forward_cost.per_position_s * max(hints.batch_rows or 1.0, 1.0)
            self.hinted_slope_s = slope if self.hinted_slope_s is None else self._ema(self.hinted_slope_s, slope)
        if obs.queue_depth is not None and obs.queue_depth >= 0:
            q = int(obs.queue_depth)
            if self._last_queue is not None:
                self.queue_trend = self._ema(self.queue_trend, float(q - self._last_queue))
            self._last_queue = q
            self.queue = self._ema(self.queue, float(q))
            self.busy_share = self._ema(self.busy_share, 1.0 if q > 0 else 0.0)

    def _wait(self, raw: float, upload: Optional[float], verify: float) -> float:
        """Split one round's rtt − t_v − upload into wire time (a floor: the node's when pooled) and the wait for the verifier to start a batch.

        What is left above the floor also holds the downlink's jitter and retransmissions: the uplink's
        jitter (the node's estimate) is taken off as the downlink's, and a wait is capped at one verify
        pass (a draft waits for the batch in progress, not longer, when batches are not size-capped).
        """
        if self.node is not None:
            floor = self.node.observe_wire(raw, upload)
            jitter = self.node.jitter_s
        else:
            floor = self.net_floor_s
            floor = raw if floor is None or raw < floor else floor + FLOOR_DRIFT * (raw - floor)
            jitter = 0.0
        self.net_floor_s = floor
        return min(max(raw - floor - jitter, 0.0), verify)

    def snapshot(self) -> AwcSnapshot:
        slope, weight = self.node.verify_slope() if self.node is not None else (0.0, 0.0)
        return AwcSnapshot(self.rounds, self.alpha, self.gamma_obs, self.draft_per_token_s, self.verify_s, self.rtt_s,
                           self.upload_s, self.queue, self.queue_trend, tuple(self._recent), slope, weight, self.busy_share,
                           self.hinted_slope_s)


# ----------------------------------------------------------------------------- the analytic model

Q_HALF = 24.0  # queue depth at which the verify pass counts as half token-proportional (hand-tuned)
TREND_HORIZON = 4.0  # rounds ahead a rising queue is extrapolated (hand-tuned)
DRAFT_DRIFT = 0.05  # how fast the per-token draft time estimate rises towards a slower observation (hand-tuned)
RECENT_ROUNDS = 8  # recent rounds whose draft passes and waits at the verifier a session keeps
MATE_MARGIN = 1.1  # a pass longer than this × the session's own drafting ran for a longer pass-mate
FLOOR_DRIFT = 0.01  # how fast a session's own wire floor rises towards a slower round trip (hand-tuned)
NODE_FLOOR_DRIFT = 0.002  # the same for a node's pooled floors (they see many more rounds)
JITTER_SMOOTHING = 0.05  # EWMA weight of the uplink's jitter at a node
POOL_MEMORY = 0.995  # a node's pooled acceptance counts forget this much per round (~200 rounds)
POOL_PRIOR_ROUNDS = 8.0  # a session's prior from its node's pool is worth up to this many rejections (hand-tuned)
SLOPE_MEMORY = 0.995  # a node's regression of verify time on γ forgets this much per round
SLOPE_SPREAD = 1.0  # variance of γ (tokens²) at which that regression gets half its weight
SLOPE_ROUNDS = 20.0  # rounds of data at which it gets half its weight
LIVE_ROUNDS = 3.0  # a session's vote for the node's γ lapses after this many of its round times without a verdict
PRIOR_DRAFT_S = 0.005  # per-token draft time assumed before one is measured
PRIOR_VERIFY_S = 0.02  # verify pass assumed before one is measured
_TINY_S = 1e-6


def _effective_queue(snap: AwcSnapshot) -> float:
    if snap.queue is None:
        return 0.0
    return max(snap.queue + TREND_HORIZON * max(snap.queue_trend, 0.0), 0.0)


def ready_shift_s(snap: AwcSnapshot, gamma: int, t_tok: float, period_s: float) -> float:
    """Expected change of the round time, over the recent rounds, had they drafted `gamma` tokens: the draft pass and the wait it causes.

    Per recent round i (pass d_i, wait w_i): the block would be ready Δ_i = max(γ·t_tok, m_i) − d_i
    later, where m_i = d_i when the pass ran longer than the session's own drafts (a pass-mate's
    longer draft: drafting up to it is free), else 0. Batches start on a lattice of period T = one
    verify pass: a block that waited w for the batch in progress starts when that batch ends. Up
    to w later it still makes that start; beyond w it misses it and waits for the next batch, a
    period later; ready more than T − w sooner it makes the batch it waited behind, a period sooner.
    That holds while the verifier is busy (`busy_share`: the share of verdicts after which it had
    drafts queued; without queue hints, the share of rounds that waited); with an idle verifier a
    block starts when it arrives, Δ one for one. The mean over the rounds of
    busy·T·⌈(Δ_i − w_i)/T⌉ + (1 − busy)·Δ_i is returned (a block that barely made its batch is on
    the lattice too: any later and it misses it).
    """
    return ready_shifts_s(snap, gamma, gamma, t_tok, period_s)[0]


def ready_shifts_s(snap: AwcSnapshot, lo: int, hi: int, t_tok: float, period_s: float) -> list[float]:
    """`ready_shift_s` for every γ in [lo, hi] (one pass over the recent rounds)."""
    recent = snap.recent
    n = hi - lo + 1
    if not recent:
        return [(g - snap.gamma_obs) * t_tok for g in range(lo, hi + 1)]
    busy = snap.busy_share if snap.busy_share is not None else snap.wait_share
    keep = 1.0 - busy
    T = period_s
    owns = [g * t_tok for g in range(lo, hi + 1)]
    total = [0.0] * n
    if T <= _TINY_S:
        busy, keep = 0.0, 1.0
    busy_t = busy * T
    for d, g0, w in recent:
        mate = d if d > MATE_MARGIN * g0 * t_tok else 0.0
        start = d + w  # when its batch started, from the start of its draft pass (less the upload)
        for i in range(n):
            own = owns[i]
            ready = own if own > mate else mate
            if busy_t:
                total[i] += busy_t * -((start - ready) // T) + keep * (ready - d)  # T·⌈(ready − start)/T⌉
            else:
                total[i] += ready - d
    inv = 1.0 / len(recent)
    return [t * inv for t in total]


def verify_per_token_s(snap: AwcSnapshot, t_v: float) -> float:
    """What one more drafted token adds to the session's verify pass: the verifier's forward-time model, else the node's regression, else (no node) the queue proxy.

    The verifier's model (its load hints) knows what a session cannot see from its own rounds: how a
    forward's time grows with the positions of every row it pads to the widest draft.

    Queue proxy: the pass counts as fixed-cost (memory-bound) with an empty queue and increasingly
    token-proportional as the queue, the batch-size proxy, grows: t_v·f/(γ̄ + 1), f = q̂/(q̂ + q_half).
    The regression sees what the queue cannot: a batch padded to a longer draft of another session
    does not grow with this session's γ.
    """
    if snap.hinted_slope_s is not None:
        return snap.hinted_slope_s
    w = min(max(snap.verify_slope_weight, 0.0), 1.0)
    if w > 0.0:  # a node's regression, shrunk towards no growth while it rests on little spread of γ
        return w * snap.verify_slope_s
    q = _effective_queue(snap)
    return t_v * q / (q + Q_HALF) / (snap.gamma_obs + 1.0)


def analytic_tau(snap: AwcSnapshot, gamma: int) -> float:
    """The fallback's predicted seconds per emitted token for a round of `gamma` drafts (priors stand in for unknown times)."""
    t_tok = snap.draft_per_token_s if snap.draft_per_token_s is not None else PRIOR_DRAFT_S
    t_v = snap.verify_s if snap.verify_s is not None else PRIOR_VERIFY_S
    per = verify_per_token_s(snap, t_v)
    t_verify = t_v + per * (gamma - snap.gamma_obs)
    alpha = min(max(snap.alpha, 0.0), 0.999)
    if snap.recent:
        draft = sum(r[0] for r in snap.recent) / len(snap.recent) + ready_shift_s(snap, gamma, t_tok, t_v)
        # (a round lasts at least its own drafts and verify pass: the shifts come from other rounds' waits)
        return max(draft + snap.net_s + t_verify, gamma * t_tok + t_verify) / expected_tokens(alpha, gamma)
    return (gamma * t_tok + snap.net_s + t_verify) / expected_tokens(alpha, gamma)


def feature_vector(snap: AwcSnapshot) -> list[float]:
    """The model's inputs (FEATURE_NAMES) from a complete snapshot: dimensionless, log-scaled ratios to the verify time."""
    t_v = max(snap.verify_s or 0.0, _TINY_S)
    q = snap.queue if snap.queue is not None else 0.0
    return [
        1.0,
        min(max(snap.alpha, 0.0), 1.0),
        math.log(max(snap.draft_per_token_s or 0.0, _TINY_S) / t_v),
        math.log(max(snap.net_s, _TINY_S) / t_v),
        math.log1p(max(q, 0.0)),
        max(min(snap.queue_trend / (1.0 + max(q, 0.0)), 1.0), -1.0),
        min(snap.wait_s / t_v, 2.0),
        snap.busy_share if snap.busy_share is not None else snap.wait_share,
    ]


# ----------------------------------------------------------------------------- the learned correction


class AwcWeightsError(ValueError):
    """A malformed AWC weights file (names the file and what is wrong)."""


@dataclass(frozen=True)
class AwcModel:
    """Ridge-regression residual of log time-per-token: residual(γ) = Σ_k (x · coef[:, k]) · d^k, d = (γ − γ̄)/gamma_scale."""

    coef: tuple[tuple[float, ...], ...]  # [feature][basis]: len(FEATURE_NAMES) × len(GAMMA_BASIS)
    gamma_scale: float = 8.0
    metadata: dict = None  # type: ignore[assignment]

    def residual(self, x: Sequence[float], gamma: int, gamma_obs: float) -> float:
        d = (gamma - gamma_obs) / self.gamma_scale
        c0 = c1 = c2 = 0.0
        for xi, row in zip(x, self.coef):
            c0 += xi * row[0]
            c1 += xi * row[1]
            c2 += xi * row[2]
        return c0 + d * (c1 + d * c2)

    def to_json(self, metadata: Optional[dict] = None) -> dict:
        return {
            "format": WEIGHTS_FORMAT,
            "features": list(FEATURE_NAMES),
            "gamma_basis": list(GAMMA_BASIS),
            "gamma_scale": self.gamma_scale,
            "coef": [list(r) for r in self.coef],
            "metadata": metadata if metadata is not None else (self.metadata or {}),
        }

    @staticmethod
    def from_json(data: object, source: str = "<weights>") -> "AwcModel":
        def bad(why: str) -> AwcWeightsError:
            return AwcWeightsError(f"{source}: malformed AWC weights: {why}")

        if not isinstance(data, dict):
            raise bad("expected a JSON object")
        if data.get("format") != WEIGHTS_FORMAT:
            raise bad(f"format must be {WEIGHTS_FORMAT!r}, got {data.get('format')!r}")
        if list(data.get("features", [])) != list(FEATURE_NAMES):
            raise bad(f"features must be {list(FEATURE_NAMES)}, got {data.get('features')!r}")
        if list(data.get("gamma_basis", [])) != list(GAMMA_BASIS):
            raise bad(f"gamma_basis must be {list(GAMMA_BASIS)}, got {data.get('gamma_basis')!r}")
        scale = data.get("gamma_scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
            raise bad(f"gamma_scale must be a number > 0, got {scale!r}")
        coef = data.get("coef")
        if (not isinstance(coef, list) or len(coef) != len(FEATURE_NAMES)
                or not all(isinstance(r, list) and len(r) == len(GAMMA_BASIS) for r in coef)):
            raise bad(f"coef must be a {len(FEATURE_NAMES)}×{len(GAMMA_BASIS)} list of lists")
        for r in coef:
            for v in r:
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise bad(f"coef entries must be finite numbers, got {v!r}")
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise bad("metadata must be an object")
        return AwcModel(tuple(tuple(float(v) for v in r) for r in coef), float(scale), metadata)


def _parse_weights(text: str, source: str) -> AwcModel:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AwcWeightsError(f"{source}: malformed AWC weights: not JSON ({exc})") from exc
    return AwcModel.from_json(data, source)


def load_awc_weights(path: Union[str, Path]) -> AwcModel:
    """Read and validate a weights file; raises AwcWeightsError (a ValueError) naming the file when it is malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AwcWeightsError(f"{path}: cannot read AWC weights: {exc}") from exc
    return _parse_weights(text, str(path))


_DEFAULT: Optional[AwcModel] = None


def default_awc_model() -> AwcModel:
    """The shipped model (src/edgespec/policy/awc_weights.json, package data), loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        ref = resources.files("edgespec.policy").joinpath("awc_weights.json")
        try:
            text = ref.read_text(encoding="utf-8")
        except OSError as exc:
            raise AwcWeightsError(f"the shipped AWC weights are missing ({ref}); retrain with scripts/train_awc.py") from exc
        _DEFAULT = _parse_weights(text, str(ref))
    return _DEFAULT


# ----------------------------------------------------------------------------- the policy


_KEYS = itertools.count()


class AwcGamma(GammaPolicy):
    """Adaptive window control: each round, the γ in [min_gamma, max_gamma] with the least predicted time per emitted token.

    `model` None uses the analytic fallback only. `initial` is γ before any verdict; the learned
    correction applies from `min_rounds` complete observations on. With a `node` (its drafter
    node's shared `AwcNodeStats`) the session pools acceptance (per `request_class`), the wire floor
    and the verify regression with the node's other sessions and, with `joint`, drafts the node's γ:
    the one that minimises the summed predicted time per token of the node's live sessions (they
    share draft passes, so a longer draft of one delays the others; ties to the shorter γ).
    """

    def __init__(self, max_gamma: int = 16, min_gamma: int = 1, initial: int = 4, model: Optional[AwcModel] = None,
                 smoothing: float = 0.2, min_rounds: int = 3, features: Optional[AwcFeatures] = None,
                 node: Optional[AwcNodeStats] = None, request_class: Optional[str] = None, joint: bool = True) -> None:
        if min_gamma < 1 or max_gamma < min_gamma:
            raise ValueError(f"need 1 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
        self.min_gamma, self.max_gamma = min_gamma, max_gamma
        self.model, self.min_rounds = model, min_rounds
        self.features = features or AwcFeatures(smoothing=smoothing, gamma_prior=float(initial), node=node, request_class=request_class)
        self.current = min(max(initial, min_gamma), max_gamma)
        self.used_model = False  # whether the last decision used the learned correction
        self.node = self.features.node if joint else None  # where the session votes for the node's γ
        self._key = next(_KEYS)
        self._version = -1  # the node's vote count when this session last read the node's γ

    def gamma(self, now_s: float = 0.0) -> int:
        node = self.node
        if node is not None and node.version != self._version:
            self._version = node.version
            g = node.common_gamma(now_s)
            if g is not None:
                self.current = min(max(g, self.min_gamma), self.max_gamma)
        return self.current

    def observe(self, obs: RoundObservation) -> None:
        self.features.update(obs)
        snap = self.features.snapshot()
        taus = self.taus(snap)
        if taus is None:
            return
        self.current = self.min_gamma + min(range(len(taus)), key=taus.__getitem__)  # ties to the shorter γ
        if self.node is not None:
            f = self.features
            round_s = (sum(r[0] for r in snap.recent) / len(snap.recent) if snap.recent else 0.0) + (f.rtt_s or 0.0)
            self.node.vote(self._key, obs.now_s, LIVE_ROUNDS * max(round_s, 0.01), self.min_gamma, taus)

    def predicted_tau(self, snap: AwcSnapshot, gamma: int) -> float:
        """Predicted seconds per emitted token at `gamma` (the learned correction when it applies)."""
        tau = analytic_tau(snap, gamma)
        if self.model is not None and snap.complete and snap.rounds >= self.min_rounds:
            r = self.model.residual(feature_vector(snap), gamma, snap.gamma_obs)
            tau *= math.exp(max(min(r, 5.0), -5.0))
        return tau

    def decide(self, snap: AwcSnapshot) -> int:
        """The γ with the least predicted time per token (ties to the shorter γ)."""
        taus = self.taus(snap)
        return self.current if taus is None else self.min_gamma + min(range(len(taus)), key=taus.__getitem__)

    def taus(self, snap: AwcSnapshot) -> Optional[list[float]]:
        """Predicted time per token for γ = min_gamma…max_gamma (`predicted_tau`, inlined for speed); None before any verdict."""
        if snap.rounds == 0 and snap.verify_s is None:
            return None
        use_model = self.model is not None and snap.complete and snap.rounds >= self.min_rounds
        self.used_model = use_model
        c0 = c1 = c2 = 0.0
        if use_model:
            for xi, row in zip(feature_vector(snap), self.model.coef):
                c0 += xi * row[0]
                c1 += xi * row[1]
                c2 += xi * row[2]
        scale = self.model.gamma_scale if use_model else 1.0
        t_tok = snap.draft_per_token_s if snap.draft_per_token_s is not None else PRIOR_DRAFT_S
        t_v = snap.verify_s if snap.verify_s is not None else PRIOR_VERIFY_S
        go = snap.gamma_obs
        per = verify_per_token_s(snap, t_v)
        fixed = snap.net_s + t_v - per * (go + 1.0)
        alpha = min(max(snap.alpha, 0.0), 0.999)
        power = alpha ** self.min_gamma
        out = []
        if snap.recent:
            fixed += sum(r[0] for r in snap.recent) / len(snap.recent)
            drafts = ready_shifts_s(snap, self.min_gamma, self.max_gamma, t_tok, t_v)
        else:
            drafts = [g * t_tok for g in range(self.min_gamma, self.max_gamma + 1)]
        for g, draft in zip(range(self.min_gamma, self.max_gamma + 1), drafts):
            power *= alpha  # α^(g+1)
            t_verify = t_v + per * (g - go)
            round_s = draft + fixed + per * (g + 1.0)
            floor = g * t_tok + t_verify
            tau = (round_s if round_s > floor else floor) * (1.0 - alpha) / (1.0 - power)
            if use_model:
                d = (g - go) / scale
                r = c0 + d * (c1 + d * c2)
                tau *= math.exp(5.0 if r > 5.0 else (-5.0 if r < -5.0 else r))
            out.append(tau)
        return out
