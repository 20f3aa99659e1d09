"""Serving-node profiles: what a running verifier and drafter node cost beyond bare forwards (the `serving` part of an edgespec-pair-profile/2), validation and lookup.

`edgespec profile --serving` starts (or attaches to) a real verifier node and a real drafter node and
measures, on a workload of its own, everything a round costs that a profile of bare forwards misses.
The planner's latency model and the simulator read these as explicit terms (docs/profile.md#serving):

    "serving": {
      "setting": {"q_mode": "tokens", "temperature": 0.0, "top_k": null, "gamma": 4},
      "target_forward": {edgespec-profile/1: target forwards in the verifier process, batch × new tokens, + prefill},
      "draft_step": {edgespec-profile/1: draft pass time per drafted token in the drafter node, batch × 1},
      "framework": {"batch_sizes": [1, 2, 4],
                    "verifier_s": [...],     # per batch: the verifier's time outside target forwards
                    "drafter_s": [...],      # per round of a pass of that many sessions on one drafter node: the node and
                                             # the wire outside the draft pass (one value: measured with one session)
                    "drafter_background_s": 0.004},  # per round and session: the device's CPU off the round's critical path
      "overlap_s": 0.002,                    # the verifier's extra time per draft that arrives while a forward runs
      "verdict_overlap_s": 0.001,            # ... per verdict of the previous batch going out while a forward runs
      "session": {"open_s": ..., "request_s": ..., "first_round_s": ...},
      "shared_core": {"devices": [1, 2, 4], "draft_pass_s": [...],   # a pass while that many devices have a session each
                      "cpu_per_round_s": [...]},                    # ... and the device CPUs' work per round then
      "quota": {"slowdowns": [2.0], "draft_pass_s": [...]}         # optional: a pass under a CPU quota of 1/slowdown core
    }

Reading one never imports torch (`edgespec.plan` stays light).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgespec.plan.profile import Profile, ProfileError, profile_from_dict, profile_to_dict

__all__ = [
    "SERVING_FORMAT",
    "ServingProfileError",
    "BatchSeries",
    "ServingSetting",
    "ServingProfile",
    "serving_profile_from_dict",
    "serving_profile_to_dict",
    "load_serving_profile",
]

SERVING_FORMAT = "edgespec-pair-profile/2"  # a pair profile with a `serving` part; /1 holds bare forwards only


class ServingProfileError(ProfileError):
    """A serving profile is malformed, or a file lacks the serving part; the message names the field or the format."""


@dataclass(frozen=True)
class BatchSeries:
    """A measured value per batch size (seconds); linear between the measured sizes, held beyond them."""

    batch_sizes: tuple[int, ...]
    seconds: tuple[float, ...]

    def at(self, batch_size):
        """Seconds at `batch_size` (a number or an array)."""
        if len(self.seconds) == 1:
            return self.seconds[0] + 0.0 * np.asarray(batch_size) if np.ndim(batch_size) else self.seconds[0]
        return np.interp(batch_size, self.batch_sizes, self.seconds)

    @staticmethod
    def constant(seconds: float) -> "BatchSeries":
        return BatchSeries((1,), (float(seconds),))


@dataclass(frozen=True)
class ServingSetting:
    """The drafting setting the nodes served while measured: q encoding, temperature (0 = greedy), K for top-K, static γ."""

    q_mode: str
    temperature: float
    gamma: int
    top_k: Optional[int] = None


@dataclass(frozen=True, eq=False)
class ServingProfile:
    """What a serving verifier/drafter pair costs beyond bare forwards (see the module docstring), all measured."""

    setting: ServingSetting
    target_forward: Profile  # target forwards in the verifier process (step: batch × γ + 1 tokens; prefill: batch × prompt)
    draft_step: Profile  # draft pass time per drafted token in the drafter node (step: batch × 1 token)
    verifier_framework: BatchSeries  # per batch: verifier time outside forwards (rule, crops, messages, scheduling)
    drafter_framework: BatchSeries  # per round of a pass, by sessions drafted together: drafter node and wire outside the pass and the verifier
    drafter_background_s: float = 0.0  # per round and session: device CPU off the round's critical path (user, relay, stream)
    overlap_s: float = 0.0  # the verifier's extra time per draft arriving during a forward (one core, one interpreter)
    verdict_overlap_s: float = 0.0  # the verifier's extra time per verdict of the previous batch going out during a forward
    open_s: float = 0.0  # open → opened beyond the link's own latency and transfer
    request_s: float = 0.0  # the user's HTTP request and its first streamed chunk (user TTFT − engine TTFT)
    first_round_s: float = 0.0  # informational: mean engine TTFT of a lone session at batch 1 on a zero-latency link
    shared_core: Optional[BatchSeries] = None  # draft pass time vs devices with a session each on the shared core (batch_sizes = devices)
    shared_core_cpu: Optional[BatchSeries] = None  # the device CPUs' CPU-seconds per round then (batch_sizes = devices)
    quota: Optional[BatchSeries] = None  # draft pass time vs CPU-quota slowdown (batch_sizes = slowdowns > 1)

    def core_efficiency(self, devices: int = 2) -> float:
        """Share of a shared core's capacity left to the work when `devices` devices use it: the CPU a round needs alone over
        what it needs then (`shared_core_cpu`, held beyond the measured counts); without it 2 · pass(1) / pass(2); 1 for one device."""
        if devices <= 1:
            return 1.0
        if self.shared_core_cpu is not None and self.shared_core_cpu.seconds[0] > 0:
            return float(min(1.0, self.shared_core_cpu.seconds[0] / self.shared_core_cpu.at(devices)))
        if self.shared_core is None or len(self.shared_core.batch_sizes) < 2:
            return 1.0
        (k1, k2), (p1, p2) = self.shared_core.batch_sizes[:2], self.shared_core.seconds[:2]
        return min(1.0, (k2 / k1) * p1 / p2) if p2 > 0 else 1.0

    def quota_cap(self, slowdown: float) -> float:
        """The share of a core a device under a CPU quota of 1/slowdown core gets: pass(full core) / pass(quota), measured where
        this slowdown was measured, else 1/slowdown."""
        if slowdown == 1.0:
            return 1.0
        if self.quota is not None:
            full = self.shared_core.seconds[0] if self.shared_core is not None else float(self.draft_step.step.time_s[0, 0]) * self.setting.gamma
            for s, seconds in zip(self.quota.batch_sizes, self.quota.seconds):
                if math.isclose(s, slowdown) and seconds > 0:
                    return min(1.0, full / seconds)
        return 1.0 / slowdown


# ---------------------------------------------------------------- validation


def _number(value: Any, where: str, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ServingProfileError(f"{where}: must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _object(data: Any, where: str, known: set[str], required: Sequence[str] = ()) -> dict:
    if not isinstance(data, dict):
        raise ServingProfileError(f"{where}: must be an object")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ServingProfileError(f"{where}.{unknown[0]}: unknown field")
    for key in required:
        if key not in data:
            raise ServingProfileError(f"{where}.{key}: missing")
    return data


def _sizes(values: Any, where: str, integers: bool = True) -> tuple:
    kinds = int if integers else (int, float)
    if not isinstance(values, list) or not values or not all(isinstance(v, kinds) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ServingProfileError(f"{where}: must be a non-empty list of {'integers' if integers else 'numbers'} >= 1, got {values!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ServingProfileError(f"{where}: must be strictly increasing, got {values!r}")
    return tuple(values)


def _series(data: dict, where: str, axis: str, key: str, axis_values: Optional[tuple] = None, integers: bool = True,
            constant: bool = False) -> BatchSeries:
    sizes = axis_values if axis_values is not None else _sizes(data.get(axis), f"{where}.{axis}", integers)
    raw = data.get(key)
    if not isinstance(raw, list) or len(raw) not in (len(sizes), 1 if constant else len(sizes)):
        ones = " (or one, the same for every size)" if constant else ""
        raise ServingProfileError(f"{where}.{key}: must be a list of {len(sizes)} numbers (one per {axis} entry){ones}, got {raw!r}")
    values = tuple(_number(v, f"{where}.{key}[{i}]") for i, v in enumerate(raw))
    return BatchSeries(sizes, values) if len(values) == len(sizes) else BatchSeries.constant(values[0])


def _profile(data: Any, where: str) -> Profile:
    try:
        return profile_from_dict(data)
    except ProfileError as exc:
        raise ServingProfileError(f"{where}.{exc}") from None


def _setting(data: Any) -> ServingSetting:
    s = _object(data, "serving.setting", {"q_mode", "temperature", "top_k", "gamma"}, ("q_mode", "temperature", "gamma"))
    if s["q_mode"] not in ("full", "topk", "tokens"):
        raise ServingProfileError(f"serving.setting.q_mode: must be one of full, topk, tokens, got {s['q_mode']!r}")
    gamma = s["gamma"]
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ServingProfileError(f"serving.setting.gamma: must be an integer >= 1, got {gamma!r}")
    top_k = s.get("top_k")
    if s["q_mode"] == "topk" and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ServingProfileError(f"serving.setting.top_k: must be an integer >= 1 with q_mode 'topk', got {top_k!r}")
    return ServingSetting(s["q_mode"], _number(s["temperature"], "serving.setting.temperature"), gamma,
                          top_k if s["q_mode"] == "topk" else None)


def serving_profile_from_dict(data: Any) -> ServingProfile:
    """Validate the `serving` object of an edgespec-pair-profile/2 and build a ServingProfile (errors name the field)."""
    known = {"setting", "target_forward", "draft_step", "framework", "overlap_s", "verdict_overlap_s", "session", "shared_core", "quota"}
    s = _object(data, "serving", known, ("setting", "target_forward", "draft_step", "framework", "session"))
    fw = _object(s["framework"], "serving.framework", {"batch_sizes", "verifier_s", "drafter_s", "drafter_background_s"},
                 ("batch_sizes", "verifier_s", "drafter_s"))
    sizes = _sizes(fw["batch_sizes"], "serving.framework.batch_sizes")
    session = _object(s["session"], "serving.session", {"open_s", "request_s", "first_round_s"}, ("open_s", "request_s"))
    shared = shared_cpu = quota = None
    if s.get("shared_core") is not None:
        sc = _object(s["shared_core"], "serving.shared_core", {"devices", "draft_pass_s", "cpu_per_round_s"}, ("devices", "draft_pass_s"))
        shared = _series(sc, "serving.shared_core", "devices", "draft_pass_s")
        if sc.get("cpu_per_round_s") is not None:
            shared_cpu = _series(sc, "serving.shared_core", "devices", "cpu_per_round_s")
    if s.get("quota") is not None:
        q = _object(s["quota"], "serving.quota", {"slowdowns", "draft_pass_s"}, ("slowdowns", "draft_pass_s"))
        quota = _series(q, "serving.quota", "slowdowns", "draft_pass_s", integers=False)
    return ServingProfile(
        setting=_setting(s["setting"]),
        target_forward=_profile(s["target_forward"], "serving.target_forward"),
        draft_step=_profile(s["draft_step"], "serving.draft_step"),
        verifier_framework=_series(fw, "serving.framework", "batch_sizes", "verifier_s", sizes, constant=True),
        drafter_framework=_series(fw, "serving.framework", "batch_sizes", "drafter_s", sizes, constant=True),
        drafter_background_s=_number(fw.get("drafter_background_s", 0.0), "serving.framework.drafter_background_s"),
        overlap_s=_number(s.get("overlap_s", 0.0), "serving.overlap_s"),
        verdict_overlap_s=_number(s.get("verdict_overlap_s", 0.0), "serving.verdict_overlap_s"),
        open_s=_number(session["open_s"], "serving.session.open_s"),
        request_s=_number(session["request_s"], "serving.session.request_s"),
        first_round_s=_number(session.get("first_round_s", 0.0), "serving.session.first_round_s"),
        shared_core=shared,
        shared_core_cpu=shared_cpu,
        quota=quota,
    )


def _on(series: BatchSeries, sizes: tuple) -> list:
    """A series written on the framework's batch sizes: one value when it is the same for every size."""
    if len(series.seconds) == 1:
        return [series.seconds[0]]
    if tuple(series.batch_sizes) != tuple(sizes):
        return [float(series.at(b)) for b in sizes]
    return list(series.seconds)


