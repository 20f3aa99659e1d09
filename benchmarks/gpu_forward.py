#!/usr/bin/env python3
"""t_forward on this machine's GPU: the step-time grids of the bundled target and of Llama-shaped 1B and 7B targets, with CUDA graphs on and off, written as profiles.

Regime: one target on one CUDA device, nothing else running. A cell is one `CausalLM.forward` of B
rows × n new tokens per row over C context tokens per row with the logits of all n positions (a
verification pass of γ = n − 1; n = 1 is a decode step), timed from an idle device to its last kernel
with CUDA events, median of `--repeats` sweeps after `--warmup` sweeps (edgespec.models.stepgrid).
Grid: batch {1, 8, 32, 64} × n {1, 2, 5, 9} × C {128, 1024}; CUDA graphs on (what `edgespec serve
--device cuda` runs) and off (eager).
Models: the bundled target with its trained weights in float32 (what the bundled pair serves in);
`llama1b` (Llama-3.2-1B shape: hidden 2048, 16 layers, GQA 32/8, ffn 8192, vocab 128256) and
`llama7b` (Llama-2-7B shape: hidden 4096, 32 layers, 32 heads, ffn 11008, vocab 32000) with random
bf16 weights made on the GPU: a forward's time depends on the shapes, dtype and device, not on the
weights' values, so these are those models' step times (their outputs mean nothing).

Writes one edgespec-profile/1 per (model, context, graphs) into --out, named by GPU and shape:
`h200_llama7b_bf16.json` is CUDA graphs at context 1024; `_eager` and `_ctx128` mark the others.
Prints per model the milliseconds of every cell both ways, the verify/decode ratios t(n)/t(1) per
batch, CUDA graphs' speedup, and ends with one JSON line.

`--cpu-smoke` runs the same code on the CPU with tiny shapes (smoke-gqa, smoke-mha and the bundled
target; batch {1, 2} × n {1, 2, 5} × C {16, 32}), the arena's static steps run eagerly in place of
graphs: everything but CUDA itself, in about a minute.
Run: python benchmarks/gpu_forward.py --out DIR [--models bundled,llama1b,llama7b] [--quick] [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgespec.models.bundle import bundled_path
from edgespec.models.device import device_name
from edgespec.models.graphs import GraphConfig
from edgespec.models.runtime import CausalLM
from edgespec.models.stepgrid import RANDOM_WEIGHTS_NOTE, GridSpec, graphs_label, grid_profile, measure_grid, profile_file_name
from edgespec.models.synthetic import SHAPES, random_llama
from edgespec.plan.profile import write_profile

GPU_GRID = dict(batch_sizes=(1, 8, 32, 64), new_tokens=(1, 2, 5, 9))
GPU_CONTEXTS = (1024, 128)
SMOKE_GRID = dict(batch_sizes=(1, 2), new_tokens=(1, 2, 5), warmup=1, repeats=2)
SMOKE_CONTEXTS = (32, 16)


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the profiles (made if missing)")
    ap.add_argument("--models", default=None, help="comma-separated: bundled, llama1b, llama7b (smoke: bundled, smoke-gqa, smoke-mha)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: proves everything but CUDA")
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 4 timed sweeps instead of 3 and 10")
    ap.add_argument("--bundled-dtype", default="float32", help="dtype of the bundled target (default float32)")
    args = ap.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        ap.error("no CUDA GPU visible to torch; use --cpu-smoke to run the measurement code on the CPU")
    return args


def _build(name: str, device: torch.device, dtype: torch.dtype, bundled_dtype: str, smoke: bool) -> tuple[CausalLM, dict]:
    """(the model with graphs as serving sets them, meta about it)."""
    if name == "bundled":
        lm = CausalLM.load(bundled_path("target"), device=device, dtype=bundled_dtype)
        meta = {"weights": "trained (edgespec's bundled target)"}
    else:
        shape = SHAPES[name]
        lm = random_llama(shape, device, dtype)
        meta = {"weights": "random", "note": RANDOM_WEIGHTS_NOTE, "shape": asdict(shape)}
    if smoke:  # the CPU stand-in for graphs: the arena's static steps, run eagerly
        lm.use_graphs(GraphConfig(capture=False))
    return lm, meta


def _eager_twin(lm: CausalLM) -> CausalLM:
    """The same weights on transformers-style growing caches, every step eager."""
    return CausalLM(lm.model, lm.tokenizer, lm.path)


def _ms_table(title: str, spec: GridSpec, by_mode: dict[str, dict]) -> Table:
    table = Table(title=title)
    table.add_column("batch", justify="right")
    for mode in by_mode:
        for n in spec.new_tokens:
            table.add_column(f"{mode} n={n} ms", justify="right")
        table.add_column(f"{mode} t(5)/t(1)" if 5 in spec.new_tokens else f"{mode} t(n)/t(1)", justify="right")
    if len(by_mode) == 2:
        table.add_column("graphs speedup n=1", justify="right")
    modes = list(by_mode)
    for b in spec.batch_sizes:
        row = [str(b)]
        for mode in modes:
            med = by_mode[mode]
            row += [f"{med[(b, n)] * 1e3:.3f}" for n in spec.new_tokens]
            n_ratio = 5 if 5 in spec.new_tokens else spec.new_tokens[-1]
            row.append(f"{med[(b, n_ratio)] / med[(b, 1)]:.2f}×")
        if len(modes) == 2:
            row.append(f"{by_mode[modes[1]][(b, 1)] / by_mode[modes[0]][(b, 1)]:.2f}×")
        table.add_row(*row)
    return table


def _measure_model(name: str, args, device, console: Console, contexts, grid_kw: dict, command: str) -> dict:
    dtype = torch.bfloat16  # of the random-weight shapes (the bundled target takes --bundled-dtype)
    started = time.perf_counter()
    lm, meta = _build(name, device, dtype, args.bundled_dtype, args.cpu_smoke)
    build_s = time.perf_counter() - started
    out: dict = {"dtype": str(lm.dtype).removeprefix("torch."), "parameters": lm.num_parameters, "build_s": round(build_s, 2),
                 "files": [], "ms": {}, "verify5_over_decode": {}, "errors": []}
    console.print(f"[bold]{name}[/bold]: {lm.num_parameters / 1e9:.3f} B parameters, {out['dtype']}, built in {build_s:.1f} s")
    twin = _eager_twin(lm)
    tables: dict[int, dict[str, dict]] = {}
    for model in (lm, twin):  # CUDA graphs first, then eager on the same weights
        mode = graphs_label(model)
        times, specs = {}, {}
        for ctx in contexts:
            specs[ctx] = GridSpec(context_tokens=ctx, **grid_kw)
            t0 = time.perf_counter()
            try:
                times[ctx] = measure_grid(model, specs[ctx])
            except Exception as exc:  # a mode that fails is reported, the others still run
                out["errors"].append(f"{name} ctx={ctx} {mode}: {type(exc).__name__}: {exc}")
                console.print(f"[red]{out['errors'][-1]}[/red]")
                continue
            out.setdefault("measure_s", {})[f"{mode} ctx={ctx}"] = round(time.perf_counter() - t0, 2)
        prefill = {(b, ctx): t.prefill_s[b] for ctx, t in times.items() for b in t.prefill_s}
        for ctx, t in times.items():
            spec, medians = specs[ctx], t.step_s
            profile = grid_profile(model, medians, spec, name, {**meta, "command": command}, prefill)
            path = args.out / profile_file_name(device_name(device), name, lm.dtype, mode, ctx, contexts[0])
            write_profile(profile, path)
            out["files"].append(str(path))
            out["ms"].setdefault(str(ctx), {})[mode] = {str(b): {str(n): round(medians[(b, n)] * 1e3, 4) for n in spec.new_tokens}
                                                       for b in spec.batch_sizes}
            n5 = 5 if 5 in spec.new_tokens else spec.new_tokens[-1]
            out["verify5_over_decode"].setdefault(str(ctx), {})[mode] = {
                str(b): round(medians[(b, n5)] / medians[(b, 1)], 4) for b in spec.batch_sizes}
            out.setdefault("prefill_ms", {}).setdefault(str(ctx), {})[mode] = {str(b): round(s * 1e3, 3) for b, s in t.prefill_s.items()}
            tables.setdefault(ctx, {})[mode] = medians
        if model is lm and lm.graphs is not None:
            out["graph_captures"] = sum(a.captures for a in lm._arenas)
            lm.use_graphs(lm.graphs)  # free the arenas before the eager run
        _free(device)
    for ctx in contexts:
        if ctx in tables:
            spec = GridSpec(context_tokens=ctx, **grid_kw)
            console.print(_ms_table(f"{name} ({out['dtype']}, context {ctx}): ms per forward", spec, tables[ctx]))
    del lm, twin
    _free(device)
    return out


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> int:
    args = _parse()
    console = Console(highlight=False, width=200)
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda")
    contexts = SMOKE_CONTEXTS if args.cpu_smoke else GPU_CONTEXTS
    grid_kw = dict(SMOKE_GRID) if args.cpu_smoke else dict(GPU_GRID, **({"warmup": 1, "repeats": 4} if args.quick else {}))
    names = (args.models or ("bundled,smoke-gqa,smoke-mha" if args.cpu_smoke else "bundled,llama1b,llama7b")).split(",")
    unknown = [n for n in names if n != "bundled" and n not in SHAPES]
    if unknown:
        print(f"error: --models: unknown model(s) {unknown}; known: bundled, {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/gpu_forward.py", *sys.argv[1:]])
    started = time.perf_counter()
    console.print(f"device: {device_name(device)}; torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""))
    results = {name: _measure_model(name, args, device, console, contexts, grid_kw, command) for name in names}
    summary = {"benchmark": "gpu_forward", "device": device_name(device), "smoke": args.cpu_smoke, "contexts": list(contexts),
               "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in grid_kw.items()},
               "models": results, "wall_s": round(time.perf_counter() - started, 1)}
    big = results.get("llama7b")
    if big and str(contexts[0]) in big["verify5_over_decode"]:
        ratios = big["verify5_over_decode"][str(contexts[0])]
        summary["llama7b_verify5_over_decode_batch32"] = {mode: r.get("32") for mode, r in ratios.items()}
    print(json.dumps(summary))
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
