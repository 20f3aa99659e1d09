"""Benchmark: in-process speculative vs autoregressive decoding of a draft/target pair on this CPU, with the parts that bound it.

Regime: one sequence at a time (batch 1), temperature 0, the models' device and dtype (float32 on the
CPU by default; a draft may keep the CPU dtype its edgespec.json names), the pair's prompts (short code
openings for the bundled pair, held-back instructions through the chat template for an instruct pair), a
fixed token budget; both modes pay the same prefill. On a GPU a step is timed from an idle device to the
end of its last kernel (`edgespec.models.device.timed_s`). For each γ it measures, in one run:
- α (accepted / drafted, vLLM's acceptance rate), the mean tokens E emitted per round, and α_token,
  the per-token acceptance of Leviathan's i.i.d. model that gives the same E;
- t_draft (one draft decode step), t_target (one target decode step), t_verify(γ) (one target pass
  over γ + 1 tokens), each the median of repeated steps at the prompts' context length;
- AD and SD tokens/s and the measured speedup;
- Leviathan's bound E/(γc + 1) with c = t_draft/t_target (assumes a verify pass costs one decode
  step), and the zero-overhead bound E·t_target/(γ·t_draft + t_verify(γ)) built from the measured
  parts; measured/bound is the share of the achievable speedup that survives framework overhead
  (sampling, verification, cache crops). The gap between the two bounds is t_verify(γ) − t_target.
AD, SD and the step timings run in alternating passes so machine noise falls on all of them alike.
Every SD output is checked against AD's: identical in float32; in bfloat16/float16 identical or parting
at a rounding tie of the target's logits (`edgespec.models.numerics`), counted per γ (`identical`, `ties`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch

from edgespec.models.decoder import GenerationConfig, GenerationResult, generate_ad, generate_sd
from edgespec.bench.prompts import PROMPTS, prompts_for
from edgespec.models.device import timed_s
from edgespec.models.numerics import divergence
from edgespec.models.prompting import encode_chat, encode_text
from edgespec.models.runtime import CausalLM
from edgespec.spec.theory import fit_alpha



def prompt_ids(lm: CausalLM, texts: Sequence[str] = PROMPTS, chat: bool = False) -> list[list[int]]:
    """The prompts as token ids, as the API and the drafter's HTTP API encode them (text: the tokenizer's defaults; chat: its template)."""
    if chat:
        return [encode_chat(lm.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    return [encode_text(lm.tokenizer, t) for t in texts]


def pair_prompts(lm: CausalLM, pair: str) -> list[list[int]]:
    """The prompts that suit a named pair: code openings for the bundled pair, held-back instructions (chat) for an instruct pair."""
    from edgespec.models.catalog import pair_spec

    chat = pair_spec(pair).chat
    return prompt_ids(lm, prompts_for(chat), chat=chat)


@dataclass(frozen=True)
class Row:
    gamma: int
    alpha: float
    alpha_token: float
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
    identical: int = 0  # SD outputs equal to AD's token for token (over prompts × passes)
    ties: int = 0  # reduced precision only: outputs that part from AD's at a rounding tie of the target's logits


def _step_samples(draft: CausalLM, target: CausalLM, context: list[int], gammas: Sequence[int], repeats: int) -> dict:
    """Seconds of `repeats` forwards of each kind, interleaved so machine noise hits all of them alike.

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
            samples[key].append(timed_s(lambda: lm.forward(kv, [context[-n:]], [n]), lm.device))
            lm.crop(kv, 0, len(context))
    return samples


