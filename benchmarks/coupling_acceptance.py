#!/usr/bin/env python3
"""The acceptance cost of seeded sampling: Gumbel-max coupling vs standard rejection sampling, bundled pair, temperature 0.8.

Regime: in-process SD (`generate_sd`), the bundled draft/target pair (vocab 8192, float32, CPU), the 8
benchmark code prompts × `--seeds` seeds in one batch, `--max-tokens` new tokens each (EOS ignored),
temperature 0.8 (top-p `--top-p`, default off), static γ ∈ `--gammas`. For each γ and rule it reports
acceptance α = accepted / drafted (vLLM's definition) and tokens per round (accepted + 1 per round):
- `rejection full`: the standard rule with the draft's full q (accept x with min(1, p/q); the highest
  acceptance, 1 − TV(p, q) per position), what an unseeded request gets with `--q-mode full`;
- `rejection top-K`: the same with the draft's renormalised top-8 (the drafter node's default, ≈ 35 B
  per drafted token);
- `rejection tokens`: one-hot q (accept x with p(x)), the only rejection rule whose wire cost equals coupling's;
- `coupled`: what a request with a `seed` gets (`edgespec.spec.coupling`): the draft drafts
  argmax (log q + G) with the request's noise, the target accepts while its argmax (log p + G) agrees;
  tokens only on the wire. Its acceptance lies between (1 − TV)/(1 + TV) and 1 − TV per position.
Every coupled run is checked token for token against coupled AD with the same seeds (the point of the
rule). Also timed: Gumbel noise for one row of the vocabulary (numpy Philox, host), the per-position
cost coupling adds on each side. Hold the CPU lock: `flock /work/cpu.lock .venv/bin/python benchmarks/coupling_acceptance.py`.

Prints a rich table; the last line of stdout is one JSON object.
Run: .venv/bin/python benchmarks/coupling_acceptance.py [--quick] [--seeds 4] [--max-tokens 48] [--gammas 1,2,4,6] [--top-p 1.0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from edgespec.bench.prompts import PROMPTS
from edgespec.bench.sd_vs_ad import prompt_ids
from edgespec.models.bundle import bundled_path
from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.runtime import CausalLM
from edgespec.spec.coupling import gumbel_noise
from edgespec.spec.sampling import SamplingParams

TEMPERATURE = 0.8
RULES = [("rejection full", dict(q_mode="full")), ("rejection top-K", dict(q_mode="topk", q_top_k=8)),
         ("rejection tokens", dict(q_mode="tokens")), ("coupled", dict(q_mode="tokens", coupled=True))]


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def noise_row_us(vocab_size: int, repeats: int = 200) -> float:
    times = []
    for j in range(repeats):
        t0 = time.perf_counter()
        gumbel_noise(12345, j, vocab_size)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--gammas", default="1,2,4,6")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="1 seed, 24 tokens, γ 2 and 4")
    args = parser.parse_args()
    seeds, max_tokens, gammas = args.seeds, args.max_tokens, [int(g) for g in args.gammas.split(",")]
    if args.quick:
        seeds, max_tokens, gammas = 1, 24, [2, 4]
    console = Console(highlight=False, width=140)
    draft, target = CausalLM.load(bundled_path("draft")), CausalLM.load(bundled_path("target"))
    params = SamplingParams(temperature=TEMPERATURE, top_p=args.top_p)
    prompts = [p for p in prompt_ids(target, PROMPTS) for _ in range(seeds)]
    row_seeds = [1000 * k + s for k in range(len(PROMPTS)) for s in range(seeds)]
    rows = []
    with torch.inference_mode():
        base = GenerationConfig(max_new_tokens=max_tokens, sampling=params, stop_at_eos=False, coupled=True)
        ad = [r.token_ids for r in generate_ad(target, prompts, base, seeds=row_seeds)]
        for gamma in gammas:
            for name, kw in RULES:
                console.print(f"[dim]γ = {gamma}: {name}[/dim]")
                cfg = GenerationConfig(max_new_tokens=max_tokens, sampling=params, stop_at_eos=False, gamma=gamma, seed=7, **kw)
                out = generate_sd(draft, target, prompts, cfg, seeds=row_seeds)
                if cfg.coupled and [r.token_ids for r in out] != ad:
                    raise AssertionError(f"coupled SD differs from coupled AD at γ = {gamma}")
                drafted = sum(r.num_draft_tokens for r in out)
                accepted = sum(r.num_accepted_tokens for r in out)
                rounds = sum(r.num_rounds for r in out)
                tokens = sum(len(r.token_ids) for r in out)
                rows.append({"gamma": gamma, "rule": name, "alpha": round(accepted / drafted, 4), "tokens_per_round": round(tokens / rounds, 3),
                             "drafted": drafted})
    noise_us = noise_row_us(target.vocab_size)
    table = Table(title=f"Acceptance by rule: bundled pair, temperature {TEMPERATURE}, top-p {args.top_p:g}, {len(prompts)} sequences × {max_tokens} tokens")
    for col in ("γ", "rule", "α", "tokens/round", "α / α(rejection full)", "drafted tokens"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    for r in rows:
        full = next(x for x in rows if x["gamma"] == r["gamma"] and x["rule"] == "rejection full")
        r["alpha_vs_full"] = round(r["alpha"] / full["alpha"], 3) if full["alpha"] else None
        table.add_row(str(r["gamma"]), r["rule"], f"{r['alpha']:.3f}", f"{r['tokens_per_round']:.2f}", f"{r['alpha_vs_full']:.2f}", str(r["drafted"]))
    console.print(table)
    console.print(f"Gumbel noise, one row of V = {target.vocab_size}: {noise_us:.0f} µs median (host, numpy Philox); CPU: {_cpu()}; torch threads {torch.get_num_threads()}")
    print(json.dumps({"benchmark": "coupling_acceptance", "temperature": TEMPERATURE, "top_p": args.top_p, "sequences": len(prompts),
                      "max_tokens": max_tokens, "noise_row_us": round(noise_us, 1), "vocab_size": target.vocab_size, "cpu": _cpu(), "rows": rows}))


if __name__ == "__main__":
    main()
