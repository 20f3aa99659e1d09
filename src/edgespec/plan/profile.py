"""Measured step-time profiles: the JSON format `edgespec profile` writes, its validation, and interpolation.

A profile records, for one model on one device, the wall time of one forward step as a
function of the batch size and the number of new tokens per sequence (1 for a decode or
draft step, γ+1 for a verification pass), measured at one context length. An optional
prefill table gives prompt-processing time as a function of batch size and prompt tokens.

Format (``"format": "edgespec-profile/1"``), documented in docs/planner.md::

    {
      "format": "edgespec-profile/1",
      "device": "RTX 3080", "model": "llama-68m", "dtype": "float16",
      "context_tokens": 512,
      "batch_sizes": [1, 2, 4, 8, 16, 32, 64],
      "new_tokens": [1, 2, 4, 8, 16],
      "step_time_s": [[...], ...],          # len(batch_sizes) rows × len(new_tokens) columns
      "prefill": {"batch_sizes": [...], "prompt_tokens": [...], "time_s": [[...]]},   # optional
      "meta": {...}                          # optional, free-form (host, versions, repeats)
    }

Interpolation is bilinear inside the grid; outside it the time is held constant below the
smallest grid point and extrapolated linearly from the last segment above the largest, never
falling below the nearest measured value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = [
    "PROFILE_FORMAT",
    "ProfileError",
    "StepTable",
    "Profile",
    "profile_from_dict",
    "profile_to_dict",
    "load_profile",
    "write_profile",
    "check_format",
    "read_json",
    "write_json",
    "table_time_s",
    "profile_step_time_s",
    "profile_prefill_time_s",
]

PROFILE_FORMAT = "edgespec-profile/1"


class ProfileError(ValueError):
    """A profile file is malformed; the message names the field."""


@dataclass(frozen=True, eq=False)
class StepTable:
    """Times on a grid: rows are batch sizes, columns are tokens per sequence."""

    batch_sizes: np.ndarray  # (R,) strictly increasing, > 0
    tokens: np.ndarray  # (C,) strictly increasing, > 0
    time_s: np.ndarray  # (R, C) > 0


@dataclass(frozen=True, eq=False)
class Profile:
    """A measured profile of one model on one device (see the module docstring for the file format)."""

    step: StepTable
    prefill: Optional[StepTable] = None
    device: str = ""
    model: str = ""
    dtype: str = ""
    context_tokens: int = 0
    meta: dict = field(default_factory=dict)


def _axis(data: dict, key: str, where: str) -> np.ndarray:
    values = data.get(key)
    if not isinstance(values, list) or not values:
        raise ProfileError(f"{where}{key}: must be a non-empty list of positive integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ProfileError(f"{where}{key}: must contain positive integers only, got {values!r}")
    arr = np.asarray(values, dtype=float)
    if np.any(np.diff(arr) <= 0):
        raise ProfileError(f"{where}{key}: must be strictly increasing, got {values!r}")
    return arr


def _table(data: Any, rows_key: str, cols_key: str, time_key: str, where: str) -> StepTable:
    if not isinstance(data, dict):
        raise ProfileError(f"{where.rstrip('.')}: must be an object")
    rows = _axis(data, rows_key, where)
    cols = _axis(data, cols_key, where)
    raw = data.get(time_key)
    try:
        times = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise ProfileError(f"{where}{time_key}: must be a list of lists of numbers") from None
    if times.shape != (len(rows), len(cols)):
        raise ProfileError(
            f"{where}{time_key}: shape must be len({rows_key}) × len({cols_key}) = "
            f"{len(rows)} × {len(cols)}, got {times.shape}"
        )
    if not np.all(np.isfinite(times)) or np.any(times <= 0):
        raise ProfileError(f"{where}{time_key}: every time must be a finite number > 0")
    return StepTable(rows, cols, times)


def check_format(data: Any, expected: str, what: str, error: type[ProfileError] = ProfileError) -> None:
    """Refuse anything but a JSON object whose `format` is `expected`; `what` names the object in the message."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object")
    fmt = data.get("format")
    if fmt != expected:
        raise error(f"format: must be {expected!r}, got {fmt!r}")