def run(
    draft: CausalLM,
    target: CausalLM,
    gammas: Sequence[int] = (1, 2, 3, 4, 5, 6, 8),
    max_new_tokens: int = 96,
    repeats: int = 24,
    passes: int = 3,
    progress: Optional[Callable[[str], None]] = None,
    prompts: Optional[Sequence[Sequence[int]]] = None,
) -> list[Row]:
    """Measure every γ; returns one row per γ.

    The measurement is split into `passes` passes, each running AD, SD at every γ and a slice of
    the step timings in turn, so that machine noise (2 shared cores) lands on all of them alike:
    rates are total tokens over total wall time across passes, step times medians over all passes.
    """
    say = progress or (lambda _msg: None)
    prompts = [list(p) for p in prompts] if prompts is not None else prompt_ids(target)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_at_eos=False)
    ad = _Tally()
    sd = {g: _Tally() for g in gammas}
    samples: dict = {}
    with torch.inference_mode():
        say("warm-up")
        generate_sd(draft, target, [prompts[0]], GenerationConfig(max_new_tokens=8))
        for k in range(passes):
            # 1. AD, the reference output of this pass
            say(f"pass {k + 1}/{passes}: AD")
            ad_results = ad.add(lambda p: generate_ad(target, [p], cfg)[0], prompts)
            # 2. SD at every γ, checked token for token against AD
            for gamma in gammas:
                say(f"pass {k + 1}/{passes}: SD γ={gamma}")
                g_cfg = GenerationConfig(max_new_tokens=max_new_tokens, gamma=gamma, stop_at_eos=False)
                sd_results = sd[gamma].add(lambda p: generate_sd(draft, target, [p], g_cfg)[0], prompts)
                for p, a, s in zip(prompts, ad_results, sd_results):
                    sd[gamma].check(target, gamma, p, a.token_ids, s.token_ids)
            # 3. a slice of the step timings
            say(f"pass {k + 1}/{passes}: step timings")
            context = prompts[0] + ad_results[0].token_ids[:32]
            for key, values in _step_samples(draft, target, context, gammas, max(1, repeats // passes)).items():
                samples.setdefault(key, []).extend(values)
    steps = {key: statistics.median(v) for key, v in samples.items()}
    return [_row(g, steps[g], sd[g], ad.rate, steps["draft"], steps["target"]) for g in gammas]


class _Tally:
    """Tokens, wall time and results of repeated generation runs, and how SD's outputs compare with AD's."""

    def __init__(self) -> None:
        self.tokens, self.wall_s, self.results = 0, 0.0, []
        self.identical, self.ties = 0, 0

    def check(self, target: CausalLM, gamma: int, prompt: Sequence[int], ad_ids: list[int], sd_ids: list[int]) -> None:
        """Greedy SD must equal AD token for token; in bfloat16/float16 it may part from AD at a rounding tie of the target's
        logits (`edgespec.models.numerics`), never elsewhere. AssertionError otherwise."""
        if ad_ids == sd_ids:
            self.identical += 1
            return
        if target.dtype == torch.float32:
            raise AssertionError(f"greedy SD output differs from AD at γ={gamma} (float32): losslessness violated")
        d = divergence(target, prompt, ad_ids, sd_ids)
        if not d.tie:
            raise AssertionError(f"greedy SD output differs from AD at γ={gamma}, token {d.index}: AD's token {d.reference_token} leads SD's "
                                 f"{d.other_token} by {d.gap:.4g} logits, more than {target.dtype} rounding ({d.tolerance:.3g}): losslessness violated")
        self.ties += 1

    def add(self, fn: Callable[[Sequence[int]], GenerationResult], prompts: list[list[int]]) -> list[GenerationResult]:
        results = [fn(p) for p in prompts]
        self.results += results
        self.tokens += sum(len(r.token_ids) for r in results)
        self.wall_s += sum(r.wall_s for r in results)
        return results

    @property
    def rate(self) -> float:
        return self.tokens / self.wall_s


def _row(gamma: int, t_verify: float, sd: "_Tally", ad_rate: float, t_draft: float, t_target: float) -> Row:
    drafted = sum(r.num_draft_tokens for r in sd.results)
    accepted = sum(r.num_accepted_tokens for r in sd.results)
    rounds = sum(r.num_rounds for r in sd.results)
    per_round = sd.tokens / rounds
    c = t_draft / t_target
    speedup = sd.rate / ad_rate
    bound = per_round * t_target / (gamma * t_draft + t_verify)
    return Row(
        gamma=gamma,
        alpha=round(accepted / drafted if drafted else 0.0, 4),
        alpha_token=round(fit_alpha(per_round, gamma), 4),
        tokens_per_round=round(per_round, 3),
        c=round(c, 4),
        t_draft_s=t_draft,
        t_target_s=t_target,
        t_verify_s=t_verify,
        ad_tokens_per_s=round(ad_rate, 2),
        sd_tokens_per_s=round(sd.rate, 2),
        speedup=round(speedup, 3),
        leviathan_bound=round(per_round / (gamma * c + 1), 3),
        speedup_bound=round(bound, 3),
        share_of_bound=round(speedup / bound, 3),
        identical=sd.identical,
        ties=sd.ties,
    )


def rows_to_json(rows: list[Row]) -> dict:
    best = max(rows, key=lambda r: r.speedup)
    return {
        "benchmark": "sd_vs_ad",
        "best_gamma": best.gamma,
        "best_speedup": best.speedup,
        "best_share_of_bound": best.share_of_bound,
        "rows": [asdict(r) for r in rows],
    }
