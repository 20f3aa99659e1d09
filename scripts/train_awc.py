"""Train AWC's learned correction (src/edgespec/policy/awc_weights.json) on oracle labels from the simulator.

What it does, seeded end to end:

1. Draws `--scenarios` random homogeneous deployments around examples/sim_tiny.toml's cost model
   (LLaMA-68M drafts on an RTX-3080-class device, LLaMA-2-7B on an A100-class verifier, roofline
   costs): link latency and jitter, uplink rate, loss, device slowdown, acceptance α, prompt and
   answer lengths, number of drafter nodes, number of verifiers, and load (open-loop Poisson rate,
   or closed-loop users with think time).
2. Runs each scenario once per static γ in the grid (1…max γ) with `--requests` requests, the
   same seed for every γ (common random numbers). Every session runs the static policy *and*
   AWC's feature tracker (`AwcFeatures`), so the features recorded are exactly what AWC would see
   at that operating point; they are averaged over the run's rounds.
3. **Objective: mean end-to-end latency** (per request, arrival → last token). The oracle label of a
   scenario is the static γ with the least mean latency; every γ's latency is kept too. The
   regression target for features observed at γ_a and a candidate γ_b is
   log τ(γ_b) − log τ_analytic(γ_b | features at γ_a), τ = mean latency / mean answer tokens:
   what the hand-tuned model gets wrong about moving everyone from γ_a to γ_b.
4. Fits a ridge regression on features ⊗ (1, d, d²), d = (γ_b − γ_a)/8, choosing the ridge
   strength on held-out scenarios (20 %), reports fit quality (R² of the residual) and regret
   (latency of the chosen static γ over the oracle's) for a global best static γ, the analytic
   fallback and the learned model, then refits on all scenarios and writes the weights with
   metadata (grid, objective, fit quality, seed).

Run: .venv/bin/python scripts/train_awc.py [--quick] [--scenarios N] [--requests N] [--seed S] [--out FILE]
A full run (160 scenarios × 12 γ × 150 requests) took 745 s (12.4 minutes) on one core here; --quick about 25 s.
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
    AwcGamma,
    AwcModel,
    AwcSnapshot,
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
SNAP_FIELDS = ("alpha", "gamma_obs", "draft_per_token_s", "verify_s", "rtt_s", "upload_s", "queue", "queue_trend")


# ----------------------------------------------------------------------------- scenarios


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def random_scenario(base: SimConfig, rng: np.random.Generator, requests: int, seed: int) -> tuple[SimConfig, dict]:
    """One random homogeneous deployment around `base`'s cost model; returns the config and its parameters."""
    latency = _logu(rng, 0.001, 0.1)
    p = {
        "latency_s": latency,
        "jitter_s": latency * float(rng.uniform(0.0, 0.3)),
        "uplink_bps": _logu(rng, 2e6, 100e6),
        "loss": float(rng.choice([0.0, 0.0, 0.0, 0.005, 0.02])),
        "slowdown": _logu(rng, 0.5, 8.0),
        "alpha": float(rng.uniform(0.35, 0.92)),
        "nodes": int(round(_logu(rng, 1, 48))),
        "verifiers": int(rng.choice([1, 1, 2, 4])),
        "input_tokens": int(rng.choice([64, 128, 256, 512])),
        "output_tokens": int(rng.choice([64, 128, 256])),
        "closed": bool(rng.random() < 0.3),
    }
    up = LinkModel(p["uplink_bps"], latency, p["jitter_s"], p["loss"])
    down = LinkModel(max(p["uplink_bps"], 20e6), latency, p["jitter_s"], p["loss"])
    group = DrafterGroup("nodes", p["nodes"], up, down, slowdown=p["slowdown"], alpha=p["alpha"])
    if p["closed"]:
        p["users_per_node"] = int(rng.choice([1, 2, 4]))
        p["think_time_s"] = float(rng.uniform(0.0, 2.0))
        workload = Workload("closed", requests, users_per_node=p["users_per_node"], think_time_s=p["think_time_s"])
    else:
        # load relative to a rough verifier capacity (≈ 4,000 tokens/s per verifier at γ = 4)
        p["load"] = _logu(rng, 0.05, 1.0)
        p["rate_per_s"] = p["load"] * 4000.0 * p["verifiers"] / p["output_tokens"]
        workload = Workload("poisson", requests, rate_per_s=p["rate_per_s"])
    cfg = replace(base, classes=(RequestClass("req", p["input_tokens"], p["output_tokens"]),), drafters=(group,),
                  verifiers=VerifierConfig(count=p["verifiers"], window_s=0.002, kv_budget_tokens=0), workload=workload,
                  slo=replace(base.slo), seed=seed, name=f"train-{seed}")
    return cfg, p


# ----------------------------------------------------------------------------- recording runs


class _Recorder(StaticGamma):
    """Static γ that also runs AWC's feature tracker and adds its snapshots (after warm-up) to a shared sum."""

    def __init__(self, gamma: int, sums: dict) -> None:
        super().__init__(gamma)
        self.features, self.sums = AwcFeatures(gamma_prior=float(gamma)), sums

    def observe(self, obs) -> None:
        self.features.update(obs)
        snap = self.features.snapshot()
        if snap.complete and snap.rounds >= 3:
            sums = self.sums
            sums["n"] += 1
            for k in SNAP_FIELDS:
                v = getattr(snap, k)
                sums[k] += 0.0 if v is None else v


