"""Adaptive window control (AWC, after DSD): per-round γ minimising predicted time per emitted token from a session's observed queue, RTT, device speed, verify time and acceptance.

How it decides (docs/policies.md has the derivation and the training):

1. **Features** (`AwcFeatures`): exponential moving averages of what each `RoundObservation`
   carries — acceptance α̂ (the truncated-geometric MLE, as `RunningEstimates`), per-token draft
   time t_tok (device speed; a slowly rising floor, since a batched draft pass lasts as long as its
   longest draft), verify time t_v, round trip rtt (block sent → verdict back: wire,
   queue and verify), the verifier's queue depth q and its trend Δq (EWMA of round-to-round
   changes), and γ̄, the draft length at which they were measured. Any of them may be None (the
   real drafter node does not always know RTT or queue depth); what is missing is not used.
2. **Analytic fallback** (hand-tuned, always available): time per emitted token
       τ(γ) = (γ·t_tok + t_net + t_v(γ)) / E(γ; α̂),   E(γ; α) = (1 − α^(γ+1)) / (1 − α),
   where t_net = rtt − t_v (wire + queueing, taken as independent of γ), and
       t_v(γ) = t_v · (1 − f + f·(γ + 1)/(γ̄ + 1)),   f = q̂/(q̂ + q_half),  q̂ = q + horizon·max(Δq, 0),
   i.e. the verify pass is treated as fixed-cost (memory-bound) when the verifier's queue is
   empty and increasingly token-proportional (compute-bound) as the queue — the batch-size proxy —
   grows and rises. AWC picks the γ in [min_gamma, max_gamma] with the smallest τ(γ).
3. **Learned correction** (`AwcModel`, shipped as `awc_weights.json`, fitted by
   `scripts/train_awc.py` on oracle labels from static-γ sweeps in the simulator): a ridge
   regression of the residual log τ_true(γ) − log τ_analytic(γ) on features ⊗ (1, d, d²), where
   d = (γ − γ̄)/gamma_scale. The corrected prediction is τ_analytic(γ)·exp(residual(γ)). It is
   used once the session has `min_rounds` observations with draft, verify and RTT times;
   before that (or with no weights) the fallback decides alone.

No clock reads, no randomness: the decision is recomputed in `observe` and `gamma()` returns it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from edgespec.policy.gamma import GammaPolicy, RoundObservation

__all__ = [
    "AwcFeatures",
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

WEIGHTS_FORMAT = "edgespec-awc/1"
# model features, computed from a snapshot by `feature_vector` (the same function in training and at run time)
FEATURE_NAMES: tuple[str, ...] = ("bias", "alpha", "log_draft_over_verify", "log_net_over_verify", "log1p_queue", "queue_trend")
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


class AwcFeatures:
    """EWMAs of one session's round observations (the features AWC decides on)."""

    def __init__(self, smoothing: float = 0.2, alpha_prior: float = 0.6, gamma_prior: float = 4.0, alpha_memory: float = 0.97) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.0 <= alpha_prior < 1.0:
            raise ValueError(f"alpha_prior must be in [0, 1), got {alpha_prior}")
        if not 0.0 < alpha_memory <= 1.0:
            raise ValueError(f"alpha_memory must be in (0, 1], got {alpha_memory}")
        self.smoothing, self.alpha_memory = smoothing, alpha_memory
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
        self._seen_times = 0  # verdicts seen (the first one's times are provisional)

    def _ema(self, old: Optional[float], new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)

    @property
    def alpha(self) -> float:
        """Discounted MLE of i.i.d. acceptance: accepted / (accepted + rejections), forgetting `alpha_memory` per round."""
        a = self._accepted + self._prior[0]
        return a / (a + self._rejected + self._prior[1])

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
            self._accepted = m * self._accepted + obs.accepted
            self._rejected = m * self._rejected + (1.0 if obs.accepted < obs.drafted else 0.0)
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
        if ok(obs.rtt_s):
            self.rtt_s = ema(self.rtt_s, obs.rtt_s)
        if ok(obs.upload_time_s):
            self.upload_s = ema(self.upload_s, obs.upload_time_s)
        self._seen_times += 1
        if obs.queue_depth is not None and obs.queue_depth >= 0:
            q = int(obs.queue_depth)
            if self._last_queue is not None:
                self.queue_trend = self._ema(self.queue_trend, float(q - self._last_queue))
            self._last_queue = q
            self.queue = self._ema(self.queue, float(q))

    def snapshot(self) -> AwcSnapshot:
        return AwcSnapshot(self.rounds, self.alpha, self.gamma_obs, self.draft_per_token_s, self.verify_s, self.rtt_s,
                           self.upload_s, self.queue, self.queue_trend)


