"""Speculation-length (γ) policies: how many tokens a session drafts in its next round.

All policies share one interface, used alike by the real drafter node and the simulator:

- ``gamma(now_s) -> int``: the most tokens to draft this round (0 means an AD round);
- ``should_stop(draft_prob) -> bool``: asked after each drafted token with the draft model's
  probability q(x) of that token; True means *discard this token and stop drafting* (SLED);
- ``observe(RoundObservation)``: feedback after the verdict (drafted and accepted counts and
  the measured times of the round).

Time is passed in (``now_s``, measured durations); no policy reads a clock and none is random.
One instance serves one session (or one group of sessions that share statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from edgespec.policy.load import VerifierHints
from edgespec.spec.theory import as2_choice, leviathan_speedup, tkslt_speedup

__all__ = [
    "RoundObservation",
    "GammaPolicy",
    "StaticGamma",
    "HeuristicGamma",
    "ConfidenceGamma",
    "RunningEstimates",
    "OdldGamma",
    "LeviathanGamma",
    "GoodputGamma",
    "GAMMA_POLICIES",
    "make_gamma_policy",
]


@dataclass(frozen=True)
class RoundObservation:
    """What one SD round showed: counts, and optionally its measured times (seconds)."""

    drafted: int
    accepted: int
    now_s: float = 0.0
    draft_time_s: Optional[float] = None  # drafter compute for the `drafted` tokens
    upload_time_s: Optional[float] = None  # drafts on the wire, drafter → verifier
    verify_time_s: Optional[float] = None  # one target forward (the verification pass)
    rtt_s: Optional[float] = None  # the block sent → its verdict back, as the drafter saw it (wire, queue and verify)
    queue_depth: Optional[int] = None  # drafts waiting at the verifier, from the verdict's load hints
    forward_s: Optional[float] = None  # the target forwards of the batch that verified the block (the verdict's RoundTiming)
    busy_wait_s: Optional[float] = None  # the block's wait at the verifier while other batches' forwards ran (RoundTiming)
    hints: Optional[VerifierHints] = None  # the verdict's load hints: batch shape and the verifier's forward-time model

    def __post_init__(self) -> None:
        if self.drafted < 0 or not (0 <= self.accepted <= self.drafted):
            raise ValueError(f"need 0 <= accepted <= drafted, got accepted={self.accepted}, drafted={self.drafted}")


class GammaPolicy:
    """Base class: a fixed upper bound `max_gamma`, no early stop, no learning."""

    max_gamma: int = 0

    def gamma(self, now_s: float = 0.0) -> int:
        """Tokens to draft in the next round (an upper bound when `should_stop` may end drafting early)."""
        return self.max_gamma

    def should_stop(self, draft_prob: float) -> bool:
        """Called with q(x) of each drafted token; True discards that token and ends the draft."""
        return False

    def observe(self, obs: RoundObservation) -> None:
        """Feedback after the verdict of a round."""


def _check_range(lo: int, hi: int) -> None:
    if lo < 0 or hi < lo:
        raise ValueError(f"need 0 <= min_gamma <= max_gamma, got {lo}, {hi}")


class StaticGamma(GammaPolicy):
    """Always draft `gamma` tokens."""

    def __init__(self, gamma: int) -> None:
        _check_range(gamma, gamma)
        self.max_gamma = gamma


class HeuristicGamma(GammaPolicy):
    """The +2/−1 heuristic: γ += 2 after a round with every draft accepted, else γ −= 1, clamped to [min, max]."""

    def __init__(self, initial: int = 4, min_gamma: int = 1, max_gamma: int = 16, increase: int = 2, decrease: int = 1) -> None:
        _check_range(min_gamma, max_gamma)
        self.min_gamma, self.max_gamma = min_gamma, max_gamma
        self.increase, self.decrease = increase, decrease
        self.current = min(max(initial, min_gamma), max_gamma)

    def gamma(self, now_s: float = 0.0) -> int:
        return self.current

    def observe(self, obs: RoundObservation) -> None:
        if obs.drafted == 0:
            return  # an AD round says nothing about acceptance
        step = self.increase if obs.accepted == obs.drafted else -self.decrease
        self.current = min(max(self.current + step, self.min_gamma), self.max_gamma)


class ConfidenceGamma(GammaPolicy):
    """SLED's confidence rule: draft up to `max_gamma`, stopping at the first token with q(x) < `threshold`."""

    def __init__(self, threshold: float, max_gamma: int = 8) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        _check_range(0, max_gamma)
        self.threshold, self.max_gamma = threshold, max_gamma

    def should_stop(self, draft_prob: float) -> bool:
        return draft_prob < self.threshold


