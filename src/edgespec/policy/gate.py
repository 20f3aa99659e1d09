"""The speculation gate: a drafter node turns speculation off (γ = 0, autoregressive rounds) where its verifier's load makes drafting cost more than it saves, and back on where it pays.

Why: a verification forward over γ + 1 positions per row costs about one decode step where the
target is memory-bound (a GPU, few sessions) but about γ + 1 steps where it is compute-bound (a CPU,
or a GPU with many sessions), so the same γ that doubles throughput at one session can halve it at
twenty-four. vLLM turns speculation off above a batch size; here the node decides from what it
measures, the same way in the real drafter node and in the simulator.

How (per drafter node, shared by its sessions' policies — they share draft passes and, since the
verifier pads a batch to its widest draft, one session speculating makes its batch-mates pay too):

    τ_AD = O + t_f(n, 1)                                 seconds per token, AD rounds
    τ_SD(γ) = (γ · t_tok + O + k · t_f(n, γ + 1)) / E(γ; α̂)  seconds per token, speculating γ a round

- t_f(rows, width): the verifier's forward-time model from its load hints (`ForwardCost`); every row
  is taken to draft alike (the node's sessions share one decision, and other nodes running this policy
  decide alike). For AD rounds, and for speculation judged from a closed gate, n is every open session
  at the verifier (`active_sessions`: with γ = 0 they all join one batch) and k = 1; while speculating,
  n is the verifier's measured rows per forward and k = 1 + the measured wait behind other batches'
  forwards per forward (speculating sessions drift into groups that take turns);
- O: the round's time outside target forwards (wire, both event loops), measured per round as
  rtt − forward − waiting behind other batches' forwards;
- t_tok, α̂: the node's draft time per drafted token and acceptance (discounted MLE accepted /
  (accepted + rejections)), from its speculating rounds; while the gate is closed nothing new is
  learned of α, so each AD round ages the estimate towards its prior (a gate closed on a low α̂ —
  other requests, e.g. sampled ones — retries speculation when the load falls and measures again;
  under a load where even the prior does not pay it stays closed at no cost).

τ_SD is taken at the node's recent γ̄, or, for the default policy (`ModelGamma`, whose γ is this
model's argmin), at the best γ. The gate closes when τ_AD < (1 − h)·τ_SD and opens again when
τ_SD < (1 − h)·τ_AD (hysteresis h).
Before any load hint with a forward model, or before the first draft time, it stays open (the
missing draft time counts as 0: the gate only closes when AD wins even against free drafting). While
closed, `probe_every` > 0 lets a session speculate once every that many AD rounds to refresh α̂.
No clock reads and no randomness: everything comes from the observations.
"""

from __future__ import annotations

import math
from typing import Optional

from edgespec.policy.awc import expected_tokens
from edgespec.policy.gamma import GammaPolicy, RoundObservation
from edgespec.policy.load import VerifierHints

__all__ = ["SpeculationGate", "LoadAwareGamma", "ModelGamma"]


def _ok(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value) and value >= 0.0


