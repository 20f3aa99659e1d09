#!/usr/bin/env python3
"""Served speculative decoding vs batched AD for 1 to 64 sessions per verifier, predicted by the planner and the simulator from a measured target profile.

Regime: predicted, not measured end to end. One verifier serves N concurrent sessions (N = 1 … 64);
each session drafts on its own edge device (the bundled draft on a CPU, as measured in
examples/profiles/bundled_draft_cpu.json at batch 1: devices draft in parallel) over a LAN-like link
(--latency-ms one way, 100 Mbit/s both ways). Every session has a --input-tokens prompt and
--output-tokens answer, greedy. Figures come from three sources, named in every table and plot:
- target (verifier) step and prefill times: the profile given with --profile (an edgespec-profile/1,
  e.g. a GPU profile written by benchmarks/gpu_forward.py, or examples/profiles/bundled_target_cpu.json);
- draft step times: examples/profiles/bundled_draft_cpu.json (batch-1 row: one device per session);
- acceptance: the bundled pair's measured greedy curve in examples/profiles/bundled_pair_cpu.json
  (per position for the simulator, its fitted i.i.d. α for the planner). With a larger target this
  is a stand-in: a real 7B pair accepts differently.
Planner (edgespec.plan.latency): all N sessions as one batch, AD (γ = 0) and SD at every γ in
1 … --max-gamma, the best γ kept; tokens/s = N · output / (prefill + serve time).
Simulator (edgespec.sim): N drafter nodes with one closed-loop user each, --requests per user, SD
with static γ = the planner's best γ, and server-side AD through the same verifier; tokens/s =
emitted tokens / makespan, and the mean end-to-end latency.
Prints a table, writes a plot (--plot, default gpu_out/predictions/<profile>.png) and ends with one JSON line.
Run: python benchmarks/gpu_predictions.py --profile FILE [--sessions 1,2,4,8,16,32,64] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgespec.plan.latency import batch_breakdown
from edgespec.plan.pairprofile import acceptance_curve, load_pair_profile
from edgespec.plan.profile import Profile, ProfileError, StepTable, load_profile
from edgespec.plan.scenario import LinkSpec, ModelShape, Task, load_scenario
from edgespec.sim.config import DrafterGroup, RequestClass, Workload
from edgespec.sim.costs import NodeCost
from edgespec.sim.links import LinkModel
from edgespec.sim.metrics import summarize
from edgespec.sim.run import simulate
from edgespec.sim.scenario import load_sim_config

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "examples" / "profiles"
BASE_SCENARIO = ROOT / "examples" / "testbed_hetero.toml"  # the bundled pair's nodes, profiles and wire format
PAIR = PROFILES / "bundled_pair_cpu.json"
DRAFT = PROFILES / "bundled_draft_cpu.json"
LAN_BPS = 100e6


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, required=True, help="target step-time profile (edgespec-profile/1)")
    ap.add_argument("--sessions", default="1,2,4,8,16,32,64", help="sessions per verifier, comma-separated")
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--max-gamma", type=int, default=8, help="largest γ tried (the acceptance curve's length at most)")
    ap.add_argument("--latency-ms", type=float, default=2.0, help="one-way link latency, drafter node ↔ verifier")
    ap.add_argument("--requests", type=int, default=4, help="simulated requests per session")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    try:
        args.session_list = sorted({int(s) for s in args.sessions.split(",") if s.strip()})
    except ValueError:
        ap.error("--sessions: must be comma-separated integers")
    if not args.session_list or args.session_list[0] < 1:
        ap.error("--sessions: give positive integers")
    return args


def _per_device(profile: Profile, largest: int) -> Profile:
    """The draft profile with every batch size costing its batch-1 row: each session drafts on a device of its own."""
    row = profile.step.time_s[0]
    sizes = np.array(sorted({1.0, float(largest)}))
    return replace(profile, step=StepTable(sizes, profile.step.tokens, np.tile(row, (len(sizes), 1))), prefill=None)


def _target_shape(profile: Profile, fallback: ModelShape) -> ModelShape:
    """The model shape for the planner's memory check: the profile's recorded Llama shape (random-weight GPU profiles), else the bundled target's."""
    shape = profile.meta.get("shape")
    if not isinstance(shape, dict):
        return fallback
    head_dim = shape["hidden"] // shape["heads"]
    return ModelShape(name=profile.model, n_layers=shape["layers"], hidden=shape["hidden"], ffn_hidden=shape["ffn"], vocab=shape["vocab"],
                      kv_dim=shape["kv_heads"] * head_dim, dtype_bytes=2.0 if profile.dtype in ("bfloat16", "float16") else 4.0,
                      tied_embeddings=bool(shape.get("tie_embeddings", False)))


