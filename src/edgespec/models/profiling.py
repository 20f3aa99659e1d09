"""Measure a draft/target pair on this machine into a pair profile: both models' step times vs batch size and new tokens, and per-position acceptance from real speculative decoding.

Step times: one `CausalLM.forward` (logits included; sampling and the verification rule excluded) of
B rows each appending n tokens on top of a context of `context_tokens` tokens of real text, cropped
back after every pass; all cells are timed in interleaved sweeps (warm-up sweeps first) so machine
noise falls on every cell alike, and each cell keeps the median. A table is then made monotone
(each cell at most every cell with more rows and tokens: noise only ever adds time) because the
planner's DP and the simulator assume that more work never costs less; `meta.monotone_cut_max`
(per model) is the largest relative cut that made.
Prefill times: a fresh cache per pass, B prompts of P tokens.

Acceptance: static-γ SD (γ = `max_gamma`) of all prompts as one batch, per (q-mode, temperature)
setting, recording every round's (γ, accepted) through `generate_sd(on_round=…)`; the curve is
built by `edgespec.plan.pairprofile.curve_from_rounds`. Every random draw comes from the decoder's
generator seeded with `seed`.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from edgespec.bench.sd_vs_ad import prompt_ids
from edgespec.models.decoder import GenerationConfig, generate_sd
from edgespec.models.device import timed_s
from edgespec.models.runtime import CausalLM, check_same_tokenizer
from edgespec.plan.pairprofile import AcceptanceCurve, PairProfile, curve_from_rounds, setting_label
from edgespec.plan.profile import Profile, StepTable
from edgespec.spec.sampling import SamplingParams

__all__ = ["AcceptanceSetting", "ProfileGrid", "DEFAULT_SETTINGS", "FULL_GRID", "QUICK_GRID", "measure_pair",
           "measure_step_profile", "measure_acceptance", "Progress"]

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class AcceptanceSetting:
    """One acceptance measurement: how q travels, the sampling temperature (0 = greedy) and K for top-K q."""

    q_mode: str
    temperature: float
    top_k: Optional[int] = None

    def label(self) -> str:
        return setting_label(self.q_mode, self.temperature, self.top_k)


def _settings(temperatures: Sequence[float], top_k: int) -> tuple[AcceptanceSetting, ...]:
    """Greedy (q travels as tokens: the only thing greedy verification reads), then full, top-K and tokens per temperature."""
    sampled = [AcceptanceSetting(q, t, top_k if q == "topk" else None) for t in temperatures for q in ("full", "topk", "tokens")]
    return (AcceptanceSetting("tokens", 0.0), *sampled)


DEFAULT_SETTINGS = _settings((1.0, 0.7), top_k=8)


@dataclass(frozen=True)
class ProfileGrid:
    """What to measure: step-time grids, timing repeats, and the acceptance runs."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    draft_tokens: tuple[int, ...] = (1,)  # one draft step
    verify_tokens: tuple[int, ...] = (1, 2, 3, 5, 9)  # γ + 1 for γ = 0, 1, 2, 4, 8
    prefill_batch_sizes: tuple[int, ...] = (1, 2, 3, 4)
    prefill_tokens: tuple[int, ...] = (16, 64, 256)
    context_tokens: int = 128
    warmup: int = 2
    repeats: int = 9
    settings: tuple[AcceptanceSetting, ...] = DEFAULT_SETTINGS
    max_gamma: int = 8
    new_tokens: int = 128  # generated per prompt for each acceptance setting
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "draft_tokens", "verify_tokens", "prefill_batch_sizes", "prefill_tokens"):
            axis = getattr(self, name)
            if not axis or any(v < 1 for v in axis) or list(axis) != sorted(set(axis)):
                raise ValueError(f"{name} must be strictly increasing positive integers, got {axis!r}")
        if self.context_tokens < 1 or self.repeats < 1 or self.warmup < 0 or self.new_tokens < 2:
            raise ValueError("context_tokens and repeats must be >= 1, warmup >= 0, new_tokens >= 2")
        if not 1 <= self.max_gamma <= 32:
            raise ValueError(f"max_gamma must be in [1, 32], got {self.max_gamma}")
        if not self.settings:
            raise ValueError("settings: give at least one acceptance setting")

    def with_max_gamma(self, gamma: int) -> "ProfileGrid":
        """This grid drafting γ = `gamma` for acceptance, with γ + 1 added to the verify tokens."""
        return replace(self, max_gamma=gamma, verify_tokens=tuple(sorted({*self.verify_tokens, gamma + 1})))


