"""Figures of a simulation run: latency CDFs, the per-request time breakdown, batch sizes and utilisation (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgespec.sim.metrics import BREAKDOWN, SimReport
from edgespec.sim.run import SimRun

__all__ = ["plot_run"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run: SimRun, report: SimReport, out_dir: Path | str) -> list[Path]:
    """Write `latency.png` (CDFs of end-to-end latency and TTFT) and `system.png` (breakdown, batch sizes, utilisation)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ss = run.sessions
    e2e = np.sort([s.finish_s - s.arrival_s for s in ss])
    ttft = np.sort([s.first_token_s - s.arrival_s for s in ss])
    cdf = np.arange(1, len(ss) + 1) / max(len(ss), 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(e2e, cdf, label="end-to-end")
    ax.plot(ttft, cdf, label="time to first token")
    for slo, name in ((run.config.slo.e2e_s, "e2e SLO"), (run.config.slo.ttft_s, "TTFT SLO")):
        if slo is not None:
            ax.axvline(slo, ls="--", lw=1, color="grey")
            ax.text(slo, 0.02, f" {name}", rotation=90, va="bottom", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{run.config.name}: {report.requests} requests, mode {report.mode}")
    ax.grid(alpha=0.3)
    ax.legend()
    latency = out / "latency.png"
    fig.tight_layout()
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [k.removesuffix("_s") for k in BREAKDOWN]
    axes[0].bar(names, [report.breakdown_s[k] for k in BREAKDOWN], color="tab:blue")
    axes[0].set_ylabel("mean seconds per request")
    axes[0].set_title("where a request's time goes")
    sizes = [b for v in run.verifiers for b in v.batch_sizes]
    if sizes:
        axes[1].hist(sizes, bins=range(1, max(sizes) + 2), align="left", color="tab:orange")
    axes[1].set_xlabel("drafts per verification batch")
    axes[1].set_ylabel("batches")
    axes[1].set_title("batch sizes")
    labels = [f"verifier {v.index}" for v in run.verifiers] + ["drafters (mean)"]
    axes[2].bar(labels, list(report.verifier_utilisation) + [report.drafter_utilisation_mean], color="tab:green")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_ylabel("busy fraction")
    axes[2].set_title("utilisation")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"edgespec sim — {run.config.name}")
    system = out / "system.png"
    fig.tight_layout()
    fig.savefig(system, dpi=110)
    plt.close(fig)
    return [latency, system]