def run_static(cfg: SimConfig, gamma: int) -> dict:
    """One run at static γ: mean latency, answer tokens, and the mean AWC snapshot over the run's rounds."""
    sums = dict.fromkeys(("n",) + SNAP_FIELDS, 0.0)
    c = replace(cfg, speculation=replace(cfg.speculation, gamma_policy="static", gamma=gamma, max_gamma=max(gamma, cfg.speculation.max_gamma)),
                policy_factory=lambda klass, group: _Recorder(gamma, sums))
    report = summarize(sim_run.simulate(c))
    n = sums.pop("n")
    snap = {k: (v / n if n else None) for k, v in sums.items()}
    tokens = report.throughput_tok_per_s * report.makespan_s / max(report.requests, 1)
    return {"gamma": gamma, "e2e_mean_s": report.e2e_s.mean, "throughput_tok_per_s": report.throughput_tok_per_s,
            "tokens_per_request": tokens, "tau_s": report.e2e_s.mean / max(tokens, 1.0), "snapshot": snap, "rounds_seen": int(n)}


def snapshot_of(d: dict) -> AwcSnapshot:
    return AwcSnapshot(rounds=10, alpha=d["alpha"], gamma_obs=d["gamma_obs"], draft_per_token_s=d["draft_per_token_s"],
                       verify_s=d["verify_s"], rtt_s=d["rtt_s"], upload_s=d["upload_s"], queue=d["queue"], queue_trend=d["queue_trend"])


# ----------------------------------------------------------------------------- fitting


def design(snap: AwcSnapshot, gamma: int) -> np.ndarray:
    x = np.asarray(feature_vector(snap))
    d = (gamma - snap.gamma_obs) / GAMMA_SCALE
    return np.outer(x, [1.0, d, d * d]).ravel()  # [feature][basis], as AwcModel.coef


def pairs(scenarios: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (features at γ_a ⊗ basis of γ_b), targets (log τ_b − log τ_analytic), and each row's scenario index."""
    X, y, sid = [], [], []
    for i, sc in enumerate(scenarios):
        for a in sc["runs"]:
            if a["snapshot"]["alpha"] is None:
                continue
            snap = snapshot_of(a["snapshot"])
            for b in sc["runs"]:
                X.append(design(snap, b["gamma"]))
                y.append(math.log(b["tau_s"]) - math.log(analytic_tau(snap, b["gamma"])))
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


def choose(snap: AwcSnapshot, grid: list[int], model) -> int:
    """The γ in `grid` that AWC (this model, or the fallback when None) would pick from `snap`."""
    policy = AwcGamma(max_gamma=max(grid), min_gamma=1, model=model, min_rounds=0)
    return min(grid, key=lambda g: (policy.predicted_tau(snap, g), g))


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
            elif a["snapshot"]["alpha"] is None:
                continue
            else:
                g = choose(snapshot_of(a["snapshot"]), grid, model)
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
        cfg, params = random_scenario(base, rng, requests, seed=args.seed * 100_003 + i)
        runs = [run_static(cfg, g) for g in grid]
        best = min(runs, key=lambda r: r["e2e_mean_s"])
        scenarios.append({"params": params, "runs": runs, "oracle_gamma": best["gamma"]})
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (n_sc - i - 1)
        print(f"[{i + 1:4d}/{n_sc}] oracle γ={best['gamma']:2d} latency {best['e2e_mean_s'] * 1e3:8.1f} ms "
              f"(γ=4: {next(r['e2e_mean_s'] for r in runs if r['gamma'] == 4) * 1e3:8.1f} ms)  α={params['alpha']:.2f} "
              f"slow×{params['slowdown']:.1f} lat {params['latency_s'] * 1e3:5.1f} ms nodes {params['nodes']:2d} "
              f"V={params['verifiers']}  {elapsed:6.0f} s elapsed, ~{eta:4.0f} s left", file=sys.stderr, flush=True)

    # held-out evaluation: last 20 % of scenarios
    n_test = max(1, n_sc // 5)
    train, test = scenarios[:-n_test], scenarios[-n_test:]
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
        "objective": "mean end-to-end latency per request (oracle = best static γ per scenario); target: "
                     "log τ(γ_b) − log τ_analytic(γ_b | features at γ_a), τ = mean latency / mean answer tokens",
        "grid": {"gamma": grid, "scenarios": n_sc, "requests_per_scenario": requests,
                 "latency_s": [0.001, 0.1], "jitter": "0–0.3 × latency", "uplink_bps": [2e6, 100e6],
                 "loss": [0.0, 0.005, 0.02], "slowdown": [0.5, 8.0], "alpha": [0.35, 0.92], "nodes": [1, 48],
                 "verifiers": [1, 2, 4], "input_tokens": [64, 128, 256, 512], "output_tokens": [64, 128, 256],
                 "workload": "70 % Poisson at 0.05–1.0 × ~4,000 tok/s per verifier, 30 % closed loop (1/2/4 users per node, think 0–2 s)",
                 "costs": "examples/sim_tiny.toml roofline: LLaMA-68M (RTX-3080 class) → LLaMA-2-7B (A100 class)"},
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
