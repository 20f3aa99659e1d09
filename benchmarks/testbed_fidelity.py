"""Testbed fidelity: one scenario three ways — the latency model (`edgespec plan`'s), the simulator (`edgespec sim`) and the testbed.

Regime: examples/testbed_hetero.toml by default — four drafter nodes with the bundled draft on links of
1, 5, 20 and 100 Mbit/s up (5-50 ms one way), two of them on devices twice as slow (a CPU quota of half
a core), one verifier with the bundled target (its own core: `taskset`), greedy, static γ = 4, one
closed-loop user per node, 64-token answers. Costs and acceptance for model and simulator come from
this machine's measured pair profile (examples/profiles/bundled_pair_cpu.json).

Steps:
1. Testbed (`edgespec.testbed`): namespaces, tbf bandwidth, the user-space relay for latency, real
   `edgespec serve` / `edgespec edge` processes; the workload through each node's OpenAI API. Per node:
   mean end-to-end latency, mean TTFT, tokens/s, uplink bytes per token (counted by the relay). From the
   verifier's /metrics: mean verification time per batch and mean batch size.
2. Simulator on the same scenario, averaged over `--seeds` seeds, two versions:
   - `profile`: the scenario as written (nothing from the testbed run);
   - `calibrated`: the target's profile tables × the in-run ratio of the verifier's mean target-forward
     time per batch to the profile's prediction for the batches it ran, and the drafter nodes' measured per-round
     framework time (round − forwards − busy wait − the link's own latency and transfer) added as
     one-way latency, half each way, and each node's draft passes as long as they were in the run (its
     mean pass time over the profile's γ steps × its slowdown, a factor on its slowdown). All are
     measurements of this testbed run, as is the acceptance curve (the verifier's per-position counters:
     the profile's curve was measured on 128-token answers, these are 64); nothing is fitted to the
     end-to-end figures.
3. Latency model (paper 2510.11331's, `edgespec.plan.latency`) per node: prefill, then
   rounds(α, γ) × (draft γ steps × slowdown + upload + verify of the static batch of all nodes + downlink)
   on that node's link, with α the i.i.d. acceptance that gives the profile curve's tokens per round;
   `model calibrated` scales verification and adds the per-round framework time as the simulator's does.
4. Table per node, errors relative to the testbed (x / testbed − 1); a plot in docs/img/testbed_fidelity.png;
   the last line is one JSON object with the worst absolute error on mean latency per version and "met"
   (≤ 10 % for the calibrated simulator, issue 6).

Run (as root): .venv/bin/python benchmarks/testbed_fidelity.py [--scenario FILE] [--requests 32] [--seeds 10] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ----------------------------------------------------------------------------- testbed


def run_testbed(scenario: Path, requests: int) -> tuple[dict, dict]:
    """The testbed run's report and what the verifier and drafters measured about themselves."""
    from edgespec.testbed.bed import Testbed
    from edgespec.testbed.run import run_on, workload_of
    from edgespec.testbed.spec import spec_from_scenario

    spec, config = spec_from_scenario(scenario)
    with Testbed(spec, say=lambda m: print(f"· {m}", file=sys.stderr)) as bed:
        run_on(bed, workload_of(config, requests=len(spec.drafters)))  # warm-up: one request per node
        m0, s0 = bed.metrics(), {name: bed.http_json(name, "/stats") for name in bed.drafters}
        report = run_on(bed, workload_of(config, requests=requests), say=lambda m: print(f"· {m}", file=sys.stderr))
        m1 = bed.metrics()
        stats = {name: bed.http_json(name, "/stats") for name in bed.drafters}

    def delta(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    batches = delta("edgespec_verifier_verify_seconds_count")
    drafts = sum(delta(k) for k in m1 if k.startswith("spec_decode_num_drafts_total"))
    accepted = [sum(delta(k) for k in m1 if k.startswith("spec_decode_num_accepted_tokens_per_pos_total") and f'position="{i}"' in k)
                for i in range(spec.serving.max_gamma)]
    measured = {"acceptance_curve": acceptance_curve(drafts, accepted),
                "verify_batch_s": delta("edgespec_verifier_verify_seconds_sum") / batches if batches else 0.0,
                "forward_batch_s": delta("edgespec_verifier_forward_seconds_total") / batches if batches else 0.0,
                "batch_size": delta("edgespec_verifier_batch_size_sum") / batches if batches else 0.0,
                "batch_tokens": delta("edgespec_verifier_batch_tokens_sum") / batches if batches else 0.0,
                "round_overhead_ms_p50": {n: s["round_overhead_ms_p50"] for n, s in stats.items()},
                "draft_pass_s": {n: (s["draft_time_s"] - s0[n]["draft_time_s"]) / max(1, s["draft_passes"] - s0[n]["draft_passes"])
                                 for n, s in stats.items()},
                "draft_gamma": {n: (s["drafted_tokens"] - s0[n]["drafted_tokens"]) / max(1, s["drafted_blocks"] - s0[n]["drafted_blocks"])
                                for n, s in stats.items()}}
    return report, measured


def node_measurements(measured: dict, node: dict) -> dict:
    """What one drafter node measured about itself, with its nominal slowdown."""
    name = node["name"]
    return {"round_overhead_ms_p50": measured["round_overhead_ms_p50"][name], "draft_pass_s": measured["draft_pass_s"][name],
            "draft_gamma": measured["draft_gamma"][name], "slowdown": node["slowdown"]}


def acceptance_curve(drafts: float, accepted_per_pos: list[float]) -> tuple[float, ...]:
    """a_i = P(position i accepted | positions < i accepted) from the verifier's counters (drafts that reached i ≈ accepted at i − 1)."""
    curve, reached = [], drafts
    for acc in accepted_per_pos:
        if reached <= 0:
            break
        curve.append(min(acc / reached, 0.999))
        reached = acc
    return tuple(curve) or (0.5,)


# ----------------------------------------------------------------------------- simulator


def simulate_per_node(config, seeds: int) -> dict:
    """Per drafter group (one node each here): mean latency, TTFT, tokens/s, uplink bytes/token, averaged over seeds."""
    from edgespec.sim.metrics import summarize
    from edgespec.sim.run import simulate

    rows: dict[str, list] = {}
    for seed in range(seeds):
        run = simulate(replace(config, seed=seed))
        report = summarize(run)
        for g, group in enumerate(config.drafters):
            mine = [s for s in run.sessions if s.node.group == g]
            span = max(s.finish_s for s in mine) - min(s.arrival_s for s in mine)
            up = sum(d.uplink.bytes_sent for d in run.drafters if d.group == g)
            tokens = sum(s.emitted for s in mine)
            rounds = sum(s.rounds for s in mine)
            rows.setdefault(group.name, []).append((report.per_group[group.name]["e2e_mean_s"], report.per_group[group.name]["ttft_mean_s"],
                                                    tokens / span, up / tokens, up / rounds))
    return {name: dict(zip(("mean_latency_s", "mean_ttft_s", "tokens_per_s", "uplink_bytes_per_token", "uplink_bytes_per_round"),
                           (statistics.fmean(col) for col in zip(*vals)))) for name, vals in rows.items()}


def pair_profile_of(scenario: Path):
    """The measured pair profile a scenario names in `[sim] pair_profile` (relative to the scenario's folder)."""
    import tomllib

    from edgespec.plan.pairprofile import load_pair_profile

    return load_pair_profile(scenario.parent / tomllib.loads(scenario.read_text())["sim"]["pair_profile"])


def calibrated_config(config, scenario: Path, measured: dict, nodes: dict, pp=None):
    """The scenario with the verifier's in-run speed and the drafters' measured per-round framework time (`pp`: its pair profile)."""
    from edgespec.plan.profile import profile_step_time_s
    from edgespec.plan.scenario import load_scenario
    from edgespec.sim.costs import NodeCost

    from _fidelity import scaled_pair_profile

    pp = pp or pair_profile_of(scenario)
    b = max(1, round(measured["batch_size"]))
    new = max(1, round(measured["batch_tokens"] / max(measured["batch_size"], 1e-9)))
    ratio = measured["forward_batch_s"] / float(profile_step_time_s(pp.target, b, new))  # forwards only: the rest of a batch is in the rounds' framework time
    scaled = scaled_pair_profile(pp, verify_ratio=ratio)
    groups = []
    for g in config.drafters:
        extra = framework_time_s(g, nodes[g.name]) / 2
        groups.append(replace(g, uplink=replace(g.uplink, latency_s=g.uplink.latency_s + extra),
                              downlink=replace(g.downlink, latency_s=g.downlink.latency_s + extra),
                              slowdown=g.slowdown * draft_ratio(pp, nodes[g.name])))
    verifier = load_scenario(scenario).system.verifier
    spec = replace(config.speculation, acceptance=measured["acceptance_curve"])
    return replace(config, drafters=tuple(groups), verify_cost=NodeCost(replace(verifier, profile=scaled.target)), speculation=spec), ratio


def draft_ratio(pp, node: dict) -> float:
    """A node's in-run draft pass time over the profile's (γ steps at batch 1) times its nominal slowdown, as a factor on slowdown."""
    from edgespec.plan.profile import profile_step_time_s

    return node["draft_pass_s"] / (node["draft_gamma"] * float(profile_step_time_s(pp.draft, 1, 1))) / node["slowdown"]


def framework_time_s(group, node: dict) -> float:
    """A round's time outside forwards, busy waits and the link's own latency: the drafter's round overhead less 2 × latency."""
    return max(0.0, node["round_overhead_ms_p50"] / 1e3 - 2 * group.uplink.latency_s)


# ----------------------------------------------------------------------------- latency model


def model_per_node(scenario: Path, config, verify_ratio: float = 1.0, framework_s: Optional[dict] = None,
                   draft_ratios: Optional[dict] = None, curve: Optional[tuple] = None) -> dict:
    """Paper 2510.11331's latency model per node: that node's link and slowdown, the static batch of every node.

    `verify_ratio` scales the verification step and `framework_s[group]` adds per-round framework time (calibration).
    """
    from edgespec.plan.latency import draft_bytes_per_token
    import numpy as np

    from edgespec.plan.latency import batch_prefill_s, round_times, rounds_needed
    from edgespec.plan.scenario import LinkSpec, load_scenario
    from edgespec.spec.theory import fit_alpha

    sc = load_scenario(scenario)
    klass = config.classes[0]
    gamma = config.speculation.gamma
    curve = curve or config.speculation.acceptance
    survive, e_tokens = 1.0, 1.0
    for i in range(gamma):
        survive *= curve[min(i, len(curve) - 1)]
        e_tokens += survive
    alpha = fit_alpha(e_tokens, gamma)
    g = sum(d.count for d in config.drafters)
    ctx = klass.input_tokens + klass.output_tokens / 2
    out = {}
    for d in config.drafters:
        system = replace(sc.system, link=LinkSpec(d.uplink.rate_bps, d.downlink.rate_bps, d.uplink.latency_s))
        rt = round_times(system, g, gamma, ctx)
        rounds = float(rounds_needed(klass.output_tokens, alpha, gamma))
        per_round = (float(rt.draft_s) * d.slowdown * (draft_ratios or {}).get(d.name, 1.0) + float(rt.transfer_s) + float(rt.verify_s) * verify_ratio + float(rt.downlink_s)
                     + (framework_s or {}).get(d.name, 0.0))
        prefill = float(batch_prefill_s(system, g, klass.input_tokens, g * klass.input_tokens, gamma))
        latency = prefill + rounds * per_round
        spec = system.speculation
        up_bytes = (klass.input_tokens * spec.id_bytes + spec.message_overhead_bytes
                     + rounds * (gamma * draft_bytes_per_token(spec, system.verifier.model.vocab) + spec.message_overhead_bytes))
        out[d.name] = {"mean_latency_s": latency, "mean_ttft_s": prefill + per_round, "tokens_per_s": klass.output_tokens / latency,
                       "uplink_bytes_per_token": up_bytes / klass.output_tokens, "alpha": float(np.round(alpha, 3))}
    return out


# ----------------------------------------------------------------------------- report


def _err(x, ref):
    return None if x is None or not ref else x / ref - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "examples" / "testbed_hetero.toml")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "testbed_fidelity.png")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from edgespec.sim.scenario import load_sim_config

    config = load_sim_config(args.scenario)
    pp = pair_profile_of(args.scenario)
    report, measured = run_testbed(args.scenario, args.requests)
    by_group = {n["group"]: {**n, "name": name} for name, n in report["nodes"].items()}
    nodes = {g: node_measurements(measured, n) for g, n in by_group.items()}
    cal, ratio = calibrated_config(config, args.scenario, measured, nodes, pp)
    framework = {g.name: framework_time_s(g, nodes[g.name]) for g in config.drafters}
    drafts = {g.name: draft_ratio(pp, nodes[g.name]) for g in config.drafters}
    versions = {"model": model_per_node(args.scenario, config),
                "model calibrated": model_per_node(args.scenario, config, ratio, framework, drafts, measured["acceptance_curve"]),
                "sim": simulate_per_node(config, args.seeds), "sim calibrated": simulate_per_node(cal, args.seeds)}

    table = Table(title=f"{config.name}: testbed vs latency model vs simulator ({args.requests} requests)")
    for col in ("node", "link", "figure", "testbed", *versions, *(f"err {v}" for v in versions)):
        table.add_column(col, justify="left" if col in ("node", "link", "figure") else "right")
    worst = {v: 0.0 for v in versions}
    rows = []
    for group, real in by_group.items():
        figures = {"mean_latency_s": real.get("mean_latency_s"), "mean_ttft_s": real.get("mean_ttft_s"),
                   "tokens_per_s": real.get("throughput_tokens_per_s"), "uplink_bytes_per_token": real.get("uplink_bytes_per_token")}
        link = f"{real['uplink_mbps']:g} Mbit/s, {real['latency_ms']:g} ms, ×{real['slowdown']:g}"
        for fig, value in figures.items():  # uplink: the protocol's bytes (relay count), like the model's message sizes
            preds = {v: versions[v][group].get(fig) for v in versions}
            errs = {v: _err(p, value) for v, p in preds.items()}
            if fig == "mean_latency_s":
                for v, e in errs.items():
                    worst[v] = max(worst[v], abs(e)) if e is not None else worst[v]
            rows.append({"node": real["name"], "group": group, "figure": fig, "testbed": value, **preds,
                         **{f"err {v}": e for v, e in errs.items()}})
            fmt = (lambda x: "–" if x is None else f"{x:.3f}")
            table.add_row(real["name"], link if fig == "mean_latency_s" else "", fig, fmt(value), *(fmt(p) for p in preds.values()),
                          *("–" if e is None else f"{e:+.1%}" for e in errs.values()))
    Console(width=200).print(table)
    print("uplink bytes per token: the protocol's (relay count) in the table; on the wire (the drafter's veth: Ethernet/IP/TCP "
          "headers and ACKs included): " + ", ".join(f"{n['name']} {n['uplink_wire_bytes_per_token']:.1f}" for n in by_group.values()))
    print("acceptance per position in the run: " + ", ".join(f"{a:.2f}" for a in measured["acceptance_curve"])
          + "; the profile's: " + ", ".join(f"{a:.2f}" for a in config.speculation.acceptance))
    print(f"verifier in run: {measured['verify_batch_s'] * 1e3:.1f} ms per batch, of which {measured['forward_batch_s'] * 1e3:.1f} ms "
          f"target forwards, mean batch {measured['batch_size']:.2f} → target tables × {ratio:.2f}")
    for g, n in nodes.items():
        print(f"{by_group[g]['name']}: draft pass {n['draft_pass_s'] * 1e3:.1f} ms for γ {n['draft_gamma']:.2f} → draft × {drafts[g]:.2f} "
              f"on top of slowdown {n['slowdown']:g}; framework per round {framework[g] * 1e3:.1f} ms")
    _plot(args.plot, rows, versions)
    out = {"benchmark": "testbed_fidelity", "scenario": config.name, "requests": args.requests, "seeds": args.seeds,
           "verify_ratio": ratio, "max_abs_rel_error_mean_latency": worst, "met": worst["sim calibrated"] <= 0.10, "rows": rows}
    print(json.dumps(out))
    return 0


def _plot(path: Path, rows: list[dict], versions: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = ("mean_latency_s", "mean_ttft_s", "tokens_per_s")
    fig, axes = plt.subplots(1, len(figs), figsize=(13, 3.8))
    for ax, f in zip(axes, figs):
        mine = [r for r in rows if r["figure"] == f]
        names = [r["node"] for r in mine]
        series = ["testbed", *versions]
        width = 0.8 / len(series)
        for k, s in enumerate(series):
            ax.bar([i + k * width for i in range(len(mine))], [r[s] or 0 for r in mine], width, label=s)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(mine))], [f"{n}\n{r['group']}" for n, r in zip(names, mine)])
        ax.set_title(f)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
