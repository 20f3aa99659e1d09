"""Pair profiles: the JSON format `edgespec profile` writes for a draft/target pair (both models' step times and per-position acceptance by q-mode and temperature), its validation and lookup.

Format (``"format": "edgespec-pair-profile/1"``), documented in docs/profile.md::

    {
      "format": "edgespec-pair-profile/1",
      "draft":  {edgespec-profile/1: draft step time vs batch size × new tokens (1 = one draft step)},
      "target": {edgespec-profile/1: verify time vs batch size × new tokens (γ + 1)},
      "acceptance": [
        {"q_mode": "topk", "top_k": 8, "temperature": 1.0,
         "per_position": [a_1, ..., a_G], "alpha": 0.71, "rounds": 412, "drafted_tokens": 3296},
        ...
      ],
      "meta": {...}                          # optional, free-form (host, versions, command)
    }

a_i = P(draft token i accepted | tokens 1..i-1 accepted), estimated over the rounds that drafted
position i; `alpha` is Leviathan's i.i.d. acceptance fitted to the same rounds' tokens per round.
`top_k` is present only for the "topk" q-mode; temperature 0 means greedy, where the q encoding
does not matter (greedy verification compares tokens only). A curve may say the answer length it was
measured on (`answer_tokens`); one setting may then have a curve per length; and the same estimate for each
prompt alone (`per_prompt`), which says how acceptance spreads across requests.

``"format": "edgespec-pair-profile/2"`` (`edgespec profile --serving`) adds a required `serving` object:
what the serving nodes cost beyond bare forwards (`edgespec.plan.servingprofile`). Both versions load;
`PairProfile.serving` is None for /1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from edgespec.plan.profile import (
    Profile, ProfileError, profile_from_dict, profile_to_dict, read_json, write_json,
)
from edgespec.plan.servingprofile import SERVING_FORMAT, ServingProfile, serving_profile_from_dict, serving_profile_to_dict
from edgespec.spec.theory import fit_alpha

__all__ = [
    "PAIR_PROFILE_FORMAT",
    "PAIR_PROFILE_FORMATS",
    "Q_MODES",
    "PairProfileError",
    "AcceptanceCurve",
    "PairProfile",
    "curve_from_rounds",
    "position_counts",
    "shrunk_per_prompt",
    "setting_label",
    "acceptance_curve",
    "pair_profile_from_dict",
    "pair_profile_to_dict",
    "load_pair_profile",
    "write_pair_profile",
]

PAIR_PROFILE_FORMAT = "edgespec-pair-profile/1"
PAIR_PROFILE_FORMATS = (PAIR_PROFILE_FORMAT, SERVING_FORMAT)  # /2 = /1 + the serving nodes' costs
Q_MODES = ("full", "topk", "tokens")


class PairProfileError(ProfileError):
    """A pair profile is malformed or lacks what was asked for; the message names the field."""


@dataclass(frozen=True)
class AcceptanceCurve:
    """Measured acceptance of one (q-mode, temperature) setting: per draft position and as Leviathan's i.i.d. α."""

    q_mode: str
    temperature: float
    per_position: tuple[float, ...]  # a_1..a_G, conditional on the earlier positions being accepted
    alpha: float
    rounds: int
    drafted_tokens: int
    top_k: Optional[int] = None  # only for q_mode "topk"
    answer_tokens: Optional[int] = None  # the answer length the rounds came from, when recorded
    per_prompt: tuple[tuple[float, ...], ...] = ()  # the same estimate for each prompt alone (how acceptance spreads), when recorded

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def label(self) -> str:
        return setting_label(self.q_mode, self.temperature, self.top_k)

    @property
    def max_gamma(self) -> int:
        return len(self.per_position)

    def tokens_per_round(self, gamma: int) -> float:
        """Expected tokens per round at draft length γ ≤ max_gamma: 1 + Σ_k Π_{i≤k} a_i."""
        if not 0 <= gamma <= self.max_gamma:
            raise ValueError(f"gamma must be in [0, {self.max_gamma}] (the measured positions), got {gamma}")
        total, survive = 1.0, 1.0
        for a in self.per_position[:gamma]:
            survive *= a
            total += survive
        return total