class RunningEstimates:
    """Exponential moving averages of acceptance and of TK-SLT's time ratios c = t_draft/t_target and b = t_upload/t_target.

    α is estimated as accepted / (accepted + rejections), the maximum-likelihood estimate for
    i.i.d. acceptance with drafts truncated at γ (accepted / drafted would be biased low).
    Per-token draft and upload times are taken per drafted token; t_target is the verify time.
    """

    def __init__(self, alpha: float = 0.6, c: float = 0.05, b: float = 0.0, smoothing: float = 0.1) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.smoothing = smoothing
        self._accepted, self._rejected = alpha, 1.0 - alpha  # a prior worth one round
        self.c, self.b = c, b

    def _ema(self, old: float, new: float) -> float:
        return (1.0 - self.smoothing) * old + self.smoothing * new

    @property
    def alpha(self) -> float:
        """Estimated per-token acceptance probability."""
        return self._accepted / (self._accepted + self._rejected)

    @property
    def L(self) -> float:  # noqa: N802 — TK-SLT's symbol
        """TK-SLT's L = b + c."""
        return self.b + self.c

    def update(self, obs: RoundObservation) -> None:
        """Fold one round into the averages (rounds with nothing drafted carry no acceptance information)."""
        if obs.drafted == 0:
            return
        self._accepted = self._ema(self._accepted, obs.accepted)
        self._rejected = self._ema(self._rejected, 1.0 if obs.accepted < obs.drafted else 0.0)
        t_target = obs.verify_time_s
        if t_target is not None and t_target > 0:
            if obs.draft_time_s is not None:
                self.c = self._ema(self.c, obs.draft_time_s / obs.drafted / t_target)
            if obs.upload_time_s is not None:
                self.b = self._ema(self.b, obs.upload_time_s / obs.drafted / t_target)


class OdldGamma(GammaPolicy):
    """TK-SLT's ODLD γ* from running α, b, c; with `use_as2` it falls back to AD (γ = 0) when S(γ*) ≤ 1."""

    def __init__(self, max_gamma: int = 16, min_gamma: int = 0, use_as2: bool = True, estimates: Optional[RunningEstimates] = None) -> None:
        _check_range(min_gamma, max_gamma)
        self.min_gamma, self.max_gamma, self.use_as2 = min_gamma, max_gamma, use_as2
        self.estimates = estimates or RunningEstimates()

    def gamma(self, now_s: float = 0.0) -> int:
        alpha, L = min(self.estimates.alpha, 0.999), max(self.estimates.L, 1e-3)
        try:
            decision = as2_choice(alpha, L)
            sd_gamma, use_sd = decision.gamma, decision.use_sd
        except (ValueError, OverflowError):  # extreme α, L: the Lambert-W form under/overflows
            sd_gamma = max(range(1, self.max_gamma + 1), key=lambda g: tkslt_speedup(alpha, g, L))
            use_sd = tkslt_speedup(alpha, sd_gamma, L) > 1.0
        choice = sd_gamma if use_sd else (0 if self.use_as2 else max(sd_gamma, 1))
        return min(max(choice, self.min_gamma), self.max_gamma)

    def observe(self, obs: RoundObservation) -> None:
        self.estimates.update(obs)


