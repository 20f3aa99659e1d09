#!/usr/bin/env python3
"""Acceptance of top-K q against full q, computed exactly at every position of the target's own sampled answers (no sampling noise in the acceptance itself).

Regime: in-process, a pair (`--pair`: bundled or smollm2; smollm2 on its 12 held-back instructions through
the chat template), both models on this CPU in their default dtypes, temperature `--temperature` (1), no
top-k/top-p. For each prompt, `--samples` answers of `--max-tokens` tokens sampled from the target
(AD, seeds 0..S−1; EOS ends an answer). Each answer is then teacher-forced through both models: at every
answer position the target's p and the draft's q (both under the same sampling settings), and for every
encoding the probability that rejection sampling accepts the draft's token there (DESIGN §3):
- full q: Σ_x min(p(x), q(x)) = 1 − TV(p, q);
- top-K q (what the drafter node sends, `edgespec.spec.sampling.sparsify_topk`: the draft samples from its
  K most likely tokens renormalised, and that q' travels): Σ_{x in top-K} min(p(x), q'(x));
- tokens only (one-hot q, the sampled token): Σ_x q'(x) p(x) with q' the draft's own distribution.
Positions follow the target's distribution, as the accepted prefix of a round does. The issue-16 figure
"acceptance within 5 % of full q's" is the relative difference of the mean per-position acceptance,
paired on the same positions, with a standard error over answers (clusters). Also shown: the block
acceptance rate (accepted / drafted, vLLM's) that this per-token acceptance gives at γ = `--gamma` under
Leviathan's i.i.d. model, and an upper bound of the draft payload per drafted token from the wire format
(every id as a varint of the vocabulary's size, fp16 probabilities; benchmarks/uplink_bytes.py measures
the real messages) against full q's V fp16 values.

Prints a rich table; the last line of stdout is one JSON object.
Run: .venv/bin/python benchmarks/topk_acceptance.py [--pair smollm2] [--samples 4] [--max-tokens 48] [--ks 1,4,8,16,64]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch


def per_position(p: torch.Tensor, q: torch.Tensor, ks: list[int]) -> dict[str, torch.Tensor]:
    """Acceptance probability at each position [N] for full q, each top-K q' and tokens-only, from p, q [N, V]."""
    from edgespec.spec.sampling import sparsify_topk

    out = {"full": torch.minimum(p, q).sum(-1)}
    for k in ks:
        ids, kept = sparsify_topk(q, k)  # [N, K], q' renormalised over the K ids
        out[f"top-{k}"] = torch.minimum(p.gather(-1, ids), kept).sum(-1)
    out["tokens"] = (p * q).sum(-1)  # x ~ q, accepted with probability p(x)
    return out


def block_rate(alpha: float, gamma: int) -> float:
    """accepted / drafted at static γ when each token is accepted with probability α independently (stops at the first rejection)."""
    return sum(alpha**i for i in range(1, gamma + 1)) / gamma


def wire_bytes(mode: str, vocab: int) -> float:
    """Draft payload bytes per drafted token, the planner's wire model (`edgespec.plan.latency.draft_bytes_per_token`) with every id
    as a varint of the vocabulary's size and fp16 probabilities: an upper bound of what protobuf sends."""
    from edgespec.plan.latency import draft_bytes_per_token
    from edgespec.plan.scenario import SpecConfig

    id_bytes = max(1, math.ceil(vocab.bit_length() / 7))
    k = int(mode.removeprefix("top-")) if mode.startswith("top-") else 8
    q_mode = {"tokens": "ids"}.get(mode, "topk" if mode.startswith("top-") else mode)
    return draft_bytes_per_token(SpecConfig(alpha=0.0, q_mode=q_mode, top_k=k, id_bytes=id_bytes, prob_bytes=2.0), vocab)


