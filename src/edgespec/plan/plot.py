"""Figures of a plan: batch timeline over the upload curve, joint plan against baselines, and bandwidth shares (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgespec.plan.joint import PlanReport
from edgespec.plan.scenario import Scenario


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: PlanReport, scenario: Scenario, path: Path | str) -> Path:
    """Write a three-panel PNG of the joint plan; returns the path."""
    plt = _pyplot()
    joint = report.joint
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _timeline(axes[0], joint, max(scenario.planner.gamma_max, 1))
    _baselines(axes[1], report)
    _shares(axes[2], joint, scenario)
    fig.suptitle(f"edgespec plan — {scenario.name} ({len(scenario.tasks)} tasks)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timeline(ax, joint, gmax: int) -> None:
    ups = np.sort(joint.upload_s)
    ax.step(ups, np.arange(1, len(ups) + 1), where="post", color="0.4", label="uploads done")
    cmap = _pyplot().get_cmap("viridis")
    done = 0
    for batch, timing in zip(joint.batches, joint.latency.batches):
        n = len(batch.task_ids)
        ax.barh(done + n / 2, timing.end_s - timing.start_s, left=timing.start_s, height=n,
                color=cmap(batch.gamma / gmax), edgecolor="k", linewidth=0.5)
        label = f"γ={batch.gamma}{'·pipe' if batch.pipelined else ''}"
        ax.text(timing.start_s, done + n / 2, " " + label, va="center", fontsize=7)
        done += n
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tasks (cumulative)")
    ax.set_title("batches over time (colour = γ)")
    ax.legend(loc="lower right", fontsize=7)


def _baselines(ax, report: PlanReport) -> None:
    names = ["joint", *report.baselines]
    values = [report.joint.makespan_s, *(b.makespan_s for b in report.baselines.values())]
    bars = ax.bar(range(len(names)), values, color=["tab:green"] + ["tab:gray"] * (len(names) - 1))
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("predicted total serving latency (s)")
    ax.set_title("joint plan vs baselines")


def _shares(ax, joint, scenario: Scenario) -> None:
    k = np.arange(len(scenario.tasks))
    ax.bar(k, joint.bandwidth_hz / 1e3, color="tab:blue", width=1.0)
    ax.axhline(scenario.uplink.bandwidth_hz / len(k) / 1e3, color="tab:red", linestyle="--", label="uniform")
    ax.set_xlabel("task")
    ax.set_ylabel("bandwidth share (kHz)")
    ax.set_title("uplink bandwidth per task")
    ax.legend(fontsize=7)
