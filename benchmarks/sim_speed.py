"""Simulator speed: simulated conversations and events per wall-second at 100, 2,000 and 10,000 requests.

Regime: examples/sim_benchmark.toml — 100 drafter nodes (two device speeds, jittery and lossy
links), 4 verifiers with window batching and a KV budget, 160-token answers, Poisson arrivals,
static γ = 4, roofline costs — run in this process on one core, after imports (the scenario is
loaded once; each size runs `--repeats` times and the median wall time is reported). Issue 5's target:
>= 1,500 conversations per wall-second (ten times a SimPy process-per-transfer design, about 150/s
here) and linear growth in requests (events per request roughly constant across sizes).

Prints a rich table; the last line of stdout is one JSON object.
Run: .venv/bin/python benchmarks/sim_speed.py [--sizes 100,2000,10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
            "simulated_s": runs[0].end_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,2000,10000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scenario", type=Path, default=SCENARIO)
    args = ap.parse_args()
    config = load_sim_config(args.scenario)
    simulate(replace(config, workload=replace(config.workload, requests=50)))  # warm caches (cost tables, imports)
    rows = [measure(config, int(n), args.repeats) for n in args.sizes.split(",")]

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"simulator speed — {config.name} ({len(config.drafters)} drafter groups, {config.verifiers.count} verifiers)")
    for col in ("requests", "simulated s", "wall s (median)", "events", "events/request", "events/s", "conversations/s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['requests']:,}", f"{r['simulated_s']:.0f}", f"{r['wall_s']:.2f}", f"{r['events']:,}", f"{r['events_per_request']:.0f}",
                  f"{r['events_per_s']:,.0f}", f"{r['conversations_per_s']:,.0f}")
    Console().print(t)
    largest = rows[-1]
    per_request = [r["events_per_request"] for r in rows]
    print(json.dumps({"benchmark": "sim_speed", "rows": rows, "target_conversations_per_s": TARGET_CONV_PER_S,
                      "met": largest["conversations_per_s"] >= TARGET_CONV_PER_S,
                      "events_per_request_spread": max(per_request) / min(per_request)}))


if __name__ == "__main__":
    main()