class SpeculationGate:
    """One drafter node's decision to speculate or not (see the module docstring); `of(node_state)` gives the node's."""

    KEY = "speculation_gate"  # where it lives in a node's shared-state dict

    def __init__(self, hysteresis: float = 0.1, smoothing: float = 0.2, alpha_prior: float = 0.6, alpha_memory: float = 0.98,
                 gamma_prior: float = 4.0) -> None:
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if not 0.0 <= alpha_prior < 1.0 or not 0.0 < alpha_memory <= 1.0:
            raise ValueError("need 0 <= alpha_prior < 1 and 0 < alpha_memory <= 1")
        self.hysteresis, self.smoothing, self.alpha_memory = hysteresis, smoothing, alpha_memory
        self._prior = (2.0 * alpha_prior / (1.0 - alpha_prior), 2.0)  # (accepted, rejections) worth two rounds
        self._accepted = self._rejected = 0.0
        self.gamma_sd = gamma_prior  # EWMA of γ over speculating rounds
        self.draft_per_token_s = 0.0  # the node's draft pass: base + per token · γ (unknown counts as free drafting)
        self.draft_base_s = 0.0
        self._draft_sums: list[float] = []
        self.other_s = 0.0  # EWMA of rtt − forward − busy wait
        self.wait_ratio = 0.0  # EWMA of busy wait / forward
        self.load: Optional[VerifierHints] = None
        self.gated = False
        self.version = 0  # counts observations (what `ModelGamma` caches its choice by)
        self.choose_gamma_up_to = 0  # > 0: the node's γ is this model's best up to it (`ModelGamma`)
        self.switches = 0  # times the gate opened or closed
        self._since_switch = 1 << 30  # observations since the last switch (the first switch needs no settling)
        self.last_taus: Optional[tuple[float, float]] = None  # (τ_SD, τ_AD) of the last decision

    @staticmethod
    def of(node_state: Optional[dict]) -> "SpeculationGate":
        """The node's gate in its shared-state dict (created on first use); a private gate without a dict."""
        if node_state is None:
            return SpeculationGate()
        gate = node_state.get(SpeculationGate.KEY)
        if not isinstance(gate, SpeculationGate):
            gate = node_state[SpeculationGate.KEY] = SpeculationGate()
        return gate

    @property
    def alpha(self) -> float:
        """The node's discounted acceptance estimate, accepted / (accepted + rejections), with a prior worth two rounds."""
        a = self._accepted + self._prior[0]
        return a / (a + self._rejected + self._prior[1])

    def _ema(self, old: float, new: float) -> float:
        return old + self.smoothing * (new - old)

    def observe(self, obs: RoundObservation) -> None:
        """Fold one round of any of the node's sessions in, then decide again."""
        if obs.drafted > 0:
            m = self.alpha_memory
            self._accepted = m * self._accepted + obs.accepted
            self._rejected = m * self._rejected + (1.0 if obs.accepted < obs.drafted else 0.0)
            self.gamma_sd = self._ema(self.gamma_sd, float(obs.drafted))
            if _ok(obs.draft_time_s):
                self._fit_draft(float(obs.drafted), obs.draft_time_s)
        elif self.gated:  # closed: what was learned of α ages towards the prior (it may be stale: other requests, other load)
            self._accepted *= self.alpha_memory
            self._rejected *= self.alpha_memory
        if _ok(obs.rtt_s):
            model_s = obs.forward_s if _ok(obs.forward_s) else obs.verify_time_s
            if _ok(model_s):
                busy = obs.busy_wait_s if _ok(obs.busy_wait_s) else 0.0
                self.other_s = self._ema(self.other_s, max(obs.rtt_s - model_s - busy, 0.0))
                if model_s > 0.0 and obs.drafted > 0:  # the wait of speculating rounds (AD rounds batch every session at once)
                    self.wait_ratio = self._ema(self.wait_ratio, min(busy / model_s, 4.0))
        load = obs.hints
        if load is not None and load.forward_cost is not None:
            self.load = load
        self.version += 1
        self._decide()

    def tau(self, gamma: float) -> Optional[float]:
        """Predicted seconds per emitted token when the node's sessions draft `gamma` tokens a round (0: AD); None without a forward model."""
        load = self.load
        if load is None or load.forward_cost is None:
            return None
        everyone = max(float(load.active_sessions), load.batch_rows or 1.0, 1.0)
        if gamma <= 0 or self.gated:  # AD rounds (or speculation as it would start): every open session in one batch
            n, k = everyone, 1.0
        else:  # speculating now: the batches and the waits behind other batches as measured
            n, k = max(load.batch_rows or 1.0, 1.0), 1.0 + self.wait_ratio
        forward_s = k * load.forward_cost.seconds(n, gamma + 1.0)
        if gamma <= 0:
            return self.other_s + forward_s
        return (self.draft_s(gamma) + self.other_s + forward_s) / expected_tokens(min(self.alpha, 0.999), gamma)

    def _fit_draft(self, gamma: float, seconds: float) -> None:
        """Fold a draft pass of `gamma` steps that took `seconds` into the pass-time line a + b·γ (EW least squares, a and b ≥ 0)."""
        m = 1.0 - self.smoothing
        new = (1.0, gamma, gamma * gamma, seconds, gamma * seconds)
        self._draft_sums = [m * old + v for old, v in zip(self._draft_sums, new)] if self._draft_sums else list(new)
        n, sg, sgg, sy, sgy = self._draft_sums
        var = sgg / n - (sg / n) ** 2
        slope = (sgy / n - sg * sy / (n * n)) / var if var > 1e-6 else None
        if slope is None or slope < 0.0 or sy / n - slope * sg / n < 0.0:  # γ has not varied (or the line bends): all per step
            self.draft_base_s, self.draft_per_token_s = 0.0, sy / sg if sg > 0 else 0.0
        else:
            self.draft_base_s, self.draft_per_token_s = sy / n - slope * sg / n, slope

    def draft_s(self, gamma: float) -> float:
        """Predicted draft pass time for `gamma` tokens (0 for an AD round: no pass)."""
        return self.draft_base_s + self.draft_per_token_s * gamma if gamma > 0 else 0.0

    def predicted_taus(self) -> Optional[tuple[float, float]]:
        """(τ_SD, τ_AD): predicted seconds per emitted token speculating and not at all; None without a forward model.

        τ_SD is at the node's recent γ̄, or — when the node's γ comes from this model (`choose_gamma_up_to`
        set by `ModelGamma`) — at the best γ, since that is what it would draft.
        """
        tau_ad = self.tau(0)
        if tau_ad is None:
            return None
        if self.choose_gamma_up_to:
            return min(self.tau(g) for g in range(1, self.choose_gamma_up_to + 1)), tau_ad
        return self.tau(max(self.gamma_sd, 1.0)), tau_ad

    def best_gamma(self, max_gamma: int, fallback: int) -> int:
        """The γ in [1, max_gamma] with the least predicted time per token (Leviathan's optimum with the verifier's measured forward
        model and the round's measured overheads; ties to the shorter γ); `fallback` before a forward model."""
        taus = [self.tau(g) for g in range(1, max_gamma + 1)]
        if not taus or taus[0] is None:
            return fallback
        return 1 + min(range(len(taus)), key=taus.__getitem__)

    def _decide(self) -> None:
        taus = self.predicted_taus()
        self.last_taus = taus
        if taus is None:
            return
        tau_sd, tau_ad = taus
        keep = 1.0 - self.hysteresis
        gated = not (tau_sd < keep * tau_ad) if self.gated else tau_ad < keep * tau_sd
        self._since_switch += 1
        # a switch reshapes the batches the estimates come from: first let every session of the verifier see a round or two
        settle = 2.0 * max(self.load.active_sessions if self.load is not None else 1, 1)
        if gated != self.gated and self._since_switch >= settle:
            self.gated = gated
            self.switches += 1
            self._since_switch = 0