def profile_from_dict(data: Any) -> Profile:
    """Validate a decoded profile JSON object and build a Profile."""
    check_format(data, PROFILE_FORMAT, "profile")
    step = _table(data, "batch_sizes", "new_tokens", "step_time_s", "")
    prefill = None
    if "prefill" in data:
        prefill = _table(data["prefill"], "batch_sizes", "prompt_tokens", "time_s", "prefill.")
    ctx = data.get("context_tokens", 0)
    if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 0:
        raise ProfileError(f"context_tokens: must be an integer >= 0, got {ctx!r}")
    for key in ("device", "model", "dtype"):
        if not isinstance(data.get(key, ""), str):
            raise ProfileError(f"{key}: must be a string")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise ProfileError("meta: must be an object")
    known = {"format", "batch_sizes", "new_tokens", "step_time_s", "prefill", "context_tokens",
             "device", "model", "dtype", "meta"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(f"{unknown[0]}: unknown field")
    return Profile(step, prefill, data.get("device", ""), data.get("model", ""), data.get("dtype", ""), ctx, meta)


def profile_to_dict(profile: Profile) -> dict:
    """The JSON object for a Profile (inverse of profile_from_dict)."""
    out: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "device": profile.device,
        "model": profile.model,
        "dtype": profile.dtype,
        "context_tokens": profile.context_tokens,
        "batch_sizes": [int(v) for v in profile.step.batch_sizes],
        "new_tokens": [int(v) for v in profile.step.tokens],
        "step_time_s": profile.step.time_s.tolist(),
    }
    if profile.prefill is not None:
        out["prefill"] = {
            "batch_sizes": [int(v) for v in profile.prefill.batch_sizes],
            "prompt_tokens": [int(v) for v in profile.prefill.tokens],
            "time_s": profile.prefill.time_s.tolist(),
        }
    if profile.meta:
        out["meta"] = profile.meta
    return out


def read_json(path: Path | str, error: type[ProfileError] = ProfileError) -> Any:
    """The decoded JSON of a profile file; invalid JSON raises `error`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc}") from None


def write_json(data: dict, path: Path | str) -> None:
    """Write a profile object as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_profile(path: Path | str) -> Profile:
    """Read and validate a profile JSON file."""
    return profile_from_dict(read_json(path))


def write_profile(profile: Profile, path: Path | str) -> None:
    """Write a profile as indented JSON."""
    write_json(profile_to_dict(profile), path)


def _weights(axis: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment index and (unclipped, clipped) position within it; below the grid the weight is 0."""
    if len(axis) == 1:
        zero = np.zeros_like(x)
        return np.zeros(x.shape, dtype=int), zero, zero
    i = np.clip(np.searchsorted(axis, x, side="right") - 1, 0, len(axis) - 2)
    w = (x - axis[i]) / (axis[i + 1] - axis[i])
    w = np.maximum(w, 0.0)
    return i, w, np.minimum(w, 1.0)


def _bilinear(t: np.ndarray, i, j, wx, wy) -> np.ndarray:
    if t.shape[0] == 1:
        i1 = i
    else:
        i1 = i + 1
    j1 = j if t.shape[1] == 1 else j + 1
    return (
        (1 - wx) * (1 - wy) * t[i, j]
        + wx * (1 - wy) * t[i1, j]
        + (1 - wx) * wy * t[i, j1]
        + wx * wy * t[i1, j1]
    )


def table_time_s(table: StepTable, batch_size: Any, tokens: Any) -> np.ndarray:
    """Interpolated time at (batch_size, tokens), vectorised; linear extrapolation above the grid, floor at the nearest measured value."""
    x = np.asarray(batch_size, dtype=float)
    y = np.asarray(tokens, dtype=float)
    x, y = np.broadcast_arrays(x, y)
    i, wx, wx_c = _weights(table.batch_sizes, x)
    j, wy, wy_c = _weights(table.tokens, y)
    extrapolated = _bilinear(table.time_s, i, j, wx, wy)
    clipped = _bilinear(table.time_s, i, j, wx_c, wy_c)
    return np.maximum(extrapolated, clipped)


def profile_step_time_s(profile: Profile, batch_size: Any, new_tokens: Any) -> np.ndarray:
    """Step time for `batch_size` sequences each adding `new_tokens` tokens (context as measured)."""
    return table_time_s(profile.step, batch_size, new_tokens)


def profile_prefill_time_s(profile: Profile, batch_size: Any, prompt_tokens: Any) -> np.ndarray:
    """Prefill time: the prefill table when present, else the step table extrapolated to `prompt_tokens`."""
    table = profile.prefill if profile.prefill is not None else profile.step
    return table_time_s(table, batch_size, prompt_tokens)

