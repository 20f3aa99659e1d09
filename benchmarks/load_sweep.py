"""Served speculative decoding against batched AD as the load grows: AD, static γ and the load-aware default policy through the real nodes, with the simulator's prediction beside each row.

Regime: the bundled pair (draft 1.5M, target 23M parameters, vocab 8192, float32, CPU; --pair smollm2 for the real one) served for real:
one verifier node (`edgespec.server`) in a process of its own pinned to the last core (`taskset`-style
affinity, one torch thread), one drafter node (`edgespec.edge`) and the clients in this process pinned
to the other core(s), protobuf over WebSocket on 127.0.0.1. Greedy decoding, top-K q mode (temperature
0 sends tokens only), no pipelining. At each load S (closed loop: S clients each send requests of
`--max-tokens` new tokens back to back, EOS ignored, for `--duration-s`, through the drafter engine —
the code path behind the OpenAI API, the HTTP hop left out) three drafter nodes take turns against the
same verifier, so machine drift hits them alike:
- `ad`: γ = 0 every round, i.e. autoregressive decoding served by the verifier in batches;
- `static`: γ = `--gamma` every round (4);
- `adaptive`: the drafter node's default policy (the speculation gate's own model: the γ with the least
  predicted time per token, γ = 0 where the verifier's announced forward-time model says speculating
  loses at this load; docs/policies.md).

Reported per (S, policy): completion tokens/s, ratio to AD at the same S, p50/p99 latency per token
(each request's wall time / its completion tokens), mean γ (drafted tokens / rounds), acceptance,
the share of AD rounds, and the simulator's predicted ratio to AD for the same setup: a scenario with
the pair's profile (`--profile`: a serving profile from `edgespec profile --serving --batch-sizes 1,2,4,8,16,24`,
such as examples/profiles/bundled_pair_cpu_serving.json, brings the framework terms of serving nodes at the sweep's batches; default a quick bare profile measured here at the start, in the
verifier's pinning) and the same sessions, γ and policies, run by `edgespec.sim` with the very policy objects.

Prints a rich table and the crossover; the last line of stdout is JSON: a list of rows with the keys
`sessions`, `policy` (`ad`, `static`, `adaptive`), `tokens_per_s`, `ratio_to_ad`, `p50_ms_per_token`,
`mean_gamma`, `predicted_ratio_to_ad` (and more).
Run: .venv/bin/python benchmarks/load_sweep.py [--quick] [--sessions 1,2,4,8,16,24] [--duration-s 8] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from _serving import (VerifierProcess, Workload, add_pair_argument, edge_config, edge_nodes, load_draft, machine, pair_prompts, pin,
                      run_workload, split_cpus)

POLICIES = ("ad", "static", "adaptive")
SESSIONS = (1, 2, 4, 8, 16, 24)
QUICK_SESSIONS = (1, 24)


def policy_settings(policy: str, gamma: int) -> dict:
    """EdgeConfig settings of the drafter node that runs `policy`."""
    if policy == "ad":
        return {"gamma_policy": "static", "gamma": 0, "max_gamma": 0}
    if policy == "static":
        return {"gamma_policy": "static", "gamma": gamma, "max_gamma": gamma}
    return {"gamma_policy": "adaptive", "gamma": gamma, "max_gamma": 2 * gamma}


def _percentile_ms(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return 1000.0 * ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure(args, draft, verifier: VerifierProcess) -> list[dict]:
    prompts = pair_prompts(draft, args.pair)
    configs = {policy: edge_config(verifier.address, node_id=f"edge-{policy}", **policy_settings(policy, args.gamma)) for policy in POLICIES}
    rows = []
    async with edge_nodes(configs, draft, prompts) as nodes:
        for s in args.sessions:
            for policy in POLICIES:
                before = verifier.stats()
                m = await run_workload(nodes[policy].engine, prompts, Workload(s, args.duration_s, args.max_tokens))
                after = verifier.stats()
                batches = after["batches"] - before["batches"]
                row = {"sessions": s, "policy": policy, "tokens_per_s": m.tokens_per_s, "requests": m.requests,
                       "completion_tokens": m.completion_tokens, "wall_s": m.wall_s,
                       "p50_ms_per_token": _percentile_ms(m.per_token_s, 0.5), "p99_ms_per_token": _percentile_ms(m.per_token_s, 0.99),
                       "mean_gamma": m.drafted / m.rounds if m.rounds else 0.0, "acceptance_rate": m.acceptance,
                       "ad_round_share": m.ad_rounds / m.rounds if m.rounds else 0.0,
                       "mean_batch_drafts": (after["batch_drafts"] - before["batch_drafts"]) / batches if batches else 0.0,
                       "verifier_cores": (after["cpu_s"] - before["cpu_s"]) / m.wall_s, "drafter_cores": m.drafter_cpu_s / m.wall_s}
                rows.append(row)
                print(f"  S={s:>2} {policy:>8}: {row['tokens_per_s']:7.1f} tok/s  mean γ {row['mean_gamma']:.2f}  "
                      f"p50 {row['p50_ms_per_token']:.1f} ms/token  batch {row['mean_batch_drafts']:.1f}", flush=True)
    for row in rows:
        ad = next(r for r in rows if r["sessions"] == row["sessions"] and r["policy"] == "ad")
        row["ratio_to_ad"] = row["tokens_per_s"] / ad["tokens_per_s"] if ad["tokens_per_s"] else None
    return rows


# ----------------------------------------------------------------------------- the simulator's prediction


def predict(rows: list[dict], args, profile: Path, draft_lm, target_lm, prompts) -> None:
    """Add `predicted_tokens_per_s` and `predicted_ratio_to_ad` to every row: the same setup in `edgespec.sim`, mean of seeds."""
    import dataclasses

    from _fidelity import write_scenario
    from edgespec.sim.metrics import summarize
    from edgespec.sim.run import simulate
    from edgespec.sim.scenario import load_sim_config

    lengths = sorted({len(p) for p in prompts})
    predicted: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in sorted({r["sessions"] for r in rows}):
            path = write_scenario(Path(tmp) / f"s{s}.toml", name=f"load-sweep-{s}", pair_profile=profile.resolve(), draft_lm=draft_lm,
                                  target_lm=target_lm, prompt_lengths=lengths, max_tokens=args.max_tokens, sessions=s,
                                  requests=max(4 * s, 16), gamma=args.gamma, window_s=args.batch_window_ms / 1000.0, latency_s=0.0,
                                  alpha=0.7)
            for policy in POLICIES:
                settings = policy_settings(policy, args.gamma)
                tps = []
                for seed in range(args.sim_seeds):
                    cfg = load_sim_config(path, seed=seed)
                    spec = dataclasses.replace(cfg.speculation, gamma_policy=settings["gamma_policy"], gamma=settings["gamma"],
                                               max_gamma=settings["max_gamma"])
                    tps.append(summarize(simulate(dataclasses.replace(cfg, speculation=spec))).throughput_tok_per_s)
                predicted[s, policy] = statistics.fmean(tps)
    for row in rows:
        row["predicted_tokens_per_s"] = predicted[row["sessions"], row["policy"]]
        ad = predicted[row["sessions"], "ad"]
        row["predicted_ratio_to_ad"] = row["predicted_tokens_per_s"] / ad if ad else None
        if row.get("ratio_to_ad") and row["predicted_ratio_to_ad"]:
            row["prediction_error"] = row["predicted_ratio_to_ad"] / row["ratio_to_ad"] - 1.0


# ----------------------------------------------------------------------------- report


def crossover(rows: list[dict], policy: str) -> Optional[int]:
    """The smallest load at which `policy` no longer beats AD (ratio < 1), or None if it beats AD at every load."""
    for row in sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["sessions"]):
        if row["ratio_to_ad"] is not None and row["ratio_to_ad"] < 1.0:
            return row["sessions"]
    return None


def show(rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    pinned = "verifier pinned to its own core" if args.pin else "no pinning"
    t = Table(title=f"Load sweep: served SD vs batched AD ({args.pair} pair, greedy, static γ={args.gamma}, {pinned}, {args.duration_s:g} s per point)")
    for col in ("sessions", "policy", "tok/s", "vs AD", "predicted vs AD", "p50 ms/token", "p99 ms/token", "mean γ", "AD rounds",
                "acceptance", "batch"):
        t.add_column(col, justify="right")
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        t.add_row(str(r["sessions"]), r["policy"], f"{r['tokens_per_s']:.1f}", fmt(r["ratio_to_ad"], ".2f") + "×",
                  fmt(r.get("predicted_ratio_to_ad"), ".2f") + ("×" if r.get("predicted_ratio_to_ad") else ""),
                  fmt(r["p50_ms_per_token"], ".1f"), fmt(r["p99_ms_per_token"], ".1f"), f"{r['mean_gamma']:.2f}",
                  f"{100 * r['ad_round_share']:.0f}%", f"{r['acceptance_rate']:.2f}", f"{r['mean_batch_drafts']:.1f}")
    console.print(t)
    for policy in ("static", "adaptive"):
        c = crossover(rows, policy)
        console.print(f"{policy}: " + ("beats AD at every load measured" if c is None else f"first below AD at {c} sessions"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"sessions {', '.join(map(str, QUICK_SESSIONS))} only")
    parser.add_argument("--sessions", default=",".join(map(str, SESSIONS)), help="comma-separated loads (concurrent sessions)")
    parser.add_argument("--duration-s", type=float, default=8.0, help="closed-loop time per (load, policy)")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per request")
    parser.add_argument("--gamma", type=int, default=4, help="γ of the static policy (and the adaptive one's start)")
    parser.add_argument("--batch-window-ms", type=float, default=0.0, help="the verifier's batching window (its default)")
    parser.add_argument("--profile", type=Path, default=None, help="pair profile for the prediction (default: measure a quick one)")
    parser.add_argument("--no-predict", dest="predict", action="store_false", help="skip the simulator's prediction")
    parser.add_argument("--sim-seeds", type=int, default=5, help="simulator runs per prediction (mean)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin the verifier and the drafter to separate cores")
    add_pair_argument(parser)
    parser.add_argument("--rows", type=Path, default=None,
                        help="take the measured rows from an earlier run's output (its JSON last line) and only predict")
    args = parser.parse_args(argv)
    args.sessions = list(QUICK_SESSIONS) if args.quick else [int(x) for x in args.sessions.split(",") if x.strip()]

    t0 = time.perf_counter()
    verifier_cpus, other_cpus = split_cpus() if args.pin else (None, None)
    pin(other_cpus)
    draft = load_draft(1, args.pair)
    prompts = pair_prompts(draft, args.pair)
    profile = args.profile
    if args.predict and profile is not None:  # a bad profile fails now, not after the measurement
        from edgespec.plan.pairprofile import load_pair_profile

        load_pair_profile(profile)
    if args.predict and profile is None:
        profile = measure_quick_profile(draft, prompts, verifier_cpus, args.pair)
    if args.rows is not None:
        earlier = json.loads(args.rows.read_text(encoding="utf-8").strip().splitlines()[-1])
        rows = [r for r in earlier["rows"] if r["sessions"] in args.sessions]
    else:
        with VerifierProcess(1, verifier_cpus, pair=args.pair, batch_window_ms=args.batch_window_ms, max_gamma=2 * args.gamma) as verifier:
            rows = asyncio.run(measure(args, draft, verifier))
    if args.predict:
        from edgespec.models.catalog import pair_dirs
        from edgespec.models.runtime import CausalLM

        predict(rows, args, profile, draft, CausalLM.load(pair_dirs(args.pair)[1]), prompts)
    show(rows, args)
    print(json.dumps({"benchmark": "load_sweep", "pair": args.pair, "quick": args.quick, "gamma": args.gamma, "max_tokens": args.max_tokens,
                      "duration_s": args.duration_s, "pinned": args.pin, "profile": str(profile) if profile else None,
                      "machine": machine(), "total_s": time.perf_counter() - t0, "rows": rows}))
    return 0


def measure_quick_profile(draft, prompts, cpus, pair: str = "bundled") -> Path:
    """A quick pair profile of the pair, measured in a child pinned like the verifier (one torch thread)."""
    import subprocess

    out = Path(tempfile.mkdtemp(prefix="load-sweep-")) / "pair_profile.json"
    cmd = [sys.executable, "-m", "edgespec.cli", "profile", "--out", str(out), "--quick", "--threads", "1", "--pair", pair]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] + cmd
    print(f"· measuring a quick pair profile ({' '.join(cmd[-6:])})", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