class LeviathanGamma(GammaPolicy):
    """Leviathan et al.'s optimum: the γ in [1, max_gamma] maximising E(γ)/(γ·c + 1) from running α and c."""

    def __init__(self, max_gamma: int = 16, estimates: Optional[RunningEstimates] = None) -> None:
        _check_range(1, max_gamma)
        self.max_gamma = max_gamma
        self.estimates = estimates or RunningEstimates()

    def gamma(self, now_s: float = 0.0) -> int:
        alpha = min(self.estimates.alpha, 0.999)
        c = max(self.estimates.c, 0.0)
        speedups = [leviathan_speedup(alpha, g, c) for g in range(1, self.max_gamma + 1)]
        best = max(range(len(speedups)), key=lambda i: (speedups[i], -i))
        return best + 1 if math.isfinite(speedups[best]) else self.max_gamma

    def observe(self, obs: RoundObservation) -> None:
        self.estimates.update(obs)


class GoodputGamma(GammaPolicy):
    """SmartSpec-style goodput: the γ maximising n̂·E(γ; α̂) / (γ·t_tok + T_v(n̂, γ)), the verifier's tokens per unit of step time.

    SmartSpec (Liu et al., 2024) picks γ to maximise goodput, generated tokens per second of a batch
    step, with the step time linear in the batched tokens. Here, per session: n̂ = queue depth + 1
    (the verdict's queue-depth hint as the batch-size proxy), T_v(n, γ) = a + b·n·(γ + 1) with a, b
    fitted online by exponentially weighted least squares on the session's own rounds
    (verify time against n̂·(γ + 1)); b is shrunk towards 0 when z varies by less than about
    `ridge`·z̄ and kept ≥ 0, so where the data
    cannot tell a slope the rule reduces to Leviathan's optimum with c = t_tok / a. Network time is
    left out on purpose (SmartSpec's objective is the server's step); AWC is the policy that counts it.
    Rounds without a queue hint use n̂ = 1; before any verify time, γ stays at `initial`.
    """

    def __init__(self, max_gamma: int = 16, min_gamma: int = 1, initial: int = 4, smoothing: float = 0.1, ridge: float = 0.05) -> None:
        if min_gamma < 1 or max_gamma < min_gamma:
            raise ValueError(f"need 1 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.min_gamma, self.max_gamma = min_gamma, max_gamma
        self.smoothing, self.ridge = smoothing, ridge
        self.current = min(max(initial, min_gamma), max_gamma)
        self.estimates = RunningEstimates(smoothing=smoothing)
        self.draft_per_token_s: Optional[float] = None
        self.queue = 0.0
        self._m: Optional[list[float]] = None  # EW moments: mean z, mean v, E[z²], E[z·v]

    def gamma(self, now_s: float = 0.0) -> int:
        return self.current

    def step_model(self) -> tuple[float, float]:
        """(a, b): the fitted verify time a + b·z at z batched tokens."""
        if self._m is None:
            return 0.0, 0.0
        mz, mv, mzz, mzv = self._m
        var, cov = mzz - mz * mz, mzv - mz * mv
        b = max(cov / (var + (self.ridge * mz) ** 2 + 1e-18), 0.0)  # shrunk when z varies by less than ~ridge·z̄
        return max(mv - b * mz, 0.0), b

    def observe(self, obs: RoundObservation) -> None:
        self.estimates.update(obs)
        w = self.smoothing
        if obs.drafted > 0 and obs.draft_time_s is not None and obs.draft_time_s >= 0:
            t = obs.draft_time_s / obs.drafted
            self.draft_per_token_s = t if self.draft_per_token_s is None else self.draft_per_token_s + w * (t - self.draft_per_token_s)
        if obs.queue_depth is not None and obs.queue_depth >= 0:
            self.queue += w * (obs.queue_depth - self.queue)
        v = obs.verify_time_s
        if v is None or not math.isfinite(v) or v < 0:
            return
        z = (1.0 + (obs.queue_depth if obs.queue_depth is not None and obs.queue_depth >= 0 else 0)) * (obs.drafted + 1)
        new = [z, v, z * z, z * v]
        self._m = new if self._m is None else [m + w * (x - m) for m, x in zip(self._m, new)]
        a, b = self.step_model()
        n = 1.0 + self.queue
        t_tok = self.draft_per_token_s or 0.0
        alpha = min(self.estimates.alpha, 0.999)
        best, best_g = -1.0, self.current
        for g in range(self.min_gamma, self.max_gamma + 1):
            step = g * t_tok + a + b * n * (g + 1)
            good = n * (1.0 - alpha ** (g + 1)) / (1.0 - alpha) / step if step > 0 else math.inf
            if good > best * (1.0 + 1e-12):
                best, best_g = good, g
        self.current = best_g


GAMMA_POLICIES: tuple[str, ...] = ("adaptive", "static", "heuristic", "confidence", "odld", "leviathan", "goodput", "awc", "awc_analytic",
                                   "awc_solo")


def make_gamma_policy(name: str, gamma: int = 4, max_gamma: int = 16, confidence_threshold: float = 0.3,
                      node_state: Optional[dict] = None, request_class: Optional[str] = None, load_aware: bool = False,
                      probe_every: int = 0) -> GammaPolicy:
    """A fresh γ policy: `gamma` is the static value (static) or the starting value (heuristic, goodput, awc); `max_gamma` bounds all of them.

    "adaptive" is the drafter node's default (`edgespec.policy.gate`): the speculation gate's own model
    picks γ (Leviathan's optimum priced with the verifier's announced forward-time model and the
    node's measured draft time and overheads) where speculating pays at the verifier's load, and γ = 0
    (autoregressive rounds) where it does not. `load_aware` puts any other policy behind the same gate;
    `probe_every` is the gate's probe period (0: no probes).
    "awc" uses the shipped learned weights (edgespec/policy/awc_weights.json) with its analytic fallback;
    "awc_analytic" is AWC's hand-tuned fallback alone (no weights), for ablations; "awc_solo" is that
    fallback with every session learning alone (no node pool), for ablations too.
    `node_state` is one dict per drafter node, the same for all its sessions (the real node and the
    simulator each keep one): AWC pools its statistics there, per `request_class` where the caller
    knows the request's class, and its sessions draft one γ; the gate decides there for the whole node.
    Without it every session learns and decides alone.
    """
    from edgespec.policy.gate import LoadAwareGamma, ModelGamma, SpeculationGate  # gate imports this module

    if name == "adaptive":
        gate = SpeculationGate.of(node_state)
        return LoadAwareGamma(ModelGamma(gate, max(max_gamma, 1), min(max(gamma, 1), max(max_gamma, 1))), gate, probe_every=probe_every)
    policy = _base_policy(name, gamma, max_gamma, confidence_threshold, node_state, request_class)
    if not load_aware:
        return policy
    return LoadAwareGamma(policy, SpeculationGate.of(node_state), probe_every=probe_every)


def _base_policy(name: str, gamma: int, max_gamma: int, confidence_threshold: float, node_state: Optional[dict],
                 request_class: Optional[str]) -> GammaPolicy:
    if not 0 <= gamma <= max_gamma:
        raise ValueError(f"need 0 <= gamma <= max_gamma, got gamma={gamma}, max_gamma={max_gamma}")
    if name == "static":
        return StaticGamma(gamma)
    if name == "heuristic":
        return HeuristicGamma(initial=max(gamma, 1), min_gamma=1, max_gamma=max(max_gamma, 1))
    if name == "confidence":
        return ConfidenceGamma(confidence_threshold, max_gamma=max_gamma)
    if name == "odld":
        return OdldGamma(max_gamma=max_gamma)
    if name == "leviathan":
        return LeviathanGamma(max_gamma=max(max_gamma, 1))
    if name == "goodput":
        return GoodputGamma(max_gamma=max(max_gamma, 1), initial=max(gamma, 1))
    if name in ("awc", "awc_analytic"):
        from edgespec.policy.awc import AwcGamma, AwcNodeStats, default_awc_model  # awc imports this module

        return AwcGamma(max_gamma=max(max_gamma, 1), initial=max(gamma, 1), model=default_awc_model() if name == "awc" else None,
                        node=AwcNodeStats.of(node_state), request_class=request_class)
    if name == "awc_solo":
        from edgespec.policy.awc import AwcGamma

        return AwcGamma(max_gamma=max(max_gamma, 1), initial=max(gamma, 1), model=None)
    raise ValueError(f"unknown γ policy {name!r}; choose one of {', '.join(GAMMA_POLICIES)}")
