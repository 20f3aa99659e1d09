"""Sweeps of the joint planner's *predicted* serving latency on the paper-2510.11331-like scenario, and planner timings.

Regime: analytical. Every latency here is a prediction of edgespec's latency model (FLOPs/bytes
roofline for LLaMA-68M / TinyLlama-1.1B drafts on an RTX 3080-class drafter node and
LLaMA-2-7B / 13B targets on an A100-class verifier, wireless uplink with Shannon rates and
3GPP path loss), not a measurement on hardware. Starting from examples/paper_2510_11331.toml
it sweeps the number of tasks, the total uplink bandwidth, the size of each request's upload,
the acceptance rate α and the draft/target pair, and at each point compares the joint plan with:
uniform allocation of everything (uniform_all), max batching, uniform bandwidth, fixed γ, no
pipelining and AD serving. It also measures how far the DP is from the optimum over all
partitions on small two-dimensional instances, and times the joint planner (wall clock, this
machine) at 50…1,000 tasks and γ ≤ 2…16.

Writes PNG plots to docs/img/plan_*.png, prints rich tables, and ends with one JSON line.
Run: .venv/bin/python benchmarks/plan_sweeps.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgespec.plan.bandwidth import allocate, channels_from_tasks, upload_times_s
from edgespec.plan.dp import SearchSpace, brute_force_all_partitions, plan_batches, search_space
from edgespec.plan.joint import PlanReport, Strategy, optimise, plan_scenario
from edgespec.plan.scenario import ModelShape, Scenario, Task, loads_scenario

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "paper_2510_11331.toml"
IMG = ROOT / "docs" / "img"

LLAMA_68M = ModelShape("llama-68m", 2, 768, 3072, 32000)
TINYLLAMA_11B = ModelShape("tinyllama-1.1b", 22, 2048, 5632, 32000, kv_dim=256)
LLAMA2_7B = ModelShape("llama-2-7b", 32, 4096, 11008, 32000)
LLAMA2_13B = ModelShape("llama-2-13b", 40, 5120, 13824, 32000)
# assumed acceptance rates with top-8 q (no measurement available; see docs/planner.md)
PAIRS = {
    "68M→7B": (LLAMA_68M, LLAMA2_7B, 0.70),
    "68M→13B": (LLAMA_68M, LLAMA2_13B, 0.65),
    "1.1B→7B": (TINYLLAMA_11B, LLAMA2_7B, 0.80),
    "1.1B→13B": (TINYLLAMA_11B, LLAMA2_13B, 0.75),
}
COMPARISONS = {  # headline comparison → baseline it is measured against
    "joint vs uniform allocation": "uniform_all",
    "DP batching vs max batching": "max_batching",
    "bandwidth allocation vs uniform": "uniform_bandwidth",
    "adaptive γ vs fixed γ=4": "fixed_gamma",
    "pipelining vs none": "no_pipeline",
    "SD vs AD": "ad",
}


def base_scenario(count: int = 100) -> Scenario:
    text = EXAMPLE.read_text().replace("count = 100", f"count = {count}")
    return loads_scenario(text, source=str(EXAMPLE), base_dir=EXAMPLE.parent)


def with_alpha(sc: Scenario, alpha: float) -> Scenario:
    spec = replace(sc.system.speculation, alpha=alpha)
    return replace(sc, system=replace(sc.system, speculation=spec), tasks=tuple(replace(t, alpha=alpha) for t in sc.tasks))


def with_pair(sc: Scenario, draft: ModelShape, target: ModelShape, alpha: float) -> Scenario:
    system = replace(sc.system, drafter=replace(sc.system.drafter, model=draft),
                     verifier=replace(sc.system.verifier, model=target))
    return with_alpha(replace(sc, system=system), alpha)


def with_attachment(sc: Scenario, extra_bytes: float) -> Scenario:
    """Each request also uploads `extra_bytes` (an image, a document, a context): prompt text + attachment."""
    return replace(sc, tasks=tuple(replace(t, upload_bytes=t.upload_bytes + extra_bytes) for t in sc.tasks))


def point(report: PlanReport) -> dict:
    red = report.reductions_pct()
    return {
        "joint_s": report.joint.makespan_s,
        "baselines_s": {k: v.makespan_s for k, v in report.baselines.items()},
        "reduction_pct": {label: red[base] for label, base in COMPARISONS.items()},
        "batches": len(report.joint.batches),
        "gammas": sorted({b.gamma for b in report.joint.batches}),
        "pipelined_batches": sum(t.detail.pipelined for t in report.joint.latency.batches),
        "upload_share_pct": 100 * report.joint.latency.breakdown.upload_s / report.joint.makespan_s,
    }


def sweep(name: str, xs, make) -> dict:
    rows = []
    for x in xs:
        t0 = time.perf_counter()
        rep = plan_scenario(make(x))
        rows.append({"x": x, **point(rep), "plan_all_s": time.perf_counter() - t0})
    return {"name": name, "rows": rows}


def dp_gap(instances: int, k: int, seed: int) -> dict:
    """DP vs brute force over all set partitions on small instances drawn from the paper's distribution (equal upload times)."""
    sc = base_scenario()
    rng = np.random.default_rng(seed)
    space = SearchSpace((0, 2, 4, 6), (False, True), 0)
    gaps = []
    for _ in range(instances):
        tasks = [Task(i, int(rng.integers(32, 1025)), int(rng.integers(16, 513)), float(rng.uniform(0.6, 0.8)), 1.0, 1.0)
                 for i in range(k)]
        ready = [0.0] * k
        dp = plan_batches(sc.system, tasks, ready, space).makespan_s
        best = brute_force_all_partitions(sc.system, tasks, ready, space, all_orders=False).makespan_s
        gaps.append(100 * (dp / best - 1))
    g = np.array(gaps)
    return {"instances": instances, "tasks": k, "optimal_fraction": float(np.mean(g < 1e-7)),
            "mean_gap_pct": float(g.mean()), "max_gap_pct": float(g.max())}


