"""γ policies and verifier batching policies compared in the simulator across load, RTT and heterogeneity sweeps.

Regime: simulated. Every figure comes from `edgespec.sim` (discrete-event, the real policy objects),
costed by examples/sim_tiny.toml's roofline model: LLaMA-68M drafts on RTX-3080-class devices
(× each group's slowdown), LLaMA-2-7B verifies on one A100-class node; links with latency, 10 %
jitter, and the groups' uplink rates; acceptance i.i.d. per drafter group (α) or per task. Not a
measurement on hardware. Same seeds for every policy (common random numbers): the acceptance draws,
arrivals and link jitter a policy sees are the same as every other policy's.

Sweeps (128-token prompts and answers unless said; max γ 12 for every adaptive policy):
- load: the two-group "mixed" deployment (8 near-fast nodes α 0.55, 3 ms; 8 far-slow nodes α 0.85,
  40 ms, 4× slower device, 5 Mbit/s uplink), Poisson at 3, 6 and 9 requests/s;
- RTT: 16 alike nodes (α 0.7, 2× slower device), Poisson 6/s, one-way latency 2, 20 and 60 ms;
- heterogeneity (closed loop, 2 users per node, think 0.5 s): alike nodes; "mixed"; "3tier"
  (fast/near/α 0.45, mid, slow-IoT/satellite-like 80 ms/α 0.9); and examples/sim_tiny.toml (two tasks
  with α 0.7 and 0.85, near and far-slow nodes). The closed-loop runs come twice: "closed" issues
  `--requests` in all, each to whichever user finishes first (a policy that speeds up slow users lets
  them issue more of the total, so policies serve different requests); "closed, per user" gives every
  user the same share (`requests_per_user` = requests / 32, each request's class, think time and
  acceptance from that user's own streams), so every policy serves the same requests.
γ policies: static γ = 1…12 (the table shows 2, 4, 6, 8 and the best single static γ of each
scenario, chosen after the fact), the +2/−1 heuristic, SLED's confidence threshold (0.3), ODLD,
goodput (SmartSpec-like), AWC's analytic fallback with every session learning alone (awc_solo: no
drafter-node pool, no shared γ), the fallback (awc_analytic) and AWC with the shipped
learned correction (awc). Batching: window 0 / 2 / 10 ms, window 2 ms capped at 4 or 16 drafts per
batch, max batching (dispatch when the verifier is free), and the planner's DP plan over the queued
drafts (edgespec.policy.batching.DpBatching, `batching = "dp"`: replanned at every decision over the
oldest 16 queued drafts with the latency model of the run's nodes and the groups' mean link; the
verifier runs the size of its first batch), uncapped and capped at 4, with static γ=4 and AWC, on
the mixed deployment at 9 requests/s.

AWC's gain is against the best single static γ of the same scenario: latency % = 1 − AWC's mean
latency / best static's mean latency (best by mean latency), throughput % = AWC's tokens/s over the
best static's tokens/s (best by throughput), minus 1. Open-loop throughput is set by the arrival rate
(it differs only through the makespan); closed loop turns latency into throughput.

Writes docs/img/policy_sweeps.png, docs/img/policy_gain.png, docs/img/policy_batching.png, prints
rich tables, and ends with one JSON line.
Run: .venv/bin/python benchmarks/policy_sweeps.py [--quick] [--seeds N] [--first-seed S] [--requests N] [--batching-only | --gamma-only]
(`--batching-only`: the batching comparison alone, its table, plot and JSON line; `--gamma-only`: the γ-policy
sweeps alone; `--first-seed 3 --seeds 2`: seeds 3 and 4, to check a result on seeds other than the default 1 and 2.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgespec.sim.config import DrafterGroup, RequestClass, SimConfig, VerifierConfig, Workload
from edgespec.sim.links import LinkModel
from edgespec.sim.metrics import summarize
from edgespec.sim.run import simulate
from edgespec.sim.scenario import load_sim_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "sim_tiny.toml"
IMG = ROOT / "docs" / "img"
MAX_GAMMA = 12
ADAPTIVE = ("heuristic", "confidence", "odld", "goodput", "awc_solo", "awc_analytic", "awc")
SHOWN_STATIC = (2, 4, 6, 8)


def _group(name: str, count: int, slowdown: float, latency_s: float, alpha: float, uplink_bps: float = 50e6) -> DrafterGroup:
    up = LinkModel(uplink_bps, latency_s, 0.1 * latency_s)
    down = LinkModel(100e6, latency_s, 0.1 * latency_s)
    return DrafterGroup(name, count, up, down, slowdown=slowdown, alpha=alpha)


MIXED = (_group("near-fast", 8, 1.0, 0.003, 0.55), _group("far-slow", 8, 4.0, 0.040, 0.85, 5e6))
THREE_TIER = (_group("fast", 6, 0.7, 0.002, 0.45), _group("mid", 6, 2.0, 0.015, 0.70),
              _group("iot", 4, 6.0, 0.080, 0.90, 2e6))
ALIKE = (_group("alike", 16, 2.0, 0.015, 0.70),)


def scenarios(base: SimConfig, tiny: SimConfig, requests: int, quick: bool) -> list[tuple[str, str, SimConfig]]:
    """(sweep, name, config) for every scenario."""
    chat = (RequestClass("chat", 128, 128),)
    closed = Workload("closed", requests, users_per_node=2, think_time_s=0.5)
    one = VerifierConfig(count=1, window_s=0.002)

    def make(groups, workload, **kw) -> SimConfig:
        return replace(base, classes=chat, drafters=groups, workload=workload, verifiers=one, **kw)

    out = []
    for rate in ((3.0, 9.0) if quick else (3.0, 6.0, 9.0)):
        out.append(("load", f"mixed {rate:g}/s", make(MIXED, Workload("poisson", requests, rate_per_s=rate))))
    for lat in ((0.002, 0.060) if quick else (0.002, 0.020, 0.060)):
        groups = (replace(ALIKE[0], uplink=replace(ALIKE[0].uplink, latency_s=lat, jitter_s=0.1 * lat),
                          downlink=replace(ALIKE[0].downlink, latency_s=lat, jitter_s=0.1 * lat)),)
        out.append(("rtt", f"alike {lat * 1e3:g} ms", make(groups, Workload("poisson", requests, rate_per_s=6.0))))
    out.append(("heterogeneity", "alike closed", make(ALIKE, closed)))
    out.append(("heterogeneity", "mixed closed", make(MIXED, closed)))
    out.append(("heterogeneity", "3tier closed", make(THREE_TIER, closed)))
    for name, groups in (("alike", ALIKE), ("mixed", MIXED), ("3tier", THREE_TIER)):  # the same requests under every policy
        users = closed.users_per_node * sum(g.count for g in groups)
        per_user = replace(closed, requests_per_user=max(1, round(requests / users)))
        out.append(("heterogeneity", f"{name} closed, per user", make(groups, per_user)))
    if not quick:
        out.append(("heterogeneity", "sim_tiny tasks", replace(tiny, workload=replace(tiny.workload, requests=requests))))
    return out


def run_one(cfg: SimConfig, policy: str, gamma: int, seed: int, verifiers: VerifierConfig | None = None) -> dict:
    spec = replace(cfg.speculation, gamma_policy=policy, gamma=gamma, max_gamma=MAX_GAMMA)
    c = replace(cfg, speculation=spec, seed=seed, verifiers=verifiers or cfg.verifiers)
    r = summarize(simulate(c))
    return {"throughput": r.throughput_tok_per_s, "mean_s": r.e2e_s.mean, "p99_s": r.e2e_s.p99, "gamma": r.mean_gamma,
            "ttft_s": r.ttft_s.mean, "events": r.events, "wall_s": r.wall_s,
            "groups": {name: (g["requests"], g["e2e_mean_s"]) for name, g in r.per_group.items()}}


def averaged(rows: list[dict]) -> dict:
    """Numbers averaged over the seeds; per drafter group: requests summed, mean latency request-weighted."""
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "groups"}
    if "groups" in rows[0]:
        groups = {}
        for name in rows[0]["groups"]:
            n = sum(r["groups"].get(name, (0, 0.0))[0] for r in rows)
            total = sum(r["groups"].get(name, (0, 0.0))[0] * r["groups"].get(name, (0, 0.0))[1] for r in rows)
            groups[name] = (n, total / n if n else 0.0)
        out["groups"] = groups
    return out


def at_mix_s(run: dict, mix: dict) -> float:
    """Mean latency of `run` with its drafter groups weighted as in `mix` (requests per group of another run).

    In closed loop the request mix is not fixed: a policy that speeds up slow nodes' users lets
    them issue more of the run's requests, each a slow one, which raises the plain mean even when
    every group got faster. At a fixed mix the comparison is per group, as in open loop.
    """
    n = sum(mix[g][0] for g in mix if g in run["groups"])
    return sum(mix[g][0] * run["groups"][g][1] for g in mix if g in run["groups"]) / n if n else run["mean_s"]


def sweep(cfg: SimConfig, seeds: list[int], statics: list[int], progress) -> dict:
    """Every policy on one scenario, each averaged over the seeds (the same seeds for all)."""
    res = {}
    for g in statics:
        res[f"static {g}"] = averaged([run_one(cfg, "static", g, s) for s in seeds])
        progress()
    for p in ADAPTIVE:
        res[p] = averaged([run_one(cfg, p, 4, s) for s in seeds])
        progress()
    best_lat = min(statics, key=lambda g: res[f"static {g}"]["mean_s"])
    best_thr = max(statics, key=lambda g: res[f"static {g}"]["throughput"])
    res["best static"] = dict(res[f"static {best_lat}"], gamma_static=best_lat)
    res["_best"] = {"latency_gamma": best_lat, "throughput_gamma": best_thr}
    gains = {}
    for p in ("awc", "awc_analytic", "awc_solo", "heuristic", "goodput"):
        gains[p] = {
            "latency_pct": 100.0 * (1.0 - res[p]["mean_s"] / res[f"static {best_lat}"]["mean_s"]),
            "p99_pct": 100.0 * (1.0 - res[p]["p99_s"] / res[f"static {best_lat}"]["p99_s"]),
            "throughput_pct": 100.0 * (res[p]["throughput"] / res[f"static {best_thr}"]["throughput"] - 1.0),
            "speedup_x": res[f"static {best_lat}"]["mean_s"] / res[p]["mean_s"],
            "latency_at_mix_pct": 100.0 * (1.0 - at_mix_s(res[p], res[f"static {best_lat}"]["groups"])
                                           / at_mix_s(res[f"static {best_lat}"], res[f"static {best_lat}"]["groups"])),
        }
    res["_gain"] = gains
    return res


BATCHINGS = {
    "window 0 ms": VerifierConfig(count=1, window_s=0.0),
    "window 2 ms": VerifierConfig(count=1, window_s=0.002),
    "window 10 ms": VerifierConfig(count=1, window_s=0.010),
    "window 2 ms, ≤4": VerifierConfig(count=1, window_s=0.002, max_batch_size=4),
    "window 2 ms, ≤16": VerifierConfig(count=1, window_s=0.002, max_batch_size=16),
    "max batching": VerifierConfig(count=1, batching="max"),
    "dp plan": VerifierConfig(count=1, batching="dp"),
    "dp plan, ≤4": VerifierConfig(count=1, batching="dp", max_batch_size=4),
}


def batching_sweep(cfg: SimConfig, seeds: list[int], progress) -> dict:
    out = {}
    for name, vc in BATCHINGS.items():
        out[name] = {}
        for label, (policy, g) in {"static 4": ("static", 4), "awc": ("awc", 4)}.items():
            out[name][label] = averaged([run_one(cfg, policy, g, s, verifiers=vc) for s in seeds])
            progress()
    return out


# ----------------------------------------------------------------------------- output


def tables(results: dict, batching: dict, statics: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    cols = [f"static {g}" for g in SHOWN_STATIC if g in statics] + ["best static"] + list(ADAPTIVE)
    for metric, label, scale in (("mean_s", "mean end-to-end latency (ms)", 1e3), ("p99_s", "p99 end-to-end latency (ms)", 1e3),
                                 ("throughput", "throughput (tokens/s)", 1.0)):
        t = Table(title=label)
        t.add_column("scenario")
        for c in cols:
            t.add_column(c.replace("awc_analytic", "awc fallback").replace("awc_solo", "fallback, alone"), justify="right")
        for name, res in results.items():
            cells = []
            for c in cols:
                v = res[c][metric] * scale
                text = f"{v:,.0f}"
                if c == "best static":
                    text += f" (γ={res['best static']['gamma_static']})"
                cells.append(text)
            t.add_row(name, *cells)
        console.print(t)
    t = Table(title="gain vs the best single static γ of each scenario (+ = better)")
    for c in ("scenario", "best γ (lat / thr)", "AWC latency", "AWC latency, static's mix", "AWC p99", "AWC throughput", "AWC speedup",
              "fallback latency", "fallback throughput", "fallback alone latency", "heuristic latency", "goodput latency"):
        t.add_column(c, justify="right" if c != "scenario" else "left")
    for name, res in results.items():
        g = res["_gain"]
        t.add_row(name, f"{res['_best']['latency_gamma']} / {res['_best']['throughput_gamma']}",
                  f"{g['awc']['latency_pct']:+.1f} %", f"{g['awc']['latency_at_mix_pct']:+.1f} %", f"{g['awc']['p99_pct']:+.1f} %",
                  f"{g['awc']['throughput_pct']:+.1f} %",
                  f"{g['awc']['speedup_x']:.3f}×", f"{g['awc_analytic']['latency_pct']:+.1f} %", f"{g['awc_analytic']['throughput_pct']:+.1f} %",
                  f"{g['awc_solo']['latency_pct']:+.1f} %",
                  f"{g['heuristic']['latency_pct']:+.1f} %", f"{g['goodput']['latency_pct']:+.1f} %")
    console.print(t)
    if batching:  # (--gamma-only runs none)
        batching_table(console, batching)


def batching_table(console, batching: dict) -> None:
    from rich.table import Table

    t = Table(title="batching at the verifier (mixed deployment, 9 requests/s): mean / p99 latency (ms), throughput (tokens/s)")
    t.add_column("batching")
    for label in ("static 4", "awc"):
        t.add_column(f"{label} mean", justify="right")
        t.add_column(f"{label} p99", justify="right")
        t.add_column(f"{label} tok/s", justify="right")
    for name, row in batching.items():
        cells = []
        for label in ("static 4", "awc"):
            r = row[label]
            cells += [f"{r['mean_s'] * 1e3:,.0f}", f"{r['p99_s'] * 1e3:,.0f}", f"{r['throughput']:,.0f}"]
        t.add_row(name, *cells)
    console.print(t)


def _save(plt, fig, name: str) -> str:
    fig.tight_layout()
    path = IMG / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(ROOT))


def plots(results: dict, sweeps: dict, batching: dict, statics: list[int]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    written = []
    groups = ["load", "rtt", "heterogeneity"]
    counts = [sum(sweeps[n] == sw for n in results) for sw in groups]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": counts})
    show = [f"static {g}" for g in SHOWN_STATIC if g in statics] + ["best static", "heuristic", "goodput", "awc_analytic", "awc"]
    for ax, sw in zip(axes, groups):
        names = [n for n in results if sweeps[n] == sw]
        x = np.arange(len(names))
        width = 0.8 / len(show)
        for i, p in enumerate(show):
            ax.bar(x + i * width - 0.4 + width / 2, [results[n][p]["mean_s"] * 1e3 for n in names], width,
                   label=p.replace("awc_analytic", "awc fallback"), hatch="//" if p == "best static" else None)
        ax.set_xticks(x, [n.replace(", ", ",\n") for n in names], rotation=15, fontsize=8)
        ax.set_title(f"{sw} sweep")
        ax.set_ylabel("mean end-to-end latency (ms)")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("γ policies in the simulator (lower is better)")
    written.append(_save(plt, fig, "policy_sweeps.png"))

    fig, ax = plt.subplots(figsize=(12, 4.4))
    names = list(results)
    x = np.arange(len(names))
    for i, (key, label) in enumerate((("latency_pct", "mean latency"), ("p99_pct", "p99 latency"), ("throughput_pct", "throughput"))):
        ax.bar(x + (i - 1) * 0.27, [results[n]["_gain"]["awc"][key] for n in names], 0.27, label=f"AWC {label}")
    ax.plot(x, [results[n]["_gain"]["awc_analytic"]["latency_pct"] for n in names], "kx", label="fallback (no learned correction), mean latency")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [n.replace(", ", ",\n") for n in names], rotation=20, fontsize=8)
    ax.set_ylabel("gain vs best static γ (%)")
    ax.set_title("AWC against the best single static γ of each scenario (+ = better)")
    ax.legend(fontsize=8)
    written.append(_save(plt, fig, "policy_gain.png"))

    if batching:
        written.append(batching_plot(plt, batching))
    return written


def batching_plot(plt, batching: dict) -> str:
    fig, ax = plt.subplots(figsize=(10, 4))
    names = list(batching)
    x = np.arange(len(names))
    for i, label in enumerate(("static 4", "awc")):
        ax.bar(x + (i - 0.5) * 0.38, [batching[n][label]["mean_s"] * 1e3 for n in names], 0.38, label=f"{label} mean")
        ax.plot(x + (i - 0.5) * 0.38, [batching[n][label]["p99_s"] * 1e3 for n in names], "o", label=f"{label} p99")
    ax.set_xticks(x, names, rotation=15, fontsize=8)
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title("verifier batching policies (mixed deployment, 9 requests/s)")
    ax.legend(fontsize=8)
    return _save(plt, fig, "policy_batching.png")


def batching_summary(batching: dict) -> dict:
    return {n: {k: {"mean_ms": round(v["mean_s"] * 1e3, 1), "p99_ms": round(v["p99_s"] * 1e3, 1),
                    "throughput_tok_s": round(v["throughput"], 1)} for k, v in row.items()} for n, row in batching.items()}


def batching_main(args, requests: int, seeds: list[int]) -> int:
    """`--batching-only`: the batching comparison on the mixed deployment at 9 requests/s, nothing else."""
    tiny = load_sim_config(TINY)
    tiny = replace(tiny, speculation=replace(tiny.speculation, max_gamma=MAX_GAMMA))
    cfg = next(c for sw, name, c in scenarios(tiny, tiny, requests, args.quick) if name == "mixed 9/s")
    started = time.perf_counter()
    done = [0]

    def progress() -> None:
        done[0] += 1
        print(f"\r  {done[0]}/{len(BATCHINGS) * 2} policy pairs, {time.perf_counter() - started:5.0f} s", end="", file=sys.stderr, flush=True)

    batching = batching_sweep(cfg, seeds, progress)
    print(file=sys.stderr)
    from rich.console import Console

    batching_table(Console(width=200), batching)
    images = []
    if not args.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        IMG.mkdir(parents=True, exist_ok=True)
        images.append(batching_plot(plt, batching))
    print(json.dumps({"regime": "simulated (edgespec.sim, roofline costs of examples/sim_tiny.toml)", "requests": requests,
                      "seeds": seeds, "batching": batching_summary(batching), "images": images,
                      "wall_s": round(time.perf_counter() - started, 1)}, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer scenarios, γ ∈ {2,4,6,8,12}, 120 requests, one seed")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--batching-only", action="store_true", help="only the verifier batching comparison")
    ap.add_argument("--gamma-only", action="store_true", help="only the γ-policy sweeps (no batching comparison)")
    ap.add_argument("--first-seed", type=int, default=1, help="seeds first-seed … first-seed + seeds − 1 (default 1: seeds 1 and 2)")
    args = ap.parse_args(argv)
    requests = args.requests or (120 if args.quick else 400)
    seeds = list(range(args.first_seed, args.first_seed + (args.seeds or (1 if args.quick else 2))))
    if args.batching_only:
        return batching_main(args, requests, seeds)
    statics = [2, 4, 6, 8, 12] if args.quick else list(range(1, MAX_GAMMA + 1))

    tiny = load_sim_config(TINY)
    tiny = replace(tiny, speculation=replace(tiny.speculation, max_gamma=MAX_GAMMA))
    base = tiny
    scs = scenarios(base, tiny, requests, args.quick)
    runs_total = len(scs) * (len(statics) + len(ADAPTIVE)) * len(seeds) + (0 if args.gamma_only else len(BATCHINGS) * 2 * len(seeds))
    done = [0]
    started = time.perf_counter()

    def progress() -> None:
        done[0] += len(seeds)
        elapsed = time.perf_counter() - started
        eta = elapsed / done[0] * (runs_total - done[0])
        print(f"\r  {done[0]}/{runs_total} runs, {elapsed:5.0f} s elapsed, ~{eta:4.0f} s left ", end="", file=sys.stderr, flush=True)

    print(f"{len(scs)} scenarios × {len(statics) + len(ADAPTIVE)} γ policies × seeds {seeds}, {requests} requests each"
          + ("" if args.gamma_only else f"; then {len(BATCHINGS)} batching policies"), file=sys.stderr)
    results, sweeps = {}, {}
    for sw, name, cfg in scs:
        results[name] = sweep(cfg, seeds, statics, progress)
        sweeps[name] = sw
    batching = {}
    if not args.gamma_only:
        batch_cfg = next(cfg for sw, name, cfg in scs if name == "mixed 9/s")
        batching = batching_sweep(batch_cfg, seeds, progress)
    print(file=sys.stderr)
    tables(results, batching, statics)
    images = [] if args.no_plots else plots(results, sweeps, batching, statics)

    het = [n for n in results if sweeps[n] == "heterogeneity" and not n.startswith("alike")] + [n for n in results if sweeps[n] == "load"]
    gains_het = [results[n]["_gain"]["awc"] for n in het]
    summary = {
        "regime": "simulated (edgespec.sim, roofline costs of examples/sim_tiny.toml)",
        "requests": requests, "seeds": seeds, "static_gammas": statics, "max_gamma": MAX_GAMMA,
        "scenarios": {n: {"sweep": sweeps[n], "best_static_gamma": r["_best"],
                          "policies": {p: {"throughput_tok_s": round(v["throughput"], 1), "mean_ms": round(v["mean_s"] * 1e3, 1),
                                           "p99_ms": round(v["p99_s"] * 1e3, 1), "mean_gamma": round(v["gamma"], 2)}
                                       for p, v in r.items() if not p.startswith("_") and (p in ADAPTIVE or p == "best static" or p in (f"static {g}" for g in SHOWN_STATIC))},
                          "awc_gain": {k: round(v, 2 if k != "speedup_x" else 4) for k, v in r["_gain"]["awc"].items()},
                          "groups": {p: {g: {"requests": n, "mean_ms": round(m * 1e3, 1)} for g, (n, m) in r[p]["groups"].items()}
                                     for p in ("best static", "awc")},
                          "awc_fallback_gain": {k: round(v, 2 if k != "speedup_x" else 4) for k, v in r["_gain"]["awc_analytic"].items()},
                          "awc_solo_gain": {k: round(v, 2 if k != "speedup_x" else 4) for k, v in r["_gain"]["awc_solo"].items()}}
                      for n, r in results.items()},
        "heterogeneous": {
            "scenarios": het,
            "awc_beats_best_static_latency": sum(g["latency_pct"] > 0 for g in gains_het),
            "awc_beats_best_static_latency_at_static_mix": sum(g["latency_at_mix_pct"] > 0 for g in gains_het),
            "awc_latency_gain_pct_mean": round(float(np.mean([g["latency_pct"] for g in gains_het])), 2),
            "awc_latency_gain_pct_max": round(float(np.max([g["latency_pct"] for g in gains_het])), 2),
            "awc_throughput_gain_pct_mean": round(float(np.mean([g["throughput_pct"] for g in gains_het])), 2),
            "awc_throughput_gain_pct_max": round(float(np.max([g["throughput_pct"] for g in gains_het])), 2),
        },
        "batching": batching_summary(batching),
        "images": images,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