# ----------------------------------------------------------------------------- the analytic model

Q_HALF = 24.0  # queue depth at which the verify pass counts as half token-proportional (hand-tuned)
TREND_HORIZON = 4.0  # rounds ahead a rising queue is extrapolated (hand-tuned)
DRAFT_DRIFT = 0.05  # how fast the per-token draft time estimate rises towards a slower observation (hand-tuned)
PRIOR_DRAFT_S = 0.005  # per-token draft time assumed before one is measured
PRIOR_VERIFY_S = 0.02  # verify pass assumed before one is measured
_TINY_S = 1e-6


def _effective_queue(snap: AwcSnapshot) -> float:
    if snap.queue is None:
        return 0.0
    return max(snap.queue + TREND_HORIZON * max(snap.queue_trend, 0.0), 0.0)


def analytic_tau(snap: AwcSnapshot, gamma: int) -> float:
    """The fallback's predicted seconds per emitted token for a round of `gamma` drafts (priors stand in for unknown times)."""
    t_tok = snap.draft_per_token_s if snap.draft_per_token_s is not None else PRIOR_DRAFT_S
    t_v = snap.verify_s if snap.verify_s is not None else PRIOR_VERIFY_S
    q = _effective_queue(snap)
    f = q / (q + Q_HALF)
    t_verify = t_v * (1.0 - f + f * (gamma + 1.0) / (snap.gamma_obs + 1.0))
    alpha = min(max(snap.alpha, 0.0), 0.999)
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


class AwcGamma(GammaPolicy):
    """Adaptive window control: each round, the γ in [min_gamma, max_gamma] with the least predicted time per emitted token.

    `model` None uses the analytic fallback only. `initial` is γ before any verdict; the learned
    correction applies from `min_rounds` complete observations on.
    """

    def __init__(self, max_gamma: int = 16, min_gamma: int = 1, initial: int = 4, model: Optional[AwcModel] = None,
                 smoothing: float = 0.2, min_rounds: int = 3, features: Optional[AwcFeatures] = None) -> None:
        if min_gamma < 1 or max_gamma < min_gamma:
            raise ValueError(f"need 1 <= min_gamma <= max_gamma, got {min_gamma}, {max_gamma}")
        self.min_gamma, self.max_gamma = min_gamma, max_gamma
        self.model, self.min_rounds = model, min_rounds
        self.features = features or AwcFeatures(smoothing=smoothing, gamma_prior=float(initial))
        self.current = min(max(initial, min_gamma), max_gamma)
        self.used_model = False  # whether the last decision used the learned correction

    def gamma(self, now_s: float = 0.0) -> int:
        return self.current

    def observe(self, obs: RoundObservation) -> None:
        self.features.update(obs)
        self.current = self.decide(self.features.snapshot())

    def predicted_tau(self, snap: AwcSnapshot, gamma: int) -> float:
        """Predicted seconds per emitted token at `gamma` (the learned correction when it applies)."""
        tau = analytic_tau(snap, gamma)
        if self.model is not None and snap.complete and snap.rounds >= self.min_rounds:
            r = self.model.residual(feature_vector(snap), gamma, snap.gamma_obs)
            tau *= math.exp(max(min(r, 5.0), -5.0))
        return tau

    def decide(self, snap: AwcSnapshot) -> int:
        """The γ with the least predicted time per token (ties to the shorter γ); `predicted_tau`, inlined for speed."""
        if snap.rounds == 0 and snap.verify_s is None:
            return self.current
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
        q = _effective_queue(snap)
        f = q / (q + Q_HALF)
        go = snap.gamma_obs
        fixed = snap.net_s + t_v * (1.0 - f)
        per = t_v * f / (go + 1.0)
        alpha = min(max(snap.alpha, 0.0), 0.999)
        power = alpha ** self.min_gamma
        best, best_tau = self.min_gamma, math.inf
        for g in range(self.min_gamma, self.max_gamma + 1):
            power *= alpha  # α^(g+1)
            tau = (g * t_tok + fixed + per * (g + 1.0)) * (1.0 - alpha) / (1.0 - power)
            if use_model:
                d = (g - go) / scale
                r = c0 + d * (c1 + d * c2)
                tau *= math.exp(5.0 if r > 5.0 else (-5.0 if r < -5.0 else r))
            if tau < best_tau:
                best, best_tau = g, tau
        return best
