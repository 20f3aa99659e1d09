"""Train AWC's learned correction (src/edgespec/policy/awc_weights.json) on oracle labels from the simulator.

What it does, seeded end to end:

1. Draws `--scenarios` random deployments around examples/sim_tiny.toml's cost model (LLaMA-68M
   drafts on an RTX-3080-class device, LLaMA-2-7B on an A100-class verifier, roofline costs); a
   share `--hetero-share` of them heterogeneous, with 2–3 drafter groups that split the nodes and
   each have their own link latency and jitter, uplink rate, loss, device slowdown and acceptance α;
   shared: prompt and answer lengths, number of drafter nodes and verifiers, and load (open-loop
   Poisson rate, or closed-loop users with think time).
2. Runs each scenario once per static γ in the grid (1…max γ) with `--requests` requests, the
   same seed for every γ (common random numbers). Every session runs the static policy *and*
   AWC's feature tracker (`AwcFeatures`, pooled per drafter group as a node pools its sessions),
   so the features recorded are what AWC would see at that operating point; a sample of the run's
   snapshots is kept (every 8th, up to 300 per group), the analytic τ is evaluated on each and
   averaged in log, the features are averaged.
3. **Objective: mean end-to-end latency** (per request, arrival → last token), per drafter group:
   one unit of labels per group, its mean latency at every γ. The regression target for the
   snapshots at γ_a and a candidate γ_b is log τ(γ_b) − mean log τ_analytic(γ_b | snapshots at
   γ_a), τ = the group's mean latency / mean answer tokens: what the hand-tuned model gets wrong
   about moving everyone from γ_a to γ_b.
4. Fits a ridge regression on features ⊗ (1, d, d²), d = (γ_b − γ_a)/8, choosing the ridge
   strength on held-out scenarios (the last 20 %), reports fit quality (R² of the residual) and
   regret (latency of the chosen static γ over the unit's best) for a global best static γ, the
   analytic fallback and the learned model, then refits on all units and writes the weights with
   metadata (grid, objective, fit quality, seed).

Run: .venv/bin/python scripts/train_awc.py [--quick] [--scenarios N] [--requests N] [--seed S] [--hetero-share F] [--out FILE] [--data FILE]
A full run (160 scenarios × 12 γ × 150 requests) took 473 s on one core here; --quick about 20 s.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import edgespec.sim.run as sim_run
from edgespec.policy.awc import (
    FEATURE_NAMES,
    GAMMA_BASIS,
    AwcFeatures,
    AwcModel,
    AwcNodeStats,
    analytic_tau,
    feature_vector,
)
from edgespec.policy.gamma import StaticGamma
from edgespec.sim.config import DrafterGroup, RequestClass, SimConfig, VerifierConfig, Workload
from edgespec.sim.links import LinkModel
from edgespec.sim.metrics import summarize
from edgespec.sim.scenario import load_sim_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "examples" / "sim_tiny.toml"
OUT = ROOT / "src" / "edgespec" / "policy" / "awc_weights.json"
GAMMA_SCALE = 8.0
SNAP_EVERY = 8  # keep every this-many-th complete snapshot of a run (after warm-up) ...
SNAP_KEEP = 300  # ... up to this many; the analytic model is evaluated on each of them


# ----------------------------------------------------------------------------- scenarios


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_group(rng: np.random.Generator, name: str, nodes: int) -> tuple[DrafterGroup, dict]:
    latency = _logu(rng, 0.001, 0.1)
    p = {
        "latency_s": latency,
        "jitter_s": latency * float(rng.uniform(0.0, 0.3)),
        "uplink_bps": _logu(rng, 2e6, 100e6),
        "loss": float(rng.choice([0.0, 0.0, 0.0, 0.005, 0.02])),
        "slowdown": _logu(rng, 0.5, 8.0),
        "alpha": float(rng.uniform(0.35, 0.92)),
        "nodes": nodes,
    }
    up = LinkModel(p["uplink_bps"], latency, p["jitter_s"], p["loss"])
    down = LinkModel(max(p["uplink_bps"], 20e6), latency, p["jitter_s"], p["loss"])
    return DrafterGroup(name, nodes, up, down, slowdown=p["slowdown"], alpha=p["alpha"]), p


def random_scenario(base: SimConfig, rng: np.random.Generator, requests: int, seed: int, hetero_share: float = 0.0) -> tuple[SimConfig, dict]:
    """One random deployment around `base`'s cost model (homogeneous, or 2–3 groups with a share `hetero_share`); returns the config and its parameters."""
    n_groups = int(rng.choice([2, 3])) if rng.random() < hetero_share else 1
    total = max(int(round(_logu(rng, 1, 48))), n_groups)
    split = [total // n_groups + (1 if k < total % n_groups else 0) for k in range(n_groups)]
    drawn = [_random_group(rng, f"g{k}", split[k]) for k in range(n_groups)]
    groups = tuple(g for g, _ in drawn)
    p = dict(drawn[0][1]) if n_groups == 1 else {"groups": [gp for _, gp in drawn]}
    p.update({
        "nodes": total,
        "verifiers": int(rng.choice([1, 1, 2, 4])),
        "input_tokens": int(rng.choice([64, 128, 256, 512])),
        "output_tokens": int(rng.choice([64, 128, 256])),
        "closed": bool(rng.random() < 0.3),
    })
    if p["closed"]:
        p["users_per_node"] = int(rng.choice([1, 2, 4]))
        p["think_time_s"] = float(rng.uniform(0.0, 2.0))
        workload = Workload("closed", requests, users_per_node=p["users_per_node"], think_time_s=p["think_time_s"])
    else:
        # load relative to a rough verifier capacity (≈ 4,000 tokens/s per verifier at γ = 4)
        p["load"] = _logu(rng, 0.05, 1.0)
        p["rate_per_s"] = p["load"] * 4000.0 * p["verifiers"] / p["output_tokens"]
        workload = Workload("poisson", requests, rate_per_s=p["rate_per_s"])
    cfg = replace(base, classes=(RequestClass("req", p["input_tokens"], p["output_tokens"]),), drafters=groups,
                  verifiers=VerifierConfig(count=p["verifiers"], window_s=0.002, kv_budget_tokens=0), workload=workload,
                  slo=replace(base.slo), seed=seed, name=f"train-{seed}")
    return cfg, p


def describe(p: dict) -> str:
    """One line about a scenario's drafter groups (for progress)."""
    gs = p.get("groups", [p])
    return " | ".join(f"α={g['alpha']:.2f} slow×{g['slowdown']:.1f} lat {g['latency_s'] * 1e3:5.1f} ms nodes {g['nodes']:2d}" for g in gs)


# ----------------------------------------------------------------------------- recording runs


class _Recorder(StaticGamma):
    """Static γ that also runs AWC's feature tracker (pooled per drafter group, as a node pools) and keeps a sample of its snapshots."""

    def __init__(self, gamma: int, node: AwcNodeStats, kept: dict) -> None:
        super().__init__(gamma)
        self.features, self.kept = AwcFeatures(gamma_prior=float(gamma), node=node), kept

    def observe(self, obs) -> None:
        self.features.update(obs)
        kept = self.kept
        if self.features.rounds >= 3 and self.features.verify_s is not None and self.features.rtt_s is not None:
            kept["seen"] += 1
            if kept["seen"] % SNAP_EVERY == 0 and len(kept["snaps"]) < SNAP_KEEP:
                kept["snaps"].append(self.features.snapshot())


def run_static(cfg: SimConfig, gamma: int, grid: list[int]) -> dict[str, dict]:
    """One run at static γ; per drafter group: mean latency, answer tokens, mean features and, per γ_b of the grid, the mean log τ_analytic over its snapshots."""
    kept = {g.name: {"seen": 0, "snaps": []} for g in cfg.drafters}
    nodes = {g.name: AwcNodeStats() for g in cfg.drafters}  # a node's pool, approximated by its group's (same links, devices, α)
    c = replace(cfg, speculation=replace(cfg.speculation, gamma_policy="static", gamma=gamma, max_gamma=max(gamma, cfg.speculation.max_gamma)),
                policy_factory=lambda klass, group: _Recorder(gamma, nodes[group.name], kept[group.name]))
    report = summarize(sim_run.simulate(c))
    out = {}
    for name, pg in report.per_group.items():
        snaps = [sn for sn in kept[name]["snaps"] if sn.complete]
        tokens = pg["tokens"] / max(pg["requests"], 1)
        row = {"gamma": gamma, "e2e_mean_s": pg["e2e_mean_s"], "throughput_tok_per_s": report.throughput_tok_per_s,
               "tokens_per_request": tokens, "tau_s": pg["e2e_mean_s"] / max(tokens, 1.0), "snapshots": len(snaps),
               "features": None, "gamma_obs": None, "log_tau_analytic": None}
        if snaps:
            xs = np.array([feature_vector(sn) for sn in snaps])
            row["features"] = xs.mean(axis=0).tolist()
            row["gamma_obs"] = float(np.mean([sn.gamma_obs for sn in snaps]))
            row["log_tau_analytic"] = {str(b): float(np.mean([math.log(analytic_tau(sn, b)) for sn in snaps])) for b in grid}
        out[name] = row
    return out


# ----------------------------------------------------------------------------- fitting


def design(x: list[float], gamma_obs: float, gamma: int) -> np.ndarray:
    d = (gamma - gamma_obs) / GAMMA_SCALE
    return np.outer(np.asarray(x), [1.0, d, d * d]).ravel()  # [feature][basis], as AwcModel.coef


def pairs(scenarios: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (mean features at γ_a ⊗ basis of γ_b), targets (log τ_b − mean log τ_analytic(γ_b | γ_a's snapshots)), scenario index."""
    X, y, sid = [], [], []
    for i, sc in enumerate(scenarios):
        for a in sc["runs"]:
            if a["features"] is None:
                continue
            for b in sc["runs"]:
                X.append(design(a["features"], a["gamma_obs"], b["gamma"]))
                y.append(math.log(b["tau_s"]) - a["log_tau_analytic"][str(b["gamma"])])
                sid.append(i)
    return np.array(X), np.array(y), np.array(sid)


def ridge(X: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    n_feat = X.shape[1]
    reg = lam * np.eye(n_feat)
    reg[0, 0] = 0.0  # no shrinkage on the intercept
    return np.linalg.solve(X.T @ X / len(y) + reg, X.T @ y / len(y))


def model_of(w: np.ndarray) -> AwcModel:
    coef = w.reshape(len(FEATURE_NAMES), len(GAMMA_BASIS))
    return AwcModel(tuple(tuple(float(v) for v in row) for row in coef), GAMMA_SCALE, {})


def choose(a: dict, grid: list[int], model) -> int:
    """The γ in `grid` that AWC (this model, or the fallback when None) would pick from run `a`'s features (ties to the shorter)."""
    def score(b: int) -> float:
        s = a["log_tau_analytic"][str(b)]
        if model is not None:
            r = model.residual(a["features"], b, a["gamma_obs"])
            s += max(min(r, 5.0), -5.0)
        return s
    return min(grid, key=lambda b: (score(b), b))


def regrets(scenarios: list[dict], model, fixed: int | None = None) -> list[float]:
    """Latency of the chosen static γ over the scenario's best, minus 1, at every operating point of every scenario."""
    out = []
    for sc in scenarios:
        by_gamma = {r["gamma"]: r["e2e_mean_s"] for r in sc["runs"]}
        best = min(by_gamma.values())
        grid = sorted(by_gamma)
        for a in sc["runs"]:
            if fixed is not None:
                g = fixed
            elif a["features"] is None:
                continue
            else:
                g = choose(a, grid, model)
            out.append(by_gamma[g] / best - 1.0)
    return out


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - np.sum((y - pred) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-18))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="24 scenarios × γ ∈ {1,2,4,6,8,12} × 60 requests (about a minute)")
    ap.add_argument("--scenarios", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--max-gamma", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--data", type=Path, default=None, help="also write the raw sweep (every scenario × γ) as JSON here")
    ap.add_argument("--hetero-share", type=float, default=0.4, help="share of scenarios with 2–3 drafter groups of their own links, devices and α")
    args = ap.parse_args(argv)
    n_sc = args.scenarios or (24 if args.quick else 160)
    requests = args.requests or (60 if args.quick else 150)
    grid = [g for g in (1, 2, 4, 6, 8, 12) if g <= args.max_gamma] if args.quick else list(range(1, args.max_gamma + 1))

    base = load_sim_config(BASE)
    base = replace(base, speculation=replace(base.speculation, max_gamma=args.max_gamma), slo=base.slo)
    rng = np.random.default_rng(args.seed)
    scenarios, started = [], time.perf_counter()
    print(f"sweeping {n_sc} scenarios × γ {grid} × {requests} requests (seed {args.seed}, objective: mean end-to-end latency)", file=sys.stderr)
    for i in range(n_sc):
        cfg, params = random_scenario(base, rng, requests, seed=args.seed * 100_003 + i, hetero_share=args.hetero_share)
        per_gamma = [run_static(cfg, g, grid) for g in grid]
        # one unit of oracle labels per drafter group: its sessions' latency when every group moves to γ_b
        for k, group in enumerate(cfg.drafters):
            runs = [pg[group.name] for pg in per_gamma if group.name in pg]
            if len(runs) < len(grid):
                continue
            best = min(runs, key=lambda r: r["e2e_mean_s"])
            gp = params["groups"][k] if "groups" in params else params
            scenarios.append({"params": params, "group": group.name, "group_params": gp, "runs": runs, "oracle_gamma": best["gamma"],
                              "scenario": i})
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (n_sc - i - 1)
        oracle = "/".join(str(u["oracle_gamma"]) for u in scenarios if u["scenario"] == i)
        print(f"[{i + 1:4d}/{n_sc}] oracle γ={oracle:>8s}  {describe(params)}  V={params['verifiers']}  "
              f"{elapsed:6.0f} s elapsed, ~{eta:4.0f} s left", file=sys.stderr, flush=True)

    # held-out evaluation: the last 20 % of scenarios (all groups of a scenario on the same side)
    n_test = max(1, n_sc // 5)
    train = [u for u in scenarios if u["scenario"] < n_sc - n_test]
    test = [u for u in scenarios if u["scenario"] >= n_sc - n_test]
    Xtr, ytr, _ = pairs(train)
    Xte, yte, _ = pairs(test)
    fits = []
    for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        w = ridge(Xtr, ytr, lam)
        fits.append({"ridge": lam, "r2_train": r2(ytr, Xtr @ w), "r2_test": r2(yte, Xte @ w),
                     "regret_test": float(np.mean(regrets(test, model_of(w))))})
    chosen = min(fits, key=lambda f: f["regret_test"])
    static_regret = {g: float(np.mean(regrets(train, None, fixed=g))) for g in grid}
    global_gamma = min(static_regret, key=static_regret.get)
    evaluation = {
        "heldout_scenarios": n_test,
        "ridge_search": fits,
        "ridge": chosen["ridge"],
        "r2_residual_test": chosen["r2_test"],
        "mean_regret_test": {
            f"global best static γ={global_gamma} (chosen on train)": float(np.mean(regrets(test, None, fixed=global_gamma))),
            "analytic fallback": float(np.mean(regrets(test, None))),
            "learned model": chosen["regret_test"],
        },
    }
    X, y, _ = pairs(scenarios)
    w = ridge(X, y, chosen["ridge"])
    oracle = [sc["oracle_gamma"] for sc in scenarios]
    metadata = {
        "trained_by": "scripts/train_awc.py" + (" --quick" if args.quick else ""),
        "seed": args.seed,
        "objective": "mean end-to-end latency per request (oracle = best static γ per scenario and drafter group); target: "
                     "log τ(γ_b) − mean log τ_analytic(γ_b | the snapshots at γ_a), τ = the group's mean latency / mean answer tokens",
        "grid": {"gamma": grid, "scenarios": n_sc, "requests_per_scenario": requests,
                 "latency_s": [0.001, 0.1], "jitter": "0–0.3 × latency", "uplink_bps": [2e6, 100e6],
                 "loss": [0.0, 0.005, 0.02], "slowdown": [0.5, 8.0], "alpha": [0.35, 0.92], "nodes": [1, 48],
                 "verifiers": [1, 2, 4], "input_tokens": [64, 128, 256, 512], "output_tokens": [64, 128, 256],
                 "workload": "70 % Poisson at 0.05–1.0 × ~4,000 tok/s per verifier, 30 % closed loop (1/2/4 users per node, think 0–2 s)",
                 "costs": "examples/sim_tiny.toml roofline: LLaMA-68M (RTX-3080 class) → LLaMA-2-7B (A100 class)",
                 "heterogeneous": f"{args.hetero_share:.0%} of scenarios have 2–3 drafter groups, each its own link, device and α "
                                  "(nodes split among them); one unit of labels per group",
                 "units": len(scenarios)},
        "oracle_gamma_histogram": {str(g): oracle.count(g) for g in grid},
        "fit": {"r2_residual_all": r2(y, X @ w), "rows": int(len(y)), **evaluation},
        "sweep_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(model_of(w).to_json(metadata), indent=1) + "\n", encoding="utf-8")
    if args.data is not None:
        args.data.write_text(json.dumps(scenarios), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    for k, v in evaluation["mean_regret_test"].items():
        print(f"  held-out mean regret, {k}: {100 * v:.2f} %", file=sys.stderr)
    print(f"  residual R² held-out {chosen['r2_test']:.3f} (ridge {chosen['ridge']})", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "scenarios": n_sc, "grid": grid, "ridge": chosen["ridge"],
                      "r2_residual_test": round(chosen["r2_test"], 4),
                      "mean_regret_test": {k: round(v, 4) for k, v in evaluation["mean_regret_test"].items()},
                      "oracle_gamma_histogram": metadata["oracle_gamma_histogram"], "seconds": metadata["sweep_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
