"""Step-time grids of a target on its device: t_forward(batch, new tokens per row) at one context length, as the verifier runs it, written as an `edgespec-profile/1`.

One cell times `CausalLM.forward` of B rows each appending n tokens on top of C context tokens per
row, returning the logits of all n positions (a verification pass of γ = n − 1; n = 1 is a decode
step), from an idle device to the end of its last kernel (`edgespec.models.device.timed_s`: CUDA
events after a sync, so host launch gaps count, as they do in serving). The rows are then cropped back
to C, which is host bookkeeping only. For each batch size the context is prefilled twice (the second
prefill, on warm buffers, is the prefill time: B prompts of C tokens); warm-up sweeps over the widths
come first (they capture the CUDA graphs when graphs are on), then `repeats` timed sweeps; each cell
keeps its median. The table is made monotone as `edgespec profile` does (`edgespec.models.profiling`),
the raw medians stay in `meta`; the prefill times of several contexts form the profile's prefill table.
"""

from __future__ import annotations

import datetime
import platform
import re
import statistics
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from edgespec.models.device import device_name, dtype_name, timed_s
from edgespec.models.profiling import _table
from edgespec.models.runtime import CausalLM
from edgespec.plan.profile import Profile

__all__ = ["GridSpec", "GridTimes", "measure_grid", "graphs_label", "grid_profile", "verify_ratios", "profile_file_name", "RANDOM_WEIGHTS_NOTE"]

RANDOM_WEIGHTS_NOTE = ("random weights: a forward's time depends on the shapes, the dtype and the device, not on the weights' values; "
                       "these step times stand for the real model's, its outputs are meaningless")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class GridSpec:
    """The cells (batch sizes × new tokens per row), the context every row holds, warm-up and timed sweeps."""

    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    new_tokens: tuple[int, ...] = (1, 2, 5, 9)
    context_tokens: int = 1024
    warmup: int = 3
    repeats: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "new_tokens"):
            axis = getattr(self, name)
            if not axis or axis[0] < 1 or list(axis) != sorted(set(axis)):
                raise ValueError(f"{name} must be strictly increasing positive integers, got {axis!r}")
        if self.context_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("context_tokens and repeats must be >= 1, warmup >= 0")


@dataclass(frozen=True)
class GridTimes:
    """Median seconds per (batch, new tokens) cell, and the prefill seconds of B prompts of the context length per batch B."""

    step_s: dict[tuple[int, int], float]
    prefill_s: dict[int, float]


def measure_grid(lm: CausalLM, spec: GridSpec, progress: Optional[Progress] = None, phase: str = "grid") -> GridTimes:
    """Every cell's median and every batch's prefill (see the module docstring)."""
    report = progress or (lambda _p, _d, _t: None)
    gen = torch.Generator().manual_seed(spec.seed)
    vocab = lm.vocab_size
    context = torch.randint(2, vocab, (spec.context_tokens,), generator=gen).tolist()
    feed = torch.randint(2, vocab, (max(spec.new_tokens),), generator=gen).tolist()
    total = len(spec.batch_sizes) * (spec.warmup + spec.repeats) * len(spec.new_tokens)
    done, medians, prefills = 0, {}, {}
    for b in spec.batch_sizes:
        kv = lm.new_kv(b)
        lm.prefill(kv, [context] * b)
        lm.crop_rows(kv, {row: 0 for row in range(b)})
        prefills[b] = timed_s(lambda: lm.prefill(kv, [context] * b), lm.device)
        back = {row: spec.context_tokens for row in range(b)}
        samples: dict[int, list[float]] = {n: [] for n in spec.new_tokens}
        for sweep in range(spec.warmup + spec.repeats):
            for n in spec.new_tokens:
                seconds = timed_s(lambda: lm.forward(kv, [feed[:n]] * b), lm.device)
                lm.crop_rows(kv, back)
                if sweep >= spec.warmup:
                    samples[n].append(seconds)
                done += 1
                report(phase, done, total)
        medians.update({(b, n): statistics.median(v) for n, v in samples.items()})
        del kv
    return GridTimes(medians, prefills)


def graphs_label(lm: CausalLM) -> str:
    """How the steps ran: CUDA graphs, the arena's static steps run eagerly (CPU), or transformers-style eager caches."""
    if lm.graphs is None:
        return "eager"
    return "cuda-graphs" if lm.graphs.capture else "arena-eager"


def grid_profile(lm: CausalLM, medians: dict[tuple[int, int], float], spec: GridSpec, model: str, meta: dict,
                 prefill_s: Optional[dict[tuple[int, int], float]] = None) -> Profile:
    """The grid as a profile (monotone tables; raw medians, ratios and `meta` in its meta); `prefill_s` by (batch, prompt tokens)."""
    table, cut = _table(spec.batch_sizes, spec.new_tokens, medians)
    prefill = None
    if prefill_s:
        batches, prompts = sorted({b for b, _ in prefill_s}), sorted({p for _, p in prefill_s})
        prefill, prefill_cut = _table(batches, prompts, prefill_s)
        cut = max(cut, prefill_cut)
    raw = [[medians[(b, n)] for n in spec.new_tokens] for b in spec.batch_sizes]
    full = {
        "graphs": graphs_label(lm), "parameters": lm.num_parameters, "warmup": spec.warmup, "repeats": spec.repeats,
        "seed": spec.seed, "monotone_cut_max": round(cut, 4), "raw_step_time_s": raw,
        "verify_over_decode": verify_ratios(medians, spec), **_versions(lm), **meta,
    }
    return Profile(table, prefill, device_name(lm.device), model, dtype_name(lm.dtype), spec.context_tokens, full)


def verify_ratios(medians: dict[tuple[int, int], float], spec: GridSpec) -> dict[str, dict[str, float]]:
    """t(n new tokens) / t(1) per batch size and n > 1: what a verification pass costs in decode steps."""
    return {str(b): {str(n): round(medians[(b, n)] / medians[(b, 1)], 4) for n in spec.new_tokens if n > 1}
            for b in spec.batch_sizes if (b, 1) in medians}


def _versions(lm: CausalLM) -> dict:
    import transformers

    out = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if lm.device.type == "cuda":
        out.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(lm.device),
                   gpu_memory_bytes=torch.cuda.get_device_properties(lm.device).total_memory)
    return out


def profile_file_name(device: str, model: str, dtype: torch.dtype, graphs: str, context_tokens: int, default_context: int) -> str:
    """`{device}_{model}_{dtype}[_eager][_ctx{C}].json`, e.g. h200_llama7b_bf16.json (CUDA graphs, the default context)."""
    slug = re.sub(r"[^a-z0-9]+", "_", device.lower().removeprefix("nvidia").strip()).strip("_") or "device"
    short = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    suffix = ("" if graphs in ("cuda-graphs", "arena-eager") else "_eager") + ("" if context_tokens == default_context else f"_ctx{context_tokens}")
    return f"{slug}_{model}_{short}{suffix}.json"