class LoadAwareGamma(GammaPolicy):
    """A session's γ: its inner policy's, or 0 while the node's `SpeculationGate` is closed (with an optional probe round)."""

    def __init__(self, inner: GammaPolicy, gate: Optional[SpeculationGate] = None, probe_every: int = 0) -> None:
        if probe_every < 0:
            raise ValueError(f"probe_every must be >= 0, got {probe_every}")
        self.inner = inner
        self.gate = gate if gate is not None else SpeculationGate()
        self.probe_every = probe_every
        self.max_gamma = inner.max_gamma
        self._ad_rounds = 0  # AD rounds since this session last speculated

    def gamma(self, now_s: float = 0.0) -> int:
        g = self.inner.gamma(now_s)
        if g == 0 or not self.gate.gated:
            return g
        if self.probe_every and self._ad_rounds >= self.probe_every:
            return g  # a probe: one speculating round refreshes the acceptance estimate
        return 0

    def should_stop(self, draft_prob: float) -> bool:
        return self.inner.should_stop(draft_prob)

    def observe(self, obs: RoundObservation) -> None:
        self._ad_rounds = self._ad_rounds + 1 if obs.drafted == 0 else 0
        self.inner.observe(obs)
        self.gate.observe(obs)


class ModelGamma(GammaPolicy):
    """γ from the node's speculation-gate model: `SpeculationGate.best_gamma` (the drafter node's default, behind the gate itself).

    It is Leviathan's optimum E(γ)/round time, with the round priced as the deployment runs it: the
    node's measured draft time per token and time outside forwards, and the verifier's announced
    forward-time model at its batch size — so γ shortens as a compute-bound verifier fills up, and
    stays long where verification is memory-bound. Before the first forward model: `initial`.
    """

    def __init__(self, gate: SpeculationGate, max_gamma: int = 8, initial: int = 4) -> None:
        if not 1 <= initial <= max_gamma:
            raise ValueError(f"need 1 <= initial <= max_gamma, got {initial}, {max_gamma}")
        self.gate, self.max_gamma, self.initial = gate, max_gamma, initial
        gate.choose_gamma_up_to = max(gate.choose_gamma_up_to, max_gamma)
        self._cached = (-1, initial)

    def gamma(self, now_s: float = 0.0) -> int:
        version, choice = self._cached
        if version != self.gate.version:
            choice = self.gate.best_gamma(self.max_gamma, self.initial)
            self._cached = (self.gate.version, choice)
        return choice