def timings(counts, gamma_maxes, repeats: int) -> dict:
    """Wall time of the joint planner (optimise, default strategy) and of one DP, by tasks and by γ range."""
    by_tasks, by_gamma = [], []
    for k in counts:
        sc = base_scenario(k)
        by_tasks.append({"tasks": k, "gamma_max": 8, **_time(sc, repeats if k <= 200 else 1)})
    for gmax in gamma_maxes:
        for k in (100, 1000) if 1000 in counts else (100,):
            sc = base_scenario(k)
            sc = replace(sc, planner=replace(sc.planner, gamma_max=gmax, fixed_gamma=min(4, gmax)))
            by_gamma.append({"tasks": k, "gamma_max": gmax, **_time(sc, repeats if k <= 200 else 1)})
    return {"by_tasks": by_tasks, "by_gamma": by_gamma}


def _time(sc: Scenario, repeats: int) -> dict:
    ch = channels_from_tasks(sc.tasks, sc.uplink)
    up = upload_times_s(ch, allocate("min_max", ch, sc.uplink.bandwidth_hz))
    dp_s, joint_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan_batches(sc.system, sc.tasks, up, search_space(sc.planner))
        dp_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = optimise(sc, Strategy())
        joint_s.append(time.perf_counter() - t0)
    return {"dp_s": min(dp_s), "joint_s": min(joint_s), "iterations": res.iterations}


# ----------------------------------------------------------------------------- output


