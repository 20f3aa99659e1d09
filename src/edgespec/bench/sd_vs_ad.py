"""Benchmark: in-process speculative vs autoregressive decoding of the bundled pair on this CPU, with the parts that bound it.

Regime: one sequence at a time (batch 1), temperature 0, float32, short code prompts, a fixed
token budget; both modes pay the same prefill. For each γ it measures, in one run:
- α (accepted / drafted) and the mean tokens emitted per round;
- t_draft (one draft decode step), t_target (one target decode step), t_verify(γ) (one target pass
  over γ + 1 tokens), each the median of repeated steps at the prompts' context length;
- AD and SD tokens/s and the measured speedup;
- Leviathan's bound E(γ)/(γc + 1) with c = t_draft/t_target (assumes a verify pass costs one decode
  step), and the zero-overhead bound E·t_target/(γ·t_draft + t_verify(γ)) built from the measured
  parts, where E is the measured mean number of tokens per round; measured/bound is the share of
  the achievable speedup that survives framework overhead (sampling, verification, cache crops).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch

from edgespec.models.decoder import GenerationConfig, GenerationResult, generate_ad, generate_sd
from edgespec.models.runtime import CausalLM
from edgespec.spec.theory import expected_tokens_per_round, leviathan_speedup

PROMPTS = (
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    \"\"\"A last-in, first-out container.\"\"\"\n\n    def __init__(self):\n",
    "def read_config(path):\n    \"\"\"Read a configuration file and return a dict.\"\"\"\n",
    "    def __repr__(self):\n        return ",
    "for i in range(len(items)):\n    if ",
    "try:\n    import threading\nexcept ImportError:\n",
    "def _check_arg(name, value):\n    if not isinstance(value, int):\n        raise TypeError(",
    "\n\nclass Error(Exception):\n    \"\"\"Base class for exceptions in this module.\"\"\"\n",
)


@dataclass(frozen=True)
class Row:
    gamma: int
    alpha: float
    tokens_per_round: float
    c: float
    t_draft_s: float
    t_target_s: float
    t_verify_s: float
    ad_tokens_per_s: float
    sd_tokens_per_s: float
    speedup: float
    leviathan_bound: float
    speedup_bound: float
    share_of_bound: float


def _step_timings(draft: CausalLM, target: CausalLM, context: list[int], gammas: Sequence[int], repeats: int) -> dict:
    """Median seconds of one forward of each kind, interleaved so machine noise hits all of them alike.

    Keys: "draft" (1 token), "target" (1 token), and each γ (target pass over γ + 1 tokens); every
    forward runs on top of `context` and is cropped back afterwards.
    """
    kinds = [("draft", draft, 1), ("target", target, 1)] + [(g, target, g + 1) for g in gammas]
    caches = {}
    for lm in (draft, target):
        caches[id(lm)] = lm.new_kv(1)
        lm.prefill(caches[id(lm)], [context])
    samples: dict = {key: [] for key, _, _ in kinds}
    for _ in range(repeats):
        for key, lm, n in kinds:
            kv = caches[id(lm)]
            t0 = time.perf_counter()
            lm.forward(kv, [context[-n:]], [n])
            samples[key].append(time.perf_counter() - t0)
            lm.crop(kv, 0, len(context))
    return {key: statistics.median(v) for key, v in samples.items()}


def _run(fn: Callable[[Sequence[int]], GenerationResult], prompts: list[list[int]]) -> tuple[float, list[GenerationResult]]:
    results, wall, tokens = [], 0.0, 0
    for p in prompts:
        r = fn(p)
        results.append(r)
        wall += r.wall_s
        tokens += len(r.token_ids)
    return tokens / wall, results


def run(
    draft: CausalLM,
    target: CausalLM,
    gammas: Sequence[int] = (1, 2, 3, 4, 5, 6, 8),
    max_new_tokens: int = 96,
    repeats: int = 25,
    progress: Optional[Callable[[str], None]] = None,
) -> list[Row]:
    """Measure every γ; returns one row per γ (AD measured twice, before and after, and averaged)."""
    say = progress or (lambda _msg: None)
    bos = target.tokenizer.bos_token_id
    prompts = [([bos] if bos is not None else []) + target.tokenize(p) for p in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_at_eos=False)
    with torch.inference_mode():
        say("warm-up")
        generate_sd(draft, target, [prompts[0]], GenerationConfig(max_new_tokens=8))
        say("AD (before)")
        ad_before, ad_results = _run(lambda p: generate_ad(target, [p], cfg)[0], prompts)
        context = prompts[0] + ad_results[0].token_ids[:32]
        say("step timings")
        steps = _step_timings(draft, target, context, gammas, repeats)
        t_draft, t_target = steps["draft"], steps["target"]
        sd_rows = []
        for gamma in gammas:
            say(f"SD γ={gamma}")
            t_verify = steps[gamma]
            g_cfg = GenerationConfig(max_new_tokens=max_new_tokens, gamma=gamma, stop_at_eos=False)
            sd_rate, sd_results = _run(lambda p: generate_sd(draft, target, [p], g_cfg)[0], prompts)
            for a, s in zip(ad_results, sd_results):
                if a.token_ids != s.token_ids:
                    raise AssertionError(f"greedy SD output differs from AD at γ={gamma}: losslessness violated")
            sd_rows.append((gamma, t_verify, sd_rate, sd_results))
        say("AD (after)")
        ad_after, _ = _run(lambda p: generate_ad(target, [p], cfg)[0], prompts)
    ad_rate = (ad_before + ad_after) / 2
    return [_row(g, tv, sd, res, ad_rate, t_draft, t_target) for g, tv, sd, res in sd_rows]


def _row(gamma, t_verify, sd_rate, results, ad_rate, t_draft, t_target) -> Row:
    drafted = sum(r.num_draft_tokens for r in results)
    accepted = sum(r.num_accepted_tokens for r in results)
    rounds = sum(r.num_rounds for r in results)
    alpha = accepted / drafted if drafted else 0.0
    per_round = sum(len(r.token_ids) for r in results) / rounds
    c = t_draft / t_target
    bound = per_round * t_target / (gamma * t_draft + t_verify)
    speedup = sd_rate / ad_rate
    return Row(
        gamma=gamma,
        alpha=round(alpha, 4),
        tokens_per_round=round(per_round, 3),
        c=round(c, 4),
        t_draft_s=t_draft,
        t_target_s=t_target,
        t_verify_s=t_verify,
        ad_tokens_per_s=round(ad_rate, 2),
        sd_tokens_per_s=round(sd_rate, 2),
        speedup=round(speedup, 3),
        leviathan_bound=round(leviathan_speedup(min(alpha, 0.9999), gamma, c), 3),
        speedup_bound=round(bound, 3),
        share_of_bound=round(speedup / bound, 3),
    )


def rows_to_json(rows: list[Row]) -> dict:
    best = max(rows, key=lambda r: r.speedup)
    return {
        "benchmark": "sd_vs_ad",
        "best_gamma": best.gamma,
        "best_speedup": best.speedup,
        "best_share_of_bound": best.share_of_bound,
        "expected_tokens_iid": {r.gamma: round(expected_tokens_per_round(min(r.alpha, 0.9999), r.gamma), 3) for r in rows},
        "rows": [asdict(r) for r in rows],
    }
