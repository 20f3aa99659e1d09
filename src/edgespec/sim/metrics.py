"""Metrics computed after a run from the recorded timestamps: latency percentiles, TTFT, TPOT, throughput, goodput, utilisation, breakdowns."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgespec.sim.config import Slo
from edgespec.sim.run import SimRun

__all__ = ["Distribution", "SimReport", "summarize", "BREAKDOWN", "write_requests_csv"]

BREAKDOWN = ("draft_s", "upload_s", "queue_s", "verify_s", "downlink_s", "admission_s")


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one quantity over requests (seconds unless named otherwise)."""

    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @staticmethod
    def of(values: Sequence[float] | np.ndarray) -> "Distribution":
        v = np.asarray(values, dtype=float)
        if v.size == 0:
            return Distribution(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"))
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        return Distribution(float(v.mean()), float(p50), float(p95), float(p99), float(v.max()))


@dataclass(frozen=True)
class SimReport:
    """Everything `edgespec sim` prints: per-request latency figures, system throughput and utilisation, and the time breakdown."""

    requests: int
    mode: str
    makespan_s: float
    e2e_s: Distribution
    ttft_s: Distribution
    tpot_s: Distribution
    throughput_tok_per_s: float
    requests_per_s: float
    goodput_req_per_s: float
    slo_attainment: float
    tokens_per_round: float
    acceptance: float  # accepted / drafted (vLLM's definition)
    mean_gamma: float
    verifier_utilisation: tuple[float, ...]
    drafter_utilisation_mean: float
    batch_size: Distribution
    queue_depth: Distribution
    uplink_bytes: float
    uplink_bytes_per_token: float
    refusals: int
    breakdown_s: dict  # mean seconds per request in each phase (they add up to the mean end-to-end latency)
    per_group: dict  # drafter group name -> {requests, e2e mean, ttft mean, throughput share}
    events: int
    wall_s: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def conversations_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else float("inf")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["events_per_s"] = self.events_per_s
        out["conversations_per_s"] = self.conversations_per_s
        return out


def _meets(slo: Slo, ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray) -> np.ndarray:
    ok = np.ones(len(e2e), dtype=bool)
    if slo.ttft_s is not None:
        ok &= ttft <= slo.ttft_s
    if slo.tpot_s is not None:
        ok &= tpot <= slo.tpot_s
    if slo.e2e_s is not None:
        ok &= e2e <= slo.e2e_s
    return ok


def summarize(run: SimRun) -> SimReport:
    """Turn a run's records into a report."""
    cfg = run.config
    ss = sorted(run.sessions, key=lambda s: s.key)
    n = len(ss)
    arrival = np.array([s.arrival_s for s in ss])
    first = np.array([s.first_token_s for s in ss])
    finish = np.array([s.finish_s for s in ss])
    out_tokens = np.array([s.emitted for s in ss], dtype=float)
    e2e, ttft = finish - arrival, first - arrival
    tpot = np.where(out_tokens > 1, (finish - first) / np.maximum(out_tokens - 1, 1), 0.0)
    start = float(arrival.min()) if n else 0.0
    span = max(float(finish.max()) - start, 1e-12) if n else 0.0
    ok = _meets(cfg.slo, ttft, tpot, e2e)
    rounds = sum(s.rounds for s in ss)
    drafted = sum(s.drafted for s in ss)
    accepted = sum(s.accepted for s in ss)
    uplink = sum(d.uplink.bytes_sent for d in run.drafters)
    groups: dict[str, dict] = {}
    for g, group in enumerate(cfg.drafters):
        mine = np.array([s.node.group == g for s in ss])
        if mine.any():
            groups[group.name] = {"requests": int(mine.sum()), "e2e_mean_s": float(e2e[mine].mean()),
                                  "ttft_mean_s": float(ttft[mine].mean()), "tokens": int(out_tokens[mine].sum())}
    batch_sizes = [b for v in run.verifiers for b in v.batch_sizes]
    depths = [d for v in run.verifiers for d in v.queue_depths]
    return SimReport(
        requests=n,
        mode=cfg.speculation.mode,
        makespan_s=span,
        e2e_s=Distribution.of(e2e),
        ttft_s=Distribution.of(ttft),
        tpot_s=Distribution.of(tpot),
        throughput_tok_per_s=float(out_tokens.sum()) / span if n else 0.0,
        requests_per_s=n / span if n else 0.0,
        goodput_req_per_s=float(ok.sum()) / span if n else 0.0,
        slo_attainment=float(ok.mean()) if n else 0.0,
        tokens_per_round=float(out_tokens.sum()) / rounds if rounds else 0.0,
        acceptance=accepted / drafted if drafted else 0.0,
        mean_gamma=drafted / rounds if rounds else 0.0,
        verifier_utilisation=tuple(v.busy_s / span if span else 0.0 for v in run.verifiers),
        drafter_utilisation_mean=float(np.mean([d.busy_s for d in run.drafters])) / span if span else 0.0,
        batch_size=Distribution.of(batch_sizes),
        queue_depth=Distribution.of(depths),
        uplink_bytes=uplink,
        uplink_bytes_per_token=uplink / float(out_tokens.sum()) if n else 0.0,
        refusals=sum(v.refusals for v in run.verifiers),
        breakdown_s={k: float(np.mean([getattr(s, k) for s in ss])) if n else 0.0 for k in BREAKDOWN},
        per_group=groups,
        events=run.events,
        wall_s=run.wall_s,
    )


REQUEST_COLUMNS = ("request", "class", "drafter_node", "drafter_group", "verifier", "arrival_s", "first_token_s", "finish_s",
                   "ttft_s", "e2e_s", "input_tokens", "output_tokens", "rounds", "drafted", "accepted") + BREAKDOWN


def write_requests_csv(run: SimRun, path: Path | str) -> None:
    """One row per request: its timestamps, derived latencies, SD counters and time per phase."""
    groups = [g.name for g in run.config.drafters]
    classes = [c.name for c in run.config.classes]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(REQUEST_COLUMNS)
        for s in sorted(run.sessions, key=lambda s: s.key):
            out.writerow([s.key, classes[s.klass], s.node.index, groups[s.node.group], s.verifier, s.arrival_s, s.first_token_s,
                          s.finish_s, s.first_token_s - s.arrival_s, s.finish_s - s.arrival_s, s.prompt_tokens, s.emitted,
                          s.rounds, s.drafted, s.accepted] + [getattr(s, k) for k in BREAKDOWN])