@dataclass(frozen=True, eq=False)
class PairProfile:
    """A measured draft/target pair on one machine (see the module docstring for the file format)."""

    draft: Profile
    target: Profile
    acceptance: tuple[AcceptanceCurve, ...]
    meta: dict = field(default_factory=dict)
    serving: Optional[ServingProfile] = None  # edgespec-pair-profile/2: the serving nodes' costs beyond bare forwards

    @property
    def format(self) -> str:
        return SERVING_FORMAT if self.serving is not None else PAIR_PROFILE_FORMAT


# ---------------------------------------------------------------- building curves


def curve_from_rounds(
    q_mode: str, temperature: float, rounds: Sequence[tuple[int, int]], max_gamma: int, top_k: Optional[int] = None
) -> AcceptanceCurve:
    """An acceptance curve from per-round (γ drafted, accepted) pairs.

    a_i = #(rounds with accepted ≥ i) / #(rounds with γ ≥ i and accepted ≥ i − 1): rounds cut short by
    the token budget count only for the positions they drafted. A position no round reached (the ones
    before it stopped every round, or only budget-cut rounds got that far) keeps the previous estimate.
    Probabilities are rounded to 6 decimals.
    """
    if max_gamma < 1:
        raise PairProfileError(f"max_gamma: must be >= 1, got {max_gamma}")
    if not any(g > 0 for g, _ in rounds):
        raise PairProfileError("rounds: no round drafted a token")
    if any(not 0 <= n <= g for g, n in rounds):
        raise PairProfileError("rounds: accepted must be between 0 and the round's γ")
    tokens = sum(n + 1 for _, n in rounds) / len(rounds)
    alpha = round(fit_alpha(tokens, [g for g, _ in rounds]), 6)
    per_position, last = [], alpha
    for reached, accepted in position_counts(rounds, max_gamma):
        last = round(accepted / reached, 6) if reached else last
        per_position.append(last)
    return AcceptanceCurve(q_mode, float(temperature), tuple(per_position), alpha, len(rounds),
                           sum(g for g, _ in rounds), top_k if q_mode == "topk" else None)


def position_counts(rounds: Sequence[tuple[int, int]], max_gamma: int) -> list[tuple[int, int]]:
    """Per position i = 1..max_gamma: (rounds that reached it — drafted ≥ i with the i − 1 before accepted, rounds that accepted it)."""
    return [(sum(1 for g, n in rounds if g >= i and n >= i - 1), sum(1 for _, n in rounds if n >= i)) for i in range(1, max_gamma + 1)]


def shrunk_per_prompt(rounds_by_prompt: Sequence[Sequence[tuple[int, int]]], pooled: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    """Each prompt's acceptance curve, shrunk towards the pooled one by how much prompts truly differ (empirical Bayes).

    A prompt's a_i from its own few rounds is noisy: used raw, the noise would add to the real spread
    across prompts and widen latency tails. Per position i, with prompt k's x_k successes in n_k
    trials and pooled p: the spread the binomial noise explains, p(1 − p)·mean(1/n_k), is taken off
    the observed variance of the x_k/n_k; what remains, τ², is the real spread, and prompt k's
    estimate is (x_k + m·p) / (n_k + m) with m = p(1 − p)/τ² − 1 (the Beta prior worth m trials).
    τ² ≤ 0 gives every prompt the pooled p. Rounded to 6 decimals.
    """
    gamma = len(pooled)
    counts = [position_counts(rounds, gamma) for rounds in rounds_by_prompt]  # per prompt, per position: (trials, successes)
    curves = [[0.0] * gamma for _ in counts]
    for i, p in enumerate(pooled):
        seen = [c[i] for c in counts if c[i][0] > 0]
        var_p = p * (1.0 - p)
        m = math.inf
        if len(seen) >= 2 and var_p > 0.0:
            rates = [x / n for n, x in seen]
            mean = sum(rates) / len(rates)
            observed = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)
            spread = observed - var_p * sum(1.0 / n for n, _ in seen) / len(seen)
            if spread > 0.0:
                m = max(var_p / spread - 1.0, 0.0)
        for k, c in enumerate(counts):
            n, x = c[i]
            curves[k][i] = round(p if math.isinf(m) or n + m == 0 else (x + m * p) / (n + m), 6)
    return tuple(tuple(c) for c in curves)


