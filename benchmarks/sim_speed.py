"""Simulator speed: simulated conversations and events per wall-second at 100, 2,000 and 10,000 requests, and against SimPy.

Regime: examples/sim_benchmark.toml — 100 drafter nodes (two device speeds, jittery and lossy
links), 4 verifiers with window batching and a KV budget, 160-token answers, Poisson arrivals,
static γ = 4, roofline costs — run in this process on one core, after imports (the scenario is
loaded once; each size runs `--repeats` times and the median wall time is reported). Issue 5's target:
>= 1,500 conversations per wall-second (ten times a SimPy process-per-transfer design, which
../shared/DESIGN.md §6 puts at about 150/s on this machine; the reference below is leaner) and linear
growth in requests (events per request roughly constant across sizes).

With `--simpy` (the default; `--no-simpy` skips it) the same scenario also runs in
benchmarks/_simpy_reference.py — the idiomatic SimPy model of the same system (a process per session
and per message, a capacity-1 resource per link direction, a process per verifier; its docstring lists
what it simplifies) — at `--simpy-sizes` (500 and 2,000 requests: it is slow), `--repeats` times each,
median wall time, in the same process on the same machine, interleaved with as many runs of our simulator
at the same size (ours, SimPy, ours, SimPy, ...: load on a shared machine drifts, and hits both alike).
Reported: its conversations/s, ours at the same request count, the ratio ours/SimPy, and both mean
end-to-end latencies (so a reader sees both model the same system). Both runs include building the
model and run with the cycle collector off (our `simulate` does that; the reference does the same).

Prints rich tables; the last line of stdout is one JSON object ("rows", "target_conversations_per_s",
"met", "events_per_request_spread", and with --simpy also "simpy" (one row per SimPy size) and
"ratio_vs_simpy" (ours/SimPy at the largest SimPy size)).
Run: .venv/bin/python benchmarks/sim_speed.py [--sizes 100,2000,10000] [--repeats 3] [--no-simpy] [--simpy-sizes 500,2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from edgespec.sim.run import simulate
from edgespec.sim.scenario import load_sim_config

SCENARIO = Path(__file__).resolve().parents[1] / "examples" / "sim_benchmark.toml"
TARGET_CONV_PER_S = 1500.0


def measure(config, requests: int, repeats: int) -> dict:
    cfg = replace(config, workload=replace(config.workload, requests=requests))
    runs = [simulate(cfg) for _ in range(repeats)]
    wall = statistics.median(r.wall_s for r in runs)
    events = runs[0].events
    tokens = sum(s.emitted for s in runs[0].sessions)
    return {"requests": requests, "wall_s": wall, "events": events, "events_per_request": events / requests,
            "events_per_s": events / wall, "conversations_per_s": requests / wall, "tokens_per_request": tokens / requests,
            "simulated_s": runs[0].end_s,
            "mean_e2e_s": statistics.fmean(s.finish_s - s.arrival_s for s in runs[0].sessions)}


def measure_simpy(config, requests: int, repeats: int) -> tuple[dict, dict]:
    """The SimPy reference and our simulator at `requests`, runs interleaved (ours, SimPy, ours, ...) so load drift hits both.

    Returns (the SimPy row, our `measure`-style row at the same size).
    """
    from _simpy_reference import simulate_simpy

    cfg = replace(config, workload=replace(config.workload, requests=requests))
    ours_runs, ref_runs = [], []
    for _ in range(repeats):
        ours_runs.append(simulate(cfg))
        ref_runs.append(simulate_simpy(cfg))
    ours_wall = statistics.median(r.wall_s for r in ours_runs)
    ours = {"requests": requests, "wall_s": ours_wall, "conversations_per_s": requests / ours_wall,
            "mean_e2e_s": statistics.fmean(s.finish_s - s.arrival_s for s in ours_runs[0].sessions)}
    wall = statistics.median(r.wall_s for r in ref_runs)
    conv = requests / wall
    mean_e2e_s = ref_runs[0].mean_e2e_s
    row = {"requests": requests, "wall_s": wall, "conversations_per_s": conv, "events": ref_runs[0].events,
           "events_per_request": ref_runs[0].events / requests, "simulated_s": ref_runs[0].end_s, "mean_e2e_s": mean_e2e_s,
           "ours_wall_s": ours["wall_s"], "ours_conversations_per_s": ours["conversations_per_s"],
           "ours_mean_e2e_s": ours["mean_e2e_s"], "ratio": ours["conversations_per_s"] / conv,
           "mean_e2e_rel_diff": mean_e2e_s / ours["mean_e2e_s"] - 1.0}
    return row, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,2000,10000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scenario", type=Path, default=SCENARIO)
    ap.add_argument("--simpy", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the SimPy reference (benchmarks/_simpy_reference.py; needs simpy)")
    ap.add_argument("--simpy-sizes", default="500,2000")
    args = ap.parse_args()
    config = load_sim_config(args.scenario)
    simulate(replace(config, workload=replace(config.workload, requests=50)))  # warm caches (cost tables, imports)
    rows = [measure(config, int(n), args.repeats) for n in args.sizes.split(",")]
    simpy_rows = []
    if args.simpy:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            from _simpy_reference import simulate_simpy
        except ImportError as e:
            raise SystemExit(f"--simpy needs simpy ({e}): pip install 'simpy>=4' (the test extra has it), or pass --no-simpy")

        simulate_simpy(replace(config, workload=replace(config.workload, requests=50)))  # warm it too
        simpy_rows = [measure_simpy(config, int(n), args.repeats)[0] for n in args.simpy_sizes.split(",")]

    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"simulator speed — {config.name} ({len(config.drafters)} drafter groups, {config.verifiers.count} verifiers)")
    for col in ("requests", "simulated s", "wall s (median)", "events", "events/request", "events/s", "conversations/s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['requests']:,}", f"{r['simulated_s']:.0f}", f"{r['wall_s']:.2f}", f"{r['events']:,}", f"{r['events_per_request']:.0f}",
                  f"{r['events_per_s']:,.0f}", f"{r['conversations_per_s']:,.0f}")
    console.print(t)
    if simpy_rows:
        t = Table(title="against the SimPy process-per-transfer reference (benchmarks/_simpy_reference.py), same scenario")
        for col in ("requests", "SimPy wall s", "SimPy conv/s", "SimPy events/req", "ours conv/s", "ours/SimPy",
                    "SimPy e2e ms", "ours e2e ms", "Δ e2e"):
            t.add_column(col, justify="right")
        for r in simpy_rows:
            t.add_row(f"{r['requests']:,}", f"{r['wall_s']:.2f}", f"{r['conversations_per_s']:,.0f}", f"{r['events_per_request']:.0f}",
                      f"{r['ours_conversations_per_s']:,.0f}", f"{r['ratio']:.1f}×", f"{r['mean_e2e_s'] * 1e3:.1f}",
                      f"{r['ours_mean_e2e_s'] * 1e3:.1f}", f"{r['mean_e2e_rel_diff']:+.1%}")
        console.print(t)
    largest = rows[-1]
    per_request = [r["events_per_request"] for r in rows]
    report = {"benchmark": "sim_speed", "rows": rows, "target_conversations_per_s": TARGET_CONV_PER_S,
              "met": largest["conversations_per_s"] >= TARGET_CONV_PER_S,
              "events_per_request_spread": max(per_request) / min(per_request)}
    if simpy_rows:
        report["simpy"] = simpy_rows
        report["ratio_vs_simpy"] = simpy_rows[-1]["ratio"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
