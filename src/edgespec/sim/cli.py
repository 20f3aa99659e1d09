"""`edgespec sim`: load a scenario, simulate it, print rich tables, and optionally a JSON last line, PNG plots and a Chrome trace."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from edgespec.sim.kernel import SimulationError
from edgespec.sim.metrics import BREAKDOWN, SimReport, summarize
from edgespec.sim.run import simulate
from edgespec.sim.scenario import ScenarioError, load_sim_config

__all__ = ["run_sim"]


def run_sim(scenario: Path, json_out: bool = False, plot: Optional[Path] = None, trace: Optional[Path] = None,
            requests: Optional[int] = None, seed: Optional[int] = None, requests_csv: Optional[Path] = None) -> int:
    """Entry point of `edgespec sim`; returns the exit code (2: bad scenario, 1: the simulation failed)."""
    try:
        config = load_sim_config(scenario, requests=requests, seed=seed)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if trace is not None:
        config = replace(config, record_rounds=True)
    from rich.console import Console

    console = Console(stderr=json_out)
    try:
        with console.status(f"simulating {config.request_count} requests of {config.name} …"):
            run = simulate(config)
    except (SimulationError, ValueError) as exc:
        print(f"error: simulation failed: {exc}", file=sys.stderr)
        return 1
    report = summarize(run)
    _print(console, report)
    if plot is not None:
        from edgespec.sim.plot import plot_run

        for path in plot_run(run, report, plot):
            console.print(f"wrote {path}")
    if trace is not None:
        from edgespec.sim.trace import write_chrome_trace

        write_chrome_trace(run, trace)
        console.print(f"wrote {trace} (open in https://ui.perfetto.dev or chrome://tracing)")
    if requests_csv is not None:
        from edgespec.sim.metrics import write_requests_csv

        write_requests_csv(run, requests_csv)
        console.print(f"wrote {requests_csv} (one row per request)")
    if json_out:
        print(json.dumps(report.to_dict()))
    return 0


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def _print(console, r: SimReport) -> None:
    from rich.table import Table

    t = Table(title=f"{r.requests} requests, mode {r.mode}, {r.makespan_s:.1f} s simulated")
    for col in ("", "mean", "p50", "p95", "p99", "max"):
        t.add_column(col, justify="right" if col else "left")
    for name, d in (("end-to-end ms", r.e2e_s), ("TTFT ms", r.ttft_s), ("TPOT ms", r.tpot_s)):
        t.add_row(name, _ms(d.mean), _ms(d.p50), _ms(d.p95), _ms(d.p99), _ms(d.max))
    t.add_row("batch size", *(f"{v:.1f}" for v in (r.batch_size.mean, r.batch_size.p50, r.batch_size.p95, r.batch_size.p99, r.batch_size.max)))
    console.print(t)
    s = Table(title="system")
    s.add_column("figure")
    s.add_column("value", justify="right")
    rows = [
        ("throughput (tokens/s)", f"{r.throughput_tok_per_s:.1f}"),
        ("requests/s", f"{r.requests_per_s:.2f}"),
        ("goodput (requests/s meeting SLOs)", f"{r.goodput_req_per_s:.2f} ({100 * r.slo_attainment:.1f} %)"),
        ("tokens per round", f"{r.tokens_per_round:.2f}"),
        ("acceptance (accepted/drafted)", f"{r.acceptance:.3f}"),
        ("mean γ", f"{r.mean_gamma:.2f}"),
        ("verifier utilisation", ", ".join(f"{u:.2f}" for u in r.verifier_utilisation)),
        ("drafter utilisation (mean)", f"{r.drafter_utilisation_mean:.2f}"),
        ("uplink bytes per token", f"{r.uplink_bytes_per_token:.1f}"),
        ("KV refusals", str(r.refusals)),
        ("events / wall-s", f"{r.events_per_s:,.0f} ({r.events:,} in {r.wall_s:.2f} s)"),
        ("conversations / wall-s", f"{r.conversations_per_s:,.0f}"),
    ]
    for row in rows:
        s.add_row(*row)
    console.print(s)
    b = Table(title="mean time per request by phase (ms)")
    for k in BREAKDOWN:
        b.add_column(k.removesuffix("_s"), justify="right")
    b.add_row(*(_ms(r.breakdown_s[k]) for k in BREAKDOWN))
    console.print(b)