def setting_label(q_mode: str, temperature: float, top_k: Optional[int] = None) -> str:
    """A short name of an acceptance setting, e.g. "greedy", "topk K=8 T=1", "full T=0.7"."""
    if temperature == 0:
        return "greedy"
    mode = f"topk K={top_k}" if q_mode == "topk" else q_mode
    return f"{mode} T={temperature:g}"


def acceptance_curve(pp: PairProfile, q_mode: str, temperature: float, top_k: Optional[int] = None,
                     answer_tokens: Optional[int] = None) -> AcceptanceCurve:
    """The curve measured for exactly this setting; at temperature 0 the greedy curve whatever the q-mode.

    Where the setting has curves for several answer lengths, the one measured on the length nearest
    `answer_tokens` (the first when it is None).
    """
    found = [curve for curve in pp.acceptance if math.isclose(curve.temperature, temperature, abs_tol=1e-9) and (
        curve.greedy or (curve.q_mode == q_mode and (q_mode != "topk" or curve.top_k == top_k)))]
    if found:
        if answer_tokens is None:
            return found[0]
        return min(found, key=lambda c: abs((c.answer_tokens or answer_tokens) - answer_tokens))
    asked = f"q_mode={q_mode!r}" + (f", top_k={top_k}" if q_mode == "topk" else "") + f", temperature={temperature:g}"
    measured = ", ".join(c.label for c in pp.acceptance)
    raise PairProfileError(f"acceptance: no curve for {asked}; measured: {measured}")