def _system(args, target: Profile):
    """The planner's serving system: base scenario's wire format, the given target profile, per-device drafting, a LAN link."""
    sc = load_scenario(BASE_SCENARIO)
    draft = _per_device(load_profile(DRAFT), max(args.session_list))
    memory = float(target.meta.get("gpu_memory_bytes", math.inf))
    verifier = replace(sc.system.verifier, name=target.device or "verifier", profile=target, model=_target_shape(target, sc.system.verifier.model),
                       memory_bytes=memory)
    drafter = replace(sc.system.drafter, profile=draft, memory_bytes=math.inf)
    link = LinkSpec(LAN_BPS, LAN_BPS, args.latency_ms / 1e3)
    return replace(sc.system, drafter=drafter, verifier=verifier, link=link), draft


def _plan(system, n: int, args, alpha: float) -> dict:
    """Planner: n sessions in one batch, AD and SD at every γ; tokens/s of each and the best γ."""
    tasks = [Task(i, args.input_tokens, args.output_tokens, alpha, 0.0) for i in range(n)]
    tokens = n * args.output_tokens
    ad = batch_breakdown(system, tasks, 0, False)
    sd = {g: batch_breakdown(system, tasks, g, False) for g in range(1, args.max_gamma + 1)}
    best = min(sd, key=lambda g: sd[g].total_s)
    return {"ad_tok_s": tokens / ad.total_s, "sd_tok_s": tokens / sd[best].total_s, "gamma": best,
            "speedup": ad.total_s / sd[best].total_s, "verify_over_decode": sd[best].verify_compute_s / sd[best].rounds
            / (ad.verify_compute_s / ad.rounds)}


def _simulate(base, system, draft: Profile, n: int, gamma: int, mode: str, args) -> dict:
    """Simulator: n drafter nodes × 1 closed-loop user, `requests` each, SD at static γ or server-side AD."""
    link = LinkModel(LAN_BPS, args.latency_ms / 1e3)
    cfg = replace(
        base,
        classes=(RequestClass("code", args.input_tokens, args.output_tokens),),
        drafters=(DrafterGroup("device", n, link, link),),
        draft_cost=NodeCost(replace(system.drafter, profile=draft)),
        verify_cost=NodeCost(system.verifier),
        workload=Workload(kind="closed", users_per_node=1, requests_per_user=args.requests),
        speculation=replace(base.speculation, mode=mode, gamma_policy="static", gamma=gamma, max_gamma=max(gamma, 1)),
        seed=args.seed,
    )
    report = summarize(simulate(cfg))
    return {"tok_s": report.throughput_tok_per_s, "e2e_mean_s": report.e2e_s.mean, "acceptance": report.acceptance}