FULL_GRID = ProfileGrid()
QUICK_GRID = ProfileGrid(
    batch_sizes=(1, 2, 4), verify_tokens=(1, 3, 5), prefill_batch_sizes=(1, 2), prefill_tokens=(16, 64),
    context_tokens=64, warmup=1, repeats=5, settings=_settings((1.0,), top_k=8), max_gamma=4, new_tokens=24,
)


# ---------------------------------------------------------------- step times


def _text_ids(lm: CausalLM, length: int) -> list[int]:
    """`length` tokens of real text: the benchmark prompts, concatenated and repeated."""
    stream = [t for ids in prompt_ids(lm) for t in ids]
    return (stream * (length // len(stream) + 1))[:length]


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    return timed_s(fn, device)  # on a GPU: from an idle device to the end of the last kernel


def _sweeps(cells: list, run_cell: Callable, grid: ProfileGrid, phase: str, progress: Progress) -> dict:
    """Time every cell once per sweep, warm-up sweeps first; the median seconds per cell."""
    samples: dict = {cell: [] for cell in cells}
    total = (grid.warmup + grid.repeats) * len(cells)
    for sweep in range(grid.warmup + grid.repeats):
        for k, cell in enumerate(cells):
            seconds = run_cell(*cell)
            if sweep >= grid.warmup:
                samples[cell].append(seconds)
            progress(phase, sweep * len(cells) + k + 1, total)
    return {cell: statistics.median(v) for cell, v in samples.items()}


def _monotone(times_s: np.ndarray) -> tuple[np.ndarray, float]:
    """The largest table below `times_s` that never decreases along either axis, and the largest relative cut it made.

    Cell (i, j) becomes the minimum over cells (i' ≥ i, j' ≥ j): timing noise only adds time, so a cell
    slower than one with more rows and tokens is noise.
    """
    flipped = times_s[::-1, ::-1]
    envelope = np.minimum.accumulate(np.minimum.accumulate(flipped, axis=0), axis=1)[::-1, ::-1]
    return envelope, float(np.max(1.0 - envelope / times_s))


def _table(rows: Sequence[int], cols: Sequence[int], medians: dict) -> tuple[StepTable, float]:
    """The monotone table of medians (4 significant digits), and how much the envelope cut."""
    raw = np.array([[float(f"{medians[(r, c)]:.4g}") for c in cols] for r in rows])  # [R, C] seconds
    times_s, cut = _monotone(raw)
    return StepTable(np.array(rows, dtype=float), np.array(cols, dtype=float), times_s), cut


def _step_medians(lm: CausalLM, text: list[int], grid: ProfileGrid, tokens: Sequence[int], phase: str, progress: Progress) -> dict:
    context = text[: grid.context_tokens]
    caches = {}
    for b in grid.batch_sizes:
        caches[b] = lm.new_kv(b)
        lm.prefill(caches[b], [context] * b)
    feed = text[grid.context_tokens :]

    def run_cell(b: int, n: int) -> float:
        kv = caches[b]
        seconds = _timed(lambda: lm.forward(kv, [feed[:n]] * b), lm.device)
        for row in range(b):
            lm.crop(kv, row, grid.context_tokens)
        return seconds

    return _sweeps(list(product(grid.batch_sizes, tokens)), run_cell, grid, phase, progress)


def _prefill_medians(lm: CausalLM, text: list[int], grid: ProfileGrid, phase: str, progress: Progress) -> dict:
    def run_cell(b: int, p: int) -> float:
        kv = lm.new_kv(b)
        return _timed(lambda: lm.prefill(kv, [text[:p]] * b), lm.device)

    return _sweeps(list(product(grid.prefill_batch_sizes, grid.prefill_tokens)), run_cell, grid, phase, progress)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name() if device.type == "cpu" else device.type


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_step_profile(lm: CausalLM, grid: ProfileGrid, tokens: Sequence[int], role: str, progress: Progress) -> Profile:
    """The step-time profile of one model: forwards of B rows × n new tokens at the grid's context, plus prefill."""
    longest = grid.context_tokens + max(tokens)
    limit = getattr(lm.config, "max_position_embeddings", None)
    if limit is not None and max(longest, max(grid.prefill_tokens)) > limit:
        raise ValueError(f"{role}: the grid needs {max(longest, max(grid.prefill_tokens))} positions, the model has {limit}")
    text = _text_ids(lm, max(longest, max(grid.prefill_tokens)))
    step, step_cut = _table(grid.batch_sizes, tokens, _step_medians(lm, text, grid, tokens, f"{role} steps", progress))
    prefill, prefill_cut = _table(grid.prefill_batch_sizes, grid.prefill_tokens,
                                  _prefill_medians(lm, text, grid, f"{role} prefill", progress))
    meta = {"path": str(lm.path or ""), "parameters": lm.num_parameters, "monotone_cut_max": round(max(step_cut, prefill_cut), 4)}
    return Profile(step, prefill, _device_name(lm.device), lm.path.name if lm.path else role,
                   str(lm.dtype).removeprefix("torch."), grid.context_tokens, meta)


# ---------------------------------------------------------------- acceptance


def measure_acceptance(
    draft: CausalLM, target: CausalLM, setting: AcceptanceSetting, prompts: Sequence[Sequence[int]], grid: ProfileGrid,
    progress: Progress, per_sequence: Optional[dict] = None,
) -> AcceptanceCurve:
    """Static-γ SD of all prompts as one batch; the curve from every round's (γ, accepted) (also by prompt into `per_sequence`)."""
    cfg = GenerationConfig(
        max_new_tokens=grid.new_tokens, sampling=SamplingParams(temperature=setting.temperature), gamma=grid.max_gamma,
        q_mode=setting.q_mode, q_top_k=setting.top_k or 8, seed=grid.seed, stop_at_eos=False,
    )
    rounds: list[tuple[int, int]] = []
    emitted, total = [0], grid.new_tokens * len(prompts)
    phase = f"acceptance {setting.label()}"

    def on_round(sequence: int, gamma: int, accepted: int) -> None:
        rounds.append((gamma, accepted))
        if per_sequence is not None:
            per_sequence.setdefault(sequence, []).append((gamma, accepted))
        emitted[0] += accepted + 1
        progress(phase, min(emitted[0], total), total)

    generate_sd(draft, target, prompts, cfg, on_round=on_round)
    return curve_from_rounds(setting.q_mode, setting.temperature, rounds, grid.max_gamma, setting.top_k)


# ---------------------------------------------------------------- the pair


def _meta(grid: ProfileGrid, prompts: Sequence[Sequence[int]], command: str, wall_s: float) -> dict:
    import transformers

    return {
        "host": platform.node(), "cpu": _cpu_name(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "warmup": grid.warmup, "repeats": grid.repeats, "max_gamma": grid.max_gamma, "prompts": len(prompts),
        "new_tokens_per_prompt": grid.new_tokens, "seed": grid.seed, "wall_s": round(wall_s, 2),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
    }


def measure_pair(
    draft: CausalLM,
    target: CausalLM,
    grid: ProfileGrid = FULL_GRID,
    prompts: Optional[Sequence[Sequence[int]]] = None,
    progress: Optional[Progress] = None,
    command: str = "",
) -> PairProfile:
    """Measure the pair: draft steps, target verification passes (γ + 1 tokens), both prefills, and acceptance per setting.

    `prompts` (token ids) default to the SD-vs-AD benchmark prompts encoded with the target's tokenizer.
    """
    check_same_tokenizer(draft, target)
    report = progress or (lambda _phase, _done, _total: None)
    prompts = [list(p) for p in prompts] if prompts is not None else prompt_ids(target)
    start = time.perf_counter()
    with torch.inference_mode():
        draft_profile = measure_step_profile(draft, grid, grid.draft_tokens, "draft", report)
        target_profile = measure_step_profile(target, grid, grid.verify_tokens, "target", report)
        curves = tuple(measure_acceptance(draft, target, s, prompts, grid, report) for s in grid.settings)
    meta = _meta(grid, prompts, command, time.perf_counter() - start)
    return PairProfile(draft_profile, target_profile, curves, meta)