# ---------------------------------------------------------------- validation


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise PairProfileError(f"{where}: must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _count(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PairProfileError(f"{where}: must be an integer >= {low}, got {value!r}")
    return value


def _curve_from_dict(data: Any, where: str) -> AcceptanceCurve:
    if not isinstance(data, dict):
        raise PairProfileError(f"{where}: must be an object")
    known = {"q_mode", "top_k", "temperature", "per_position", "alpha", "rounds", "drafted_tokens", "answer_tokens", "per_prompt"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PairProfileError(f"{where}.{unknown[0]}: unknown field")
    q_mode = data.get("q_mode")
    if q_mode not in Q_MODES:
        raise PairProfileError(f"{where}.q_mode: must be one of {', '.join(Q_MODES)}, got {q_mode!r}")
    top_k = None
    if q_mode == "topk":
        top_k = _count(data.get("top_k"), f"{where}.top_k", 1)
    elif data.get("top_k") is not None:
        raise PairProfileError(f"{where}.top_k: only allowed with q_mode 'topk'")
    positions = data.get("per_position")
    if not isinstance(positions, list) or not positions:
        raise PairProfileError(f"{where}.per_position: must be a non-empty list of probabilities")
    per_position = tuple(_number(a, f"{where}.per_position[{i}]", 0.0, 1.0) for i, a in enumerate(positions))
    answer_tokens = data.get("answer_tokens")
    if answer_tokens is not None:
        answer_tokens = _count(answer_tokens, f"{where}.answer_tokens", 1)
    raw = data.get("per_prompt", [])
    if not isinstance(raw, list) or any(not isinstance(c, list) or not c for c in raw):
        raise PairProfileError(f"{where}.per_prompt: must be a list of per-position curves (non-empty lists of probabilities)")
    per_prompt = tuple(tuple(_number(a, f"{where}.per_prompt[{k}][{i}]", 0.0, 1.0) for i, a in enumerate(c)) for k, c in enumerate(raw))
    return AcceptanceCurve(
        q_mode=q_mode,
        temperature=_number(data.get("temperature"), f"{where}.temperature", 0.0, math.inf),
        per_position=per_position,
        alpha=_number(data.get("alpha"), f"{where}.alpha", 0.0, 1.0),
        rounds=_count(data.get("rounds"), f"{where}.rounds", 1),
        drafted_tokens=_count(data.get("drafted_tokens"), f"{where}.drafted_tokens", 0),
        top_k=top_k,
        answer_tokens=answer_tokens,
        per_prompt=per_prompt,
    )


def _model_profile(data: dict, key: str) -> Profile:
    if key not in data:
        raise PairProfileError(f"{key}: missing (an {PAIR_PROFILE_FORMAT} needs draft and target step-time profiles)")
    if not isinstance(data[key], dict):
        raise PairProfileError(f"{key}: must be an object")
    try:
        return profile_from_dict(data[key])
    except ProfileError as exc:
        raise PairProfileError(f"{key}.{exc}") from None


def _acceptance(data: dict) -> tuple[AcceptanceCurve, ...]:
    raw = data.get("acceptance")
    if not isinstance(raw, list) or not raw:
        raise PairProfileError("acceptance: must be a non-empty list of curves")
    curves = tuple(_curve_from_dict(c, f"acceptance[{i}]") for i, c in enumerate(raw))
    seen: dict[tuple, int] = {}
    for i, c in enumerate(curves):
        key = (("greedy",) if c.greedy else (c.q_mode, c.top_k, c.temperature)) + (c.answer_tokens,)
        if key in seen:
            raise PairProfileError(f"acceptance[{i}]: same setting as acceptance[{seen[key]}] ({c.label})")
        seen[key] = i
    return curves


def _check_version(data: Any) -> str:
    """The file's format, one of PAIR_PROFILE_FORMATS; any other is refused with what this edgespec reads."""
    if not isinstance(data, dict):
        raise PairProfileError("pair profile must be a JSON object")
    fmt = data.get("format")
    if fmt not in PAIR_PROFILE_FORMATS:
        family = "edgespec-pair-profile/"
        what = (f"version {fmt[len(family):]!r} of the pair-profile format is not one this edgespec reads"
                if isinstance(fmt, str) and fmt.startswith(family) else f"must be one of {', '.join(map(repr, PAIR_PROFILE_FORMATS))}")
        raise PairProfileError(f"format: {what}, got {fmt!r} (this edgespec reads {' and '.join(PAIR_PROFILE_FORMATS)}; "
                               "take the profile again with `edgespec profile`, or use the edgespec that wrote it)")
    return fmt


def pair_profile_from_dict(data: Any) -> PairProfile:
    """Validate a decoded pair-profile JSON object (format /1, or /2 with its serving part) and build a PairProfile."""
    fmt = _check_version(data)
    fields_ = {"format", "draft", "target", "acceptance", "meta"} | ({"serving"} if fmt == SERVING_FORMAT else set())
    unknown = sorted(set(data) - fields_)
    if unknown:
        hint = f" ({PAIR_PROFILE_FORMAT} has no serving part; a serving profile is {SERVING_FORMAT})" if unknown[0] == "serving" else ""
        raise PairProfileError(f"{unknown[0]}: unknown field{hint}")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise PairProfileError("meta: must be an object")
    serving = None
    if fmt == SERVING_FORMAT:
        if "serving" not in data:
            raise PairProfileError(f"serving: missing ({SERVING_FORMAT} is a pair profile with the serving nodes' costs)")
        serving = serving_profile_from_dict(data["serving"])
    return PairProfile(_model_profile(data, "draft"), _model_profile(data, "target"), _acceptance(data), meta, serving)


def _curve_to_dict(curve: AcceptanceCurve) -> dict:
    out: dict[str, Any] = {"q_mode": curve.q_mode}
    if curve.q_mode == "topk":
        out["top_k"] = curve.top_k
    out.update(temperature=curve.temperature, per_position=list(curve.per_position), alpha=curve.alpha,
               rounds=curve.rounds, drafted_tokens=curve.drafted_tokens)
    if curve.answer_tokens is not None:
        out["answer_tokens"] = curve.answer_tokens
    if curve.per_prompt:
        out["per_prompt"] = [list(c) for c in curve.per_prompt]
    return out


def pair_profile_to_dict(pp: PairProfile) -> dict:
    """The JSON object for a PairProfile (inverse of pair_profile_from_dict)."""
    out = {
        "format": pp.format,
        "draft": profile_to_dict(pp.draft),
        "target": profile_to_dict(pp.target),
        "acceptance": [_curve_to_dict(c) for c in pp.acceptance],
    }
    if pp.serving is not None:
        out["serving"] = serving_profile_to_dict(pp.serving)
    if pp.meta:
        out["meta"] = pp.meta
    return out


def load_pair_profile(path: Path | str) -> PairProfile:
    """Read and validate a pair-profile JSON file."""
    return pair_profile_from_dict(read_json(path, PairProfileError))


def write_pair_profile(pp: PairProfile, path: Path | str) -> None:
    """Write a pair profile as indented JSON."""
    write_json(pair_profile_to_dict(pp), path)