def _plot(rows: list[dict], path: Path, sources: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["sessions"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for key, label, style in (("plan_ad_tok_s", "AD, planner", "--"), ("plan_sd_tok_s", "SD, planner", "-"),
                              ("sim_ad_tok_s", "AD, simulator", ":"), ("sim_sd_tok_s", "SD, simulator", "-.")):
        left.plot(n, [r[key] for r in rows], style, marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="sessions per verifier", ylabel="tokens/s (all sessions)", title="throughput")
    left.set_xticks(n, [str(v) for v in n])
    left.legend(fontsize=8)
    right.plot(n, [r["plan_speedup"] for r in rows], "-", marker="o", label="planner (best γ)")
    right.plot(n, [r["sim_speedup"] for r in rows], "-.", marker="s", label="simulator (planner's γ)")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(xscale="log", xlabel="sessions per verifier", ylabel="SD tokens/s ÷ AD tokens/s", title="where SD pays")
    right.set_xticks(n, [str(v) for v in n])
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap("Sources — " + sources, 190)), fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    args = _parse()
    started = time.perf_counter()
    try:
        target = load_profile(args.profile)
    except (OSError, ProfileError) as exc:
        print(f"error: --profile: cannot use {args.profile}: {exc}", file=sys.stderr)
        return 2
    curve = acceptance_curve(load_pair_profile(PAIR), "tokens", 0.0)
    max_gamma = min(args.max_gamma, curve.max_gamma)
    args.max_gamma = max_gamma
    system, draft = _system(args, target)
    base = load_sim_config(BASE_SCENARIO)
    base = replace(base, speculation=replace(base.speculation, acceptance=curve.per_position))
    measured = "MEASURED" if not target.meta.get("synthetic") else "SYNTHETIC (not measured)"
    sources = (f"target: {args.profile.name} ({target.device}, {target.model}, {target.dtype}, context {target.context_tokens}, {measured}); "
               f"draft: {DRAFT.name} (batch-1 row, one device per session); acceptance: {PAIR.name} greedy curve (α {curve.alpha:.3f}); "
               f"link {args.latency_ms:g} ms, {LAN_BPS / 1e6:g} Mbit/s; {args.input_tokens} in / {args.output_tokens} out tokens")
    rows = []
    for n in args.session_list:
        plan = _plan(system, n, args, curve.alpha)
        sim_sd = _simulate(base, system, draft, n, plan["gamma"], "sd", args)
        sim_ad = _simulate(base, system, draft, n, 0, "ad", args)
        rows.append({"sessions": n, "gamma": plan["gamma"], "plan_ad_tok_s": plan["ad_tok_s"], "plan_sd_tok_s": plan["sd_tok_s"],
                     "plan_speedup": plan["speedup"], "plan_verify_over_decode": plan["verify_over_decode"],
                     "sim_ad_tok_s": sim_ad["tok_s"], "sim_sd_tok_s": sim_sd["tok_s"], "sim_speedup": sim_sd["tok_s"] / sim_ad["tok_s"],
                     "sim_sd_e2e_s": sim_sd["e2e_mean_s"], "sim_ad_e2e_s": sim_ad["e2e_mean_s"], "sim_acceptance": sim_sd["acceptance"]})
    title = f"Served SD vs batched AD per verifier — target {target.model} on {target.device} ({target.dtype})"
    table = Table(title=title, caption=sources)
    for col in ("sessions", "γ*", "t_v(γ*+1)/t_v(1)", "plan AD tok/s", "plan SD tok/s", "plan SD/AD", "sim AD tok/s", "sim SD tok/s",
                "sim SD/AD", "sim SD e2e s", "sim AD e2e s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["sessions"]), str(r["gamma"]), f"{r['plan_verify_over_decode']:.2f}", f"{r['plan_ad_tok_s']:.0f}",
                      f"{r['plan_sd_tok_s']:.0f}", f"{r['plan_speedup']:.2f}×", f"{r['sim_ad_tok_s']:.0f}", f"{r['sim_sd_tok_s']:.0f}",
                      f"{r['sim_speedup']:.2f}×", f"{r['sim_sd_e2e_s']:.2f}", f"{r['sim_ad_e2e_s']:.2f}")
    Console(width=200, highlight=False).print(table)
    plot = args.plot or ROOT / "gpu_out" / "predictions" / f"{args.profile.stem}.png"
    _plot(rows, plot, sources, title)
    pays = [r["sessions"] for r in rows if r["sim_speedup"] > 1.0]
    print(json.dumps({"benchmark": "gpu_predictions", "profile": str(args.profile), "sources": sources, "plot": str(plot),
                      "sd_pays_up_to_sessions": max(pays) if pays else 0, "rows": [{k: (round(v, 4) if isinstance(v, float) else v)
                                                                                  for k, v in r.items()} for r in rows],
                      "wall_s": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
