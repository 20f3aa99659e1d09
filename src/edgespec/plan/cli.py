"""`edgespec plan`: load a scenario, plan it, print rich tables, and optionally a JSON last line and a figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from edgespec.plan.joint import PlanReport, PlanResult, plan_scenario
from edgespec.plan.latency import Breakdown
from edgespec.plan.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["run_plan", "report_json"]

_BASELINE_NOTES = {
    "uniform_bandwidth": "b_k = B/K; DP batching and γ",
    "max_batching": "fewest batches (cap, memory); best γ",
    "fixed_gamma": "γ = fixed_gamma in every batch",
    "no_pipeline": "no draft/verify overlap",
    "ad": "autoregressive on the verifier (γ = 0)",
    "uniform_all": "uniform b, max batching, fixed γ",
}

_COMPONENTS = (
    ("upload_s", "upload (waiting for prompts)"),
    ("prefill_s", "prefill (forward + draft/target)"),
    ("draft_compute_s", "draft compute"),
    ("draft_transfer_s", "draft transfer"),
    ("verify_compute_s", "verify compute"),
    ("downlink_s", "downlink (verdicts)"),
    ("pipeline_stall_s", "pipeline stall"),
)


def run_plan(scenario: Path, json_out: bool = False, plot: Optional[Path] = None) -> int:
    """Entry point of `edgespec plan`; returns the process exit code (2 for a bad scenario, 1 if no plan exists)."""
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = plan_scenario(sc)
    except ValueError as exc:
        print(f"error: cannot plan {scenario}: {exc}", file=sys.stderr)
        return 1
    _print_tables(sc, report)
    if plot is not None:
        from edgespec.plan.plot import plot_report

        written = plot_report(report, sc, plot)
        print(f"figure written to {written}")
    if json_out:
        sys.stdout.flush()
        print(json.dumps(report_json(sc, report)))
    return 0


def _print_tables(sc: Scenario, report: PlanReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    joint = report.joint
    sysm = sc.system
    console.print(
        f"[bold]{sc.name}[/bold]: {len(sc.tasks)} tasks, {sysm.drafter.model.name} on {sysm.drafter.name} → "
        f"{sysm.verifier.model.name} on {sysm.verifier.name}, uplink {sc.uplink.bandwidth_hz / 1e6:g} MHz, "
        f"q={sysm.speculation.q_mode}"
    )
    console.print(_batch_table(Table, joint))
    console.print(_bandwidth_table(Table, sc, joint))
    console.print(_breakdown_table(Table, joint.latency.breakdown))
    console.print(_baseline_table(Table, report))
    console.print(
        f"predicted total serving latency {joint.makespan_s:.3f} s, mean task latency "
        f"{joint.latency.mean_task_latency_s:.3f} s; planned in {joint.elapsed_s * 1e3:.0f} ms "
        f"({joint.iterations} alternation step(s))"
    )


def _ids(ids) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids)) if len(ids) <= 8 else ", ".join(map(str, ids[:6])) + f", … ({len(ids)})"


def _batch_table(Table, joint: PlanResult):
    t = Table(title="Batches (in execution order)")
    for col in ("#", "tasks", "n", "γ", "pipelined", "rounds", "start s", "end s", "prefill s", "serve s"):
        t.add_column(col, justify="right" if col not in ("tasks", "pipelined") else "left")
    for m, (b, tm) in enumerate(zip(joint.batches, joint.latency.batches)):
        d = tm.detail
        t.add_row(str(m), _ids(b.task_ids), str(d.batch_size), str(d.gamma), "yes" if d.pipelined else "no",
                  str(d.rounds), f"{tm.start_s:.3f}", f"{tm.end_s:.3f}", f"{d.prefill_s:.3f}", f"{d.serve_s:.3f}")
    return t


def _bandwidth_table(Table, sc: Scenario, joint: PlanResult):
    index = {task.task_id: i for i, task in enumerate(sc.tasks)}
    if len(sc.tasks) <= 16:
        t = Table(title="Uplink bandwidth per task")
        for col in ("task", "upload bytes", "share kHz", "share %", "upload s", "latency s"):
            t.add_column(col, justify="right")
        for task, lat in zip(sc.tasks, joint.latency.tasks):
            i = index[task.task_id]
            t.add_row(str(task.task_id), f"{task.upload_bytes:.0f}", f"{joint.bandwidth_hz[i] / 1e3:.1f}",
                      f"{100 * joint.bandwidth_hz[i] / sc.uplink.bandwidth_hz:.1f}", f"{joint.upload_s[i]:.4f}",
                      f"{lat.breakdown.total_s:.3f}")
        return t
    t = Table(title="Uplink bandwidth per batch")
    for col in ("#", "share of B %", "min kHz", "max kHz", "last upload s", "batch start s"):
        t.add_column(col, justify="right")
    for m, (b, tm) in enumerate(zip(joint.batches, joint.latency.batches)):
        idx = [index[tid] for tid in b.task_ids]
        shares = joint.bandwidth_hz[idx]
        t.add_row(str(m), f"{100 * shares.sum() / sc.uplink.bandwidth_hz:.1f}", f"{shares.min() / 1e3:.1f}",
                  f"{shares.max() / 1e3:.1f}", f"{tm.ready_s:.4f}", f"{tm.start_s:.4f}")
    return t


def _breakdown_table(Table, bd: Breakdown):
    t = Table(title="Predicted latency breakdown (critical path of the makespan)")
    t.add_column("component")
    t.add_column("seconds", justify="right")
    t.add_column("%", justify="right")
    for key, label in _COMPONENTS:
        value = getattr(bd, key)
        t.add_row(label, f"{value:.4f}", f"{100 * value / bd.total_s:.1f}")
    t.add_row("[bold]total[/bold]", f"[bold]{bd.total_s:.4f}[/bold]", "100.0")
    return t


def _baseline_table(Table, report: PlanReport):
    t = Table(title="Joint plan vs baselines")
    for col in ("plan", "what it fixes", "latency s", "joint saves s", "reduction %"):
        t.add_column(col, justify="right" if col not in ("plan", "what it fixes") else "left")
    t.add_row("joint", "optimises batching, γ, pipelining, bandwidth", f"{report.joint.makespan_s:.3f}", "", "")
    reductions = report.reductions_pct()
    for name, base in report.baselines.items():
        t.add_row(name, _BASELINE_NOTES.get(name, ""), f"{base.makespan_s:.3f}",
                  f"{base.makespan_s - report.joint.makespan_s:.3f}", f"{reductions[name]:.1f}")
    return t


def report_json(sc: Scenario, report: PlanReport) -> dict:
    """The machine-readable plan: batches, bandwidth, predicted latency and breakdown, baselines and reductions."""
    joint = report.joint
    batches = [
        {
            "task_ids": list(b.task_ids), "gamma": b.gamma, "pipelined": tm.detail.pipelined,
            "rounds": tm.detail.rounds, "start_s": tm.start_s, "end_s": tm.end_s,
            "prefill_s": tm.detail.prefill_s, "serve_s": tm.detail.serve_s,
        }
        for b, tm in zip(joint.batches, joint.latency.batches)
    ]
    bd = joint.latency.breakdown
    return {
        "scenario": sc.name,
        "tasks": len(sc.tasks),
        "plan": {
            "batches": batches,
            "bandwidth_hz": [float(x) for x in joint.bandwidth_hz],
            "upload_s": [float(x) for x in joint.upload_s],
        },
        "predicted_latency_s": joint.makespan_s,
        "mean_task_latency_s": joint.latency.mean_task_latency_s,
        "breakdown": {key: getattr(bd, key) for key, _ in _COMPONENTS} | {"total_s": bd.total_s},
        "baselines": {name: b.makespan_s for name, b in report.baselines.items()},
        "reductions_pct": report.reductions_pct(),
        "planner_time_s": joint.elapsed_s,
    }