def _plot_sweep(sw: dict, xlabel: str, path: Path, log_x: bool = False, categorical: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sw["rows"]
    xs = list(range(len(rows))) if categorical else [r["x"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(xs, [r["joint_s"] for r in rows], "o-", color="tab:green", lw=2.5, label="joint")
    for name in rows[0]["baselines_s"]:
        left.plot(xs, [r["baselines_s"][name] for r in rows], ".--", label=name)
    left.set_ylabel("predicted total serving latency (s)")
    for label in COMPARISONS:
        right.plot(xs, [r["reduction_pct"][label] for r in rows], "o-", label=label)
    right.set_ylabel("latency reduction of the joint plan (%)")
    right.axhline(44.9, color="k", lw=0.6, ls=":")
    right.axhline(21.4, color="k", lw=0.6, ls=":")
    right.axhline(25.2, color="k", lw=0.6, ls=":")
    for ax in (left, right):
        ax.set_xlabel(xlabel)
        if categorical:
            ax.set_xticks(xs, [str(r["x"]) for r in rows])
        elif log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sw['name']} (model predictions; dotted lines: paper's 44.9 / 25.2 / 21.4 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_timing(tim: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ks = [r["tasks"] for r in tim["by_tasks"]]
    left.loglog(ks, [r["joint_s"] for r in tim["by_tasks"]], "o-", label="joint planner")
    left.loglog(ks, [r["dp_s"] for r in tim["by_tasks"]], "s--", label="one DP")
    left.set_xlabel("tasks")
    left.set_ylabel("wall time (s)")
    left.set_title("γ ≤ 8")
    for k in sorted({r["tasks"] for r in tim["by_gamma"]}):
        rows = [r for r in tim["by_gamma"] if r["tasks"] == k]
        right.plot([r["gamma_max"] for r in rows], [r["dp_s"] for r in rows], "o-", label=f"one DP, {k} tasks")
    right.set_xlabel("γ max (γ ∈ 0..max)")
    right.set_ylabel("wall time (s)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    for sw in results["sweeps"]:
        t = Table(title=f"{sw['name']}: predicted latency (s) and reduction of the joint plan (%)")
        t.add_column("x", justify="right")
        t.add_column("joint s", justify="right")
        for label in COMPARISONS:
            t.add_column(label, justify="right")
        t.add_column("γ used")
        t.add_column("batches", justify="right")
        for r in sw["rows"]:
            t.add_row(str(r["x"]), f"{r['joint_s']:.2f}", *(f"{r['reduction_pct'][c]:.1f}" for c in COMPARISONS),
                      ",".join(map(str, r["gammas"])), str(r["batches"]))
        console.print(t)
    t = Table(title="Headline comparisons: largest reduction over all sweep points (paper: 44.9 / 21.4 / 25.2 %)")
    t.add_column("comparison")
    t.add_column("up to %", justify="right")
    t.add_column("where")
    t.add_column("on the paper example %", justify="right")
    for label, best in results["up_to"].items():
        t.add_row(label, f"{best['pct']:.1f}", best["where"], f"{results['paper_example'][label]:.1f}")
    console.print(t)
    g = results["dp_gap"]
    console.print(f"DP vs all partitions ({g['instances']} instances of {g['tasks']} tasks, 2-D heterogeneity): "
                  f"optimal in {100 * g['optimal_fraction']:.0f}%, mean gap {g['mean_gap_pct']:.2f}%, max {g['max_gap_pct']:.2f}%")
    t = Table(title="Planner wall time (this machine)")
    for col in ("tasks", "γ max", "one DP s", "joint planner s", "alternation steps"):
        t.add_column(col, justify="right")
    for r in results["timings"]["by_tasks"] + results["timings"]["by_gamma"]:
        t.add_row(str(r["tasks"]), str(r["gamma_max"]), f"{r['dp_s']:.3f}", f"{r['joint_s']:.3f}", str(r["iterations"]))
    console.print(t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, no 1,000-task timing (a smoke run)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    quick = args.quick
    base = base_scenario()
    sweeps = [
        sweep("tasks", [10, 50, 100] if quick else [10, 25, 50, 100, 200], base_scenario),
        sweep("bandwidth_mhz", [0.5, 10] if quick else [0.2, 0.5, 1, 2, 5, 10, 20],
              lambda mhz: replace(base, uplink=replace(base.uplink, bandwidth_hz=mhz * 1e6))),
        sweep("attachment_kb", [0, 100] if quick else [0, 10, 30, 100, 300, 1000],
              lambda kb: with_attachment(base, kb * 1e3)),
        sweep("alpha", [0.5, 0.8] if quick else [0.5, 0.6, 0.7, 0.8, 0.9], lambda a: with_alpha(base, a)),
        sweep("pair", list(PAIRS)[:2] if quick else list(PAIRS), lambda p: with_pair(base, *PAIRS[p])),
    ]
    up_to = {}
    for label in COMPARISONS:
        best = max(((r["reduction_pct"][label], f"{sw['name']}={r['x']}") for sw in sweeps for r in sw["rows"]))
        up_to[label] = {"pct": best[0], "where": best[1]}
    paper_example = point(plan_scenario(base))["reduction_pct"]
    gap = dp_gap(instances=6 if quick else 30, k=5, seed=7)
    tim = timings([50, 100] if quick else [50, 100, 200, 500, 1000], [2, 8] if quick else [2, 4, 8, 16],
                  repeats=3)
    results = {"benchmark": "plan_sweeps", "quick": quick, "sweeps": sweeps, "up_to": up_to,
               "paper_example": paper_example, "dp_gap": gap, "timings": tim}
    if not args.no_plots:
        IMG.mkdir(parents=True, exist_ok=True)
        labels = {"tasks": ("tasks", False, False), "bandwidth_mhz": ("total uplink bandwidth (MHz)", True, False),
                  "attachment_kb": ("upload attached to each request (kB)", False, True),
                  "alpha": ("acceptance rate α", False, False), "pair": ("draft → target", False, True)}
        for sw in sweeps:
            xlabel, log_x, cat = labels[sw["name"]]
            _plot_sweep(sw, xlabel, IMG / f"plan_sweep_{sw['name']}.png", log_x, cat)
        _plot_timing(tim, IMG / "plan_timing.png")
        results["plots"] = sorted(str(p.relative_to(ROOT)) for p in IMG.glob("plan_*.png"))
    results["elapsed_s"] = time.perf_counter() - t_start
    _print(results)
    sys.stdout.flush()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