def serving_profile_to_dict(sp: ServingProfile) -> dict:
    """The JSON object of the `serving` part (inverse of serving_profile_from_dict)."""
    st = sp.setting
    sizes = max(sp.verifier_framework.batch_sizes, sp.drafter_framework.batch_sizes, key=len)
    out: dict[str, Any] = {
        "setting": {"q_mode": st.q_mode, "temperature": st.temperature, "top_k": st.top_k, "gamma": st.gamma},
        "target_forward": profile_to_dict(sp.target_forward),
        "draft_step": profile_to_dict(sp.draft_step),
        "framework": {"batch_sizes": list(sizes), "verifier_s": _on(sp.verifier_framework, sizes), "drafter_s": _on(sp.drafter_framework, sizes),
                      "drafter_background_s": sp.drafter_background_s},
        "overlap_s": sp.overlap_s,
        "verdict_overlap_s": sp.verdict_overlap_s,
        "session": {"open_s": sp.open_s, "request_s": sp.request_s, "first_round_s": sp.first_round_s},
    }
    if sp.shared_core is not None:
        out["shared_core"] = {"devices": list(sp.shared_core.batch_sizes), "draft_pass_s": list(sp.shared_core.seconds)}
        if sp.shared_core_cpu is not None:
            out["shared_core"]["cpu_per_round_s"] = list(sp.shared_core_cpu.seconds)
    if sp.quota is not None:
        out["quota"] = {"slowdowns": list(sp.quota.batch_sizes), "draft_pass_s": list(sp.quota.seconds)}
    return out


def load_serving_profile(path: Path | str) -> ServingProfile:
    """The serving part of a pair-profile file; a file of bare forwards only (edgespec-pair-profile/1) is refused, saying what to do."""
    from edgespec.plan.pairprofile import load_pair_profile

    pp = load_pair_profile(path)
    if pp.serving is None:
        raise ServingProfileError(
            f"{path}: {pp.format} holds bare forwards only (no serving part); measure the serving nodes with "
            f"`edgespec profile --serving --out FILE`, which writes {SERVING_FORMAT}")
    return pp.serving