def main() -> None:
    from _serving import add_pair_argument, machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pair_argument(ap)
    ap.add_argument("--samples", type=int, default=4, help="answers sampled per prompt")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--ks", default="1,4,8,16,64")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.samples < 2 or args.max_tokens < 2 or args.temperature <= 0:
        ap.error("need --samples >= 2, --max-tokens >= 2 and --temperature > 0")
    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    from edgespec.bench.sd_vs_ad import pair_prompts
    from edgespec.models.catalog import pair_dirs
    from edgespec.models.decoder import GenerationConfig, generate_ad
    from edgespec.models.runtime import CausalLM
    from edgespec.spec.sampling import SamplingParams, probs_from_logits

    started = time.perf_counter()
    ks = [int(k) for k in args.ks.split(",")]
    draft_dir, target_dir = pair_dirs(args.pair)
    draft, target = CausalLM.load(draft_dir), CausalLM.load(target_dir)
    params = SamplingParams(temperature=args.temperature)
    prompts = pair_prompts(target, args.pair)
    answers: list[dict[str, torch.Tensor]] = []  # per answer: mode -> [N] acceptance per position
    with torch.inference_mode():
        for seed in range(args.samples):
            cfg = GenerationConfig(max_new_tokens=args.max_tokens, sampling=params, seed=seed)
            for prompt, result in zip(prompts, generate_ad(target, prompts, cfg)):
                tokens = list(prompt) + result.token_ids
                n = len(result.token_ids)
                # p and q at each answer position: the logits of positions len(prompt) − 1 … len(tokens) − 2
                p = probs_from_logits(target.forward(target.new_kv(1), [tokens[:-1]], [n]), params)  # [n, V]
                q = probs_from_logits(draft.forward(draft.new_kv(1), [tokens[:-1]], [n]), params)  # [n, V]
                answers.append(per_position(p, q, ks))
            print(f"· {len(answers)} answers", flush=True)
    modes = list(answers[0])
    positions = sum(len(a["full"]) for a in answers)
    mean = {m: float(torch.cat([a[m] for a in answers]).mean()) for m in modes}
    # the paired relative difference to full q, its standard error over answers (ratio estimator, clusters = answers)
    rows = []
    full_sums = torch.tensor([float(a["full"].sum()) for a in answers])
    counts = torch.tensor([float(len(a["full"])) for a in answers])
    for m in modes:
        sums = torch.tensor([float(a[m].sum()) for a in answers])
        rel = float(sums.sum() / full_sums.sum()) - 1.0
        resid = (sums - (1.0 + rel) * full_sums) / (full_sums.sum() / len(answers))  # linearised ratio, per answer
        se = float(resid.std() / math.sqrt(len(answers)))
        rows.append({"q": m, "acceptance_per_token": round(mean[m], 4), "vs_full": round(rel, 4), "vs_full_se": round(se, 4),
                     "block_rate": round(block_rate(mean[m], args.gamma), 4),
                     "block_rate_vs_full": round(block_rate(mean[m], args.gamma) / block_rate(mean["full"], args.gamma) - 1.0, 4),
                     "wire_bytes_per_token": wire_bytes(m, target.vocab_size),
                     "wire_share_of_full": round(wire_bytes(m, target.vocab_size) / wire_bytes("full", target.vocab_size), 6)})
    table = Table(title=f"Acceptance per position by q on the wire, exact along the target's sampled answers ({args.pair} pair, V = {target.vocab_size}, "
                        f"T = {args.temperature:g}, {len(answers)} answers, {positions} positions)")
    for col in ("q", "acceptance / token", "vs full", "± s.e.", f"accepted/drafted at γ={args.gamma}", "vs full", "payload B/token ≤", "% of full"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["q"], f"{r['acceptance_per_token']:.4f}", f"{100 * r['vs_full']:+.2f} %", f"{100 * r['vs_full_se']:.2f}",
                      f"{r['block_rate']:.4f}", f"{100 * r['block_rate_vs_full']:+.2f} %", f"{r['wire_bytes_per_token']:.0f}",
                      f"{100 * r['wire_share_of_full']:.3f} %")
    Console(width=200).print(table)
    top8 = next((r for r in rows if r["q"] == "top-8"), None)
    if top8 is not None:
        print(f"top-8: acceptance per token {100 * top8['vs_full']:+.2f} % ± {100 * top8['vs_full_se']:.2f} vs full q (issue 16: within 5 %), "
              f"accepted/drafted at γ={args.gamma} {100 * top8['block_rate_vs_full']:+.2f} %; wire {100 * top8['wire_share_of_full']:.3f} % of full q's bytes (≤ 1 %)")
    print(json.dumps({"benchmark": "topk_acceptance", "pair": args.pair, "temperature": args.temperature, "gamma": args.gamma,
                      "answers": len(answers), "positions": positions, "rows": rows, "machine": machine(),
                      "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
