"""Testbed fidelity: a scenario three ways — the latency model (`edgespec plan`'s), the simulator (`edgespec sim`) and the testbed — each predicted from three inputs.

Regime: by default two scenarios, one after the other (`--scenario` for one of your own):
- examples/testbed_hetero.toml: four drafter nodes with the bundled draft on links of 1, 5, 20 and 100 Mbit/s up
  (5-50 ms one way), two of them on devices twice as slow (a CPU quota of half a core), greedy, static γ = 4,
  64-token answers;
- examples/testbed_slowlinks.toml: five nodes, three on 1-2 Mbit/s links (40-60 ms) with devices two or three
  times slower, sampling at temperature 1 with top-8 q, static γ = 3, 48-token answers;
both with one verifier with the bundled target on a CPU of its own (`taskset`), the devices sharing the other,
one closed-loop user per node.

Steps per scenario:
1. Serving profile (`edgespec profile --serving --scenario S`, in a child process, before the run): a verifier and
   four drafter nodes on a testbed of their own, on the profile's own prompts and request mix (docs/profile.md).
   `--serving-profile FILE` uses a given one instead.
2. Testbed (`edgespec.testbed`): the scenario's workload on real nodes, after one warm-up request per node. Per node:
   mean and p90 latency, mean TTFT (the users' clocks); from the nodes' counters what calibration needs.
3. Predictions, each for the latency model (`edgespec.plan.latency.node_latencies`: per node, every round in one
   static batch of all nodes, the rounds' distribution from the acceptance curve) and the simulator (`--seeds` seeds,
   latencies pooled per node group):
   - `bare_profile`: the scenario as written, with its pair profile of bare forwards (what a user has today);
   - `serving_profile`: the same scenario with the serving profile of step 1 — forwards as the serving processes ran
     them, framework time per round at both ends, the open handshake, the HTTP request, drafts arriving during a
     forward, how the shared core serves several devices and quotas, the acceptance of the answer length;
   - `calibrated`: measured in the same testbed run (the verifier's target forwards against the profile's, each node's
     draft passes and framework time per round, the acceptance per position from the verifier's counters; the
     devices' contention is then inside the measured draft times). Nothing is fitted to the end-to-end figures.
4. Per node: the three figures, their errors (x / testbed − 1), per-round breakdowns (testbed vs the serving-profile
   simulator); a plot per scenario in docs/img/; the last line is one JSON object: for each scenario and node the
   errors of `model` and `sim` under `bare_profile`, `serving_profile` and `calibrated` (`mean_latency_error`,
   `p90_latency_error`, `ttft_error`), the worst of each, and "met" (serving profile: |mean| ≤ 10 %, p90 and TTFT ≤ 15 %).

Run (as root): .venv/bin/python benchmarks/testbed_fidelity.py [--quick] [--scenario FILE] [--requests N] [--seeds 10]
               [--serving-profile FILE] [--plot-dir DIR]
`--quick`: 16 requests per scenario, 3 seeds, the serving profile's quick mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

SCENARIOS = (ROOT / "examples" / "testbed_hetero.toml", ROOT / "examples" / "testbed_slowlinks.toml")
VERSIONS = ("bare_profile", "serving_profile", "calibrated")
FIGURES = {"mean_latency_s": "mean_latency_error", "p90_latency_s": "p90_latency_error", "mean_ttft_s": "ttft_error"}
BOUNDS = {"mean_latency_error": 0.10, "p90_latency_error": 0.15, "ttft_error": 0.15}  # issue 15, with the serving profile


def say(msg: str) -> None:
    print(f"· {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- serving profile


def take_serving_profile(scenario: Path, out: Path, quick: bool) -> tuple[Path, float]:
    """`edgespec profile --serving --scenario S --out FILE` in a child process (its progress on stderr); the file and its wall time."""
    cmd = [sys.executable, "-m", "edgespec.cli", "profile", "--serving", "--scenario", str(scenario), "--out", str(out),
           *(["--quick"] if quick else [])]
    say("serving profile: " + " ".join(cmd[2:]))
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise SystemExit(f"the serving profile failed (exit {done.returncode})")
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- testbed


def scenario_temperature(scenario: Path) -> float:
    """The users' sampling temperature: the scenario's `[sim] profile_temperature` (the simulator's default, 1, when unset)."""
    import tomllib

    return float(tomllib.loads(scenario.read_text(encoding="utf-8")).get("sim", {}).get("profile_temperature", 1.0))


def run_testbed(scenario: Path, requests: int, temperature: Optional[float] = None) -> tuple[dict, dict]:
    """The testbed run's report and what the verifier and drafters measured about themselves."""
    from edgespec.testbed.bed import Testbed
    from edgespec.testbed.run import run_on, workload_of
    from edgespec.testbed.spec import spec_from_scenario

    from edgespec.testbed.cpuload import CpuLoad, process_cpu_s

    temperature = scenario_temperature(scenario) if temperature is None else temperature
    spec, config = spec_from_scenario(scenario)
    with Testbed(spec, say=say) as bed:
        run_on(bed, workload_of(config, requests=len(spec.drafters), temperature=temperature))  # warm-up: one request per node
        m0, s0 = bed.metrics(), {name: bed.http_json(name, "/stats") for name in bed.drafters}
        verifier = bed.verifiers[0].proc.pid
        load, cpu0 = CpuLoad().start(), process_cpu_s(verifier)
        report = run_on(bed, workload_of(config, requests=requests, temperature=temperature), say=say)
        verifier_cpu_s, host = process_cpu_s(verifier) - cpu0, load.stop()
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
                "verifier_overhead_ms_p50": {n: s["verifier_overhead_ms_p50"] for n, s in stats.items()},
                "draft_pass_s": {n: (s["draft_time_s"] - s0[n]["draft_time_s"]) / max(1, s["draft_passes"] - s0[n]["draft_passes"])
                                 for n, s in stats.items()},
                "draft_gamma": {n: (s["drafted_tokens"] - s0[n]["drafted_tokens"]) / max(1, s["drafted_blocks"] - s0[n]["drafted_blocks"])
                                for n, s in stats.items()},
                "rounds": {n: s["rounds"] - s0[n]["rounds"] for n, s in stats.items()},
                "wall_s": report["wall_s"], "verifier_cpu_s": verifier_cpu_s, "batches": batches,
                "host": host.to_dict() if host is not None else None}
    return report, measured


def node_measurements(measured: dict, node: dict) -> dict:
    """What one drafter node measured about itself, with its nominal slowdown."""
    name = node["name"]
    return {"round_overhead_ms_p50": measured["round_overhead_ms_p50"][name], "draft_pass_s": measured["draft_pass_s"][name],
            "draft_gamma": measured["draft_gamma"][name], "slowdown": node["slowdown"]}


def group_measurements(measured: dict, report: dict) -> dict:
    """Per drafter group: its nodes' measurements averaged (a group of several nodes is one class in the models)."""
    by_group: dict[str, list] = {}
    for name, node in report["nodes"].items():
        by_group.setdefault(node["group"], []).append(node_measurements(measured, {**node, "name": name}))
    return {g: {k: statistics.fmean(m[k] for m in ms) for k in ms[0]} for g, ms in by_group.items()}


def acceptance_curve(drafts: float, accepted_per_pos: list[float]) -> tuple[float, ...]:
    """a_i = P(position i accepted | positions < i accepted) from the verifier's counters (drafts that reached i ≈ accepted at i − 1)."""
    curve, reached = [], drafts
    for acc in accepted_per_pos:
        if reached <= 0:
            break
        curve.append(min(acc / reached, 0.999))
        reached = acc
    return tuple(curve) or (0.5,)


def testbed_per_node(report: dict) -> dict:
    """Per node: mean and p90 latency and mean TTFT from the users' records."""
    import numpy as np

    out = {}
    for name, node in report["nodes"].items():
        mine = [r for r in report["requests"] if r["node"] == name and r["error"] is None]
        lat = [r["finish_s"] - r["arrival_s"] for r in mine]
        out[name] = {"group": node["group"], "mean_latency_s": statistics.fmean(lat), "p90_latency_s": float(np.percentile(lat, 90)),
                     "mean_ttft_s": statistics.fmean(r["first_token_s"] - r["arrival_s"] for r in mine), "requests": len(mine),
                     "link": f"{node['uplink_mbps']:g} Mbit/s, {node['latency_ms']:g} ms, ×{node['slowdown']:g}"}
    return out


# ----------------------------------------------------------------------------- simulator


def simulate_per_node(config, seeds: int) -> dict:
    """Per drafter group: mean and p90 latency (pooled over seeds), mean TTFT, tokens/s, uplink bytes, per-round phases."""
    import numpy as np

    from edgespec.sim.run import simulate

    pooled: dict[str, dict] = {g.name: {"e2e": [], "ttft": [], "tps": [], "bpt": [], "bpr": [], "phases": [], "rounds": 0}
                               for g in config.drafters}
    busy = []
    for seed in range(seeds):
        run = simulate(replace(config, seed=seed))
        span = max(s.finish_s for s in run.sessions) - min(s.arrival_s for s in run.sessions)
        busy.append(sum(v.busy_s for v in run.verifiers) / span)
        for g, group in enumerate(config.drafters):
            mine = [s for s in run.sessions if s.node.group == g]
            p = pooled[group.name]
            p["e2e"] += [s.finish_s - s.arrival_s for s in mine]
            p["ttft"] += [s.first_token_s - s.arrival_s for s in mine]
            span = max(s.finish_s for s in mine) - min(s.arrival_s for s in mine)
            up = sum(d.uplink.bytes_sent for d in run.drafters if d.group == g)
            tokens, rounds = sum(s.emitted for s in mine), sum(s.rounds for s in mine)
            p["tps"].append(tokens / span)
            p["bpt"].append(up / tokens)
            p["bpr"].append(up / rounds)
            p["phases"].append([sum(getattr(s, k) for s in mine) for k in ("draft_s", "upload_s", "queue_s", "verify_s", "downlink_s")])
            p["rounds"] += rounds
    out = {}
    for name, p in pooled.items():
        phases = [sum(col) * 1e3 / max(1, p["rounds"]) for col in zip(*p["phases"])]
        p["verifier_busy"] = statistics.fmean(busy)
        out[name] = {"mean_latency_s": statistics.fmean(p["e2e"]), "p90_latency_s": float(np.percentile(p["e2e"], 90)),
                     "mean_ttft_s": statistics.fmean(p["ttft"]), "tokens_per_s": statistics.fmean(p["tps"]),
                     "uplink_bytes_per_token": statistics.fmean(p["bpt"]), "uplink_bytes_per_round": statistics.fmean(p["bpr"]),
                     "round_ms": dict(zip(("draft", "upload", "queue", "verify", "downlink"), phases)), "verifier_busy": p["verifier_busy"]}
    return out


def pair_profile_of(scenario: Path):
    """The measured pair profile a scenario names in `[sim] pair_profile` (relative to the scenario's folder)."""
    import tomllib

    from edgespec.plan.pairprofile import load_pair_profile

    return load_pair_profile(scenario.parent / tomllib.loads(scenario.read_text())["sim"]["pair_profile"])


def calibrated_config(config, scenario: Path, measured: dict, nodes: dict, pp=None):
    """The scenario with the verifier's in-run speed and the drafters' measured per-round framework time (`pp`: its pair profile).

    `nodes`: per group name, its nodes' measurements (`group_measurements`). The devices' contention for their shared core
    is inside the measured draft passes, so the calibrated scenario gives every device a core of its own.
    """
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
    sc = load_scenario(scenario).system
    spec = replace(config.speculation, acceptance=measured["acceptance_curve"], acceptance_mix=())  # the run's own counters
    return replace(config, drafters=tuple(groups), draft_cost=NodeCost(replace(sc.drafter, profile=pp.draft)),
                   verify_cost=NodeCost(replace(sc.verifier, profile=scaled.target)), speculation=spec, serving=None, device_cores=0), ratio


def draft_ratio(pp, node: dict) -> float:
    """A node's in-run draft pass time over the profile's (γ steps at batch 1) times its nominal slowdown, as a factor on slowdown."""
    from edgespec.plan.profile import profile_step_time_s

    return node["draft_pass_s"] / (node["draft_gamma"] * float(profile_step_time_s(pp.draft, 1, 1))) / node["slowdown"]


def framework_time_s(group, node: dict) -> float:
    """A round's time outside forwards, busy waits and the link's own latency: the drafter's round overhead less 2 × latency."""
    return max(0.0, node["round_overhead_ms_p50"] / 1e3 - 2 * group.uplink.latency_s)


# ----------------------------------------------------------------------------- latency model


def model_per_node(scenario: Path, config, pp, *, serving=None, verify_ratio: float = 1.0, framework_s: Optional[dict] = None,
                   draft_ratios: Optional[dict] = None, device_cores: int = 0) -> dict:
    """The latency model per drafter group (`edgespec.plan.latency.node_latencies`): its link and device, the static batch of all nodes.

    `pp` gives the bare tables; `serving` (a ServingProfile) the serving terms; calibration scales verification by
    `verify_ratio`, adds `framework_s[group]` per round (half to each link direction) and multiplies slowdowns by `draft_ratios`.
    """
    from _fidelity import scaled_pair_profile
    from edgespec.plan.latency import DeviceNode, node_latencies
    from edgespec.plan.scenario import LinkSpec, load_scenario

    system = load_scenario(scenario).system
    tables = scaled_pair_profile(pp, verify_ratio=verify_ratio) if verify_ratio != 1.0 else pp
    system = replace(system, drafter=replace(system.drafter, profile=tables.draft), verifier=replace(system.verifier, profile=tables.target),
                     serving=serving)
    nodes = []
    for g in config.drafters:
        extra = (framework_s or {}).get(g.name, 0.0) / 2
        link = LinkSpec(g.uplink.rate_bps, g.downlink.rate_bps, g.uplink.latency_s + extra)
        nodes += [DeviceNode(g.name if g.count == 1 else f"{g.name}#{i}", link, g.slowdown * (draft_ratios or {}).get(g.name, 1.0))
                  for i in range(g.count)]
    klass = config.classes[0]
    lat = node_latencies(system, nodes, input_tokens=klass.input_tokens, output_tokens=klass.output_tokens, gamma=config.speculation.gamma,
                         per_position=config.speculation.acceptance, per_prompt=config.speculation.acceptance_mix,
                         device_cores=device_cores)
    out = {}
    for g in config.drafters:
        x = lat[g.name if g.count == 1 else f"{g.name}#0"]
        out[g.name] = {"mean_latency_s": x.mean_latency_s, "p90_latency_s": x.quantile_latency_s, "mean_ttft_s": x.ttft_s,
                       "round_ms": {"draft": 1e3 * x.draft_s, "verify": 1e3 * x.verify_s, "round": 1e3 * x.round_s}, "rounds": x.rounds_mean}
    return out


# ----------------------------------------------------------------------------- one scenario


def predictions(scenario: Path, serving_path: Path, report: dict, measured: dict, seeds: int) -> tuple[dict, dict]:
    """{(kind, version): {group: figures}} for model and sim × the three versions, and what calibration measured."""
    from edgespec.plan.pairprofile import load_pair_profile
    from edgespec.sim.scenario import load_sim_config

    bare_config = load_sim_config(scenario)
    serving_config = load_sim_config(scenario, pair_profile=serving_path)
    bare_pp, serving_pp = pair_profile_of(scenario), load_pair_profile(serving_path)
    groups = group_measurements(measured, report)
    cal, ratio = calibrated_config(bare_config, scenario, measured, groups, bare_pp)
    framework = {g.name: framework_time_s(g, groups[g.name]) for g in bare_config.drafters}
    drafts = {g.name: draft_ratio(bare_pp, groups[g.name]) for g in bare_config.drafters}
    cores = bare_config.device_cores
    out = {
        ("model", "bare_profile"): model_per_node(scenario, bare_config, bare_pp, device_cores=cores),
        ("model", "serving_profile"): model_per_node(scenario, serving_config, serving_pp, serving=serving_pp.serving, device_cores=cores),
        ("model", "calibrated"): model_per_node(scenario, replace(bare_config, speculation=cal.speculation), bare_pp, verify_ratio=ratio,
                                                framework_s=framework, draft_ratios=drafts),
    }
    for version, config in (("bare_profile", bare_config), ("serving_profile", serving_config), ("calibrated", cal)):
        say(f"simulating {version} ({seeds} seeds)")
        out["sim", version] = simulate_per_node(config, seeds)
    return out, {"verify_ratio": ratio, "framework_s": framework, "draft_ratio": drafts}


def compare(scenario: Path, serving_path: Path, requests: int, seeds: int, saved: Optional[Path] = None, reuse: bool = False) -> dict:
    """Steps 2-4 for one scenario: the testbed run (kept in `saved`; with `reuse`, the one kept there), the predictions, the
    per-node errors and breakdowns."""
    from edgespec.sim.scenario import load_sim_config

    config = load_sim_config(scenario)
    if reuse and saved is not None and saved.exists():
        say(f"testbed: {config.name}, the run saved in {saved}")
        report, measured = json.loads(saved.read_text())
        requests = len(report["requests"])
    else:
        say(f"testbed: {config.name}, {requests} requests")
        report, measured = run_testbed(scenario, requests)
        if saved is not None:
            saved.write_text(json.dumps([report, measured]))
    if report["errors"]:
        raise SystemExit(f"{report['errors']} testbed requests failed")
    real = testbed_per_node(report)
    preds, cal = predictions(scenario, serving_path, report, measured, seeds)
    nodes = {}
    for name, r in real.items():
        entry = {"group": r["group"], "link": r["link"], "requests": r["requests"], "testbed": {f: r[f] for f in FIGURES}}
        for kind in ("model", "sim"):
            entry[kind] = {}
            for version in VERSIONS:
                p = preds[kind, version][r["group"]]
                entry[kind][version] = {err: p[f] / r[f] - 1 for f, err in FIGURES.items()}
                entry[kind][version].update({f: p[f] for f in FIGURES})
        nodes[name] = entry
    return {"scenario": config.name, "file": str(scenario.relative_to(ROOT) if scenario.is_relative_to(ROOT) else scenario),
            "requests": requests, "seeds": seeds, "nodes": nodes, "measured": measured, "calibration": cal,
            "breakdown": {"sim_verifier_busy": next(iter(preds["sim", "serving_profile"].values()))["verifier_busy"],
                          "profiled_forward_at_run_batch_s": profiled_forward_s(serving_path, measured, len(report["requests"]),
                                                                                config.classes[0].input_tokens),
                          "sim_serving_round_ms": {g: p["round_ms"] for g, p in preds["sim", "serving_profile"].items()},
                          "model_serving_round_ms": {g: p["round_ms"] for g, p in preds["model", "serving_profile"].items()}}}


def profiled_forward_s(serving_path: Path, measured: dict, sessions: int, prompt_tokens: int) -> float:
    """What the run's target forwards per batch were predicted to take: the serving profile's forwards at the run's mean batch and
    tokens per draft, plus its share of the `sessions` prompts' prefills (each in its session's first batch)."""
    from edgespec.plan.pairprofile import load_pair_profile
    from edgespec.plan.profile import profile_prefill_time_s, profile_step_time_s

    forward = load_pair_profile(serving_path).serving.target_forward
    b = max(1.0, measured["batch_size"])
    prefills_s = sessions * float(profile_prefill_time_s(forward, 1, prompt_tokens)) / max(measured["batches"], 1.0)
    return float(profile_step_time_s(forward, b, measured["batch_tokens"] / b)) + prefills_s


# ----------------------------------------------------------------------------- report


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    pct = lambda x: f"{100 * x:+.1f} %"  # noqa: E731
    t = Table(title=f"{result['scenario']}: testbed vs latency model and simulator, as profiled (bare), as profiled (serving nodes), "
                    f"calibrated ({result['requests']} requests; sim: {result['seeds']} seeds)")
    for col in ("node", "link", "figure", "testbed", *(f"{k} {v.split('_')[0]}" for k in ("model", "sim") for v in VERSIONS)):
        t.add_column(col, justify="left" if col in ("node", "link", "figure") else "right")
    for name, n in result["nodes"].items():
        for f, err in FIGURES.items():
            cells = [f"{n[k][v][f]:.2f} ({pct(n[k][v][err])})" for k in ("model", "sim") for v in VERSIONS]
            t.add_row(name if f == "mean_latency_s" else "", f"{n['group']}: {n['link']}" if f == "mean_latency_s" else "",
                      f.removesuffix("_s").replace("_", " ") + " s", f"{n['testbed'][f]:.2f}", *cells, end_section=f == "mean_ttft_s")
    Console(width=230).print(t)
    m, cal = result["measured"], result["calibration"]
    print(f"in the run: verifier {m['verify_batch_s'] * 1e3:.1f} ms per batch, {m['forward_batch_s'] * 1e3:.1f} ms of it target forwards, "
          f"mean batch {m['batch_size']:.2f} (the serving profile's forwards there, prefills included: {1e3 * result['breakdown']['profiled_forward_at_run_batch_s']:.1f} ms; "
          f"calibrated: target tables × {cal['verify_ratio']:.2f}); acceptance per position "
          + ", ".join(f"{a:.2f}" for a in m["acceptance_curve"]))
    if m.get("host"):
        busy = m["verify_batch_s"] * m["batches"] / m["wall_s"]
        print(f"the host meanwhile: CPUs busy {', '.join(f'{100 * b:.0f} %' for b in m['host']['cpu_busy'])}; other processes "
              f"{m['host']['foreign_cores']:.2f} cores; the verifier process {100 * m['verifier_cpu_s'] / m['wall_s']:.0f} % of a core, "
              f"busy with batches {100 * busy:.0f} % of the time (serving-profile sim: {100 * result['breakdown']['sim_verifier_busy']:.0f} %)")
    sim_rounds = result["breakdown"]["sim_serving_round_ms"]
    for name, n in result["nodes"].items():
        g = n["group"]
        rounds = m["rounds"].get(name, 0)
        s = sim_rounds[g]
        print(f"{name} ({g}) per round, ms — testbed: draft pass {1e3 * m['draft_pass_s'][name]:.1f}, round outside forwards "
              f"{m['round_overhead_ms_p50'][name]:.1f} (verifier's part {m['verifier_overhead_ms_p50'][name] or 0:.1f}), {rounds} rounds; "
              f"serving-profile sim: draft {s['draft']:.1f}, upload {s['upload']:.1f}, queue {s['queue']:.1f}, verify {s['verify']:.1f}, "
              f"downlink {s['downlink']:.1f}")


def worst(results: list[dict]) -> dict:
    """The largest |error| per kind, version and figure over every node of every scenario."""
    out = {}
    for kind in ("model", "sim"):
        for version in VERSIONS:
            out[f"{kind}/{version}"] = {err: max(abs(n[kind][version][err]) for r in results for n in r["nodes"].values())
                                        for err in FIGURES.values()}
    return out


def _plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIGURES), figsize=(15, 4))
    names = list(result["nodes"])
    series = [("testbed", None, None)] + [(f"{k} {v}", k, v) for k in ("model", "sim") for v in VERSIONS]
    width = 0.8 / len(series)
    for ax, f in zip(axes, FIGURES):
        for k, (label, kind, version) in enumerate(series):
            values = [n["testbed"][f] if kind is None else n[kind][version][f] for n in result["nodes"].values()]
            ax.bar([i + k * width for i in range(len(names))], values, width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], [f"{n}\n{result['nodes'][n]['group']}" for n in names])
        ax.set_title(f.removesuffix("_s").replace("_", " ") + " (s)")
    axes[0].legend(fontsize=7)
    fig.suptitle(result["scenario"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", type=Path, action="append", help="a scenario (repeat for several); default: the two of the docstring")
    ap.add_argument("--requests", type=int, help="requests per scenario (default: the scenario's; 16 with --quick)")
    ap.add_argument("--seeds", type=int, help="simulator seeds (default 10; 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="16 requests, 3 seeds, the serving profile's quick mode")
    ap.add_argument("--serving-profile", type=Path, action="append", help="use this serving profile (one per scenario, in order)")
    ap.add_argument("--plot-dir", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--out", type=Path, help="folder for the serving profiles and the testbed runs (default: a new temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse the serving profiles and testbed runs --out holds (predictions only)")
    args = ap.parse_args(argv)
    scenarios = [s.resolve() for s in (args.scenario or SCENARIOS)]
    if args.serving_profile and len(args.serving_profile) != len(scenarios):
        ap.error(f"--serving-profile: give one per scenario ({len(scenarios)})")
    seeds = args.seeds or (3 if args.quick else 10)
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="testbed_fidelity_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    from edgespec.sim.scenario import load_sim_config

    results = []
    for i, scenario in enumerate(scenarios):
        config = load_sim_config(scenario)
        requests = args.requests or (16 if args.quick else config.workload.requests)
        kept = out_dir / f"serving_{scenario.stem}.json"
        if args.serving_profile:
            profile, profile_s = args.serving_profile[i], None
        elif args.reuse and kept.exists():
            profile, profile_s = kept, None
        else:
            profile, profile_s = take_serving_profile(scenario, kept, args.quick)
        result = compare(scenario, profile, requests, seeds, out_dir / f"testbed_{scenario.stem}.json", args.reuse)
        result.update(serving_profile=str(profile), serving_profile_wall_s=profile_s)
        show(result)
        _plot(args.plot_dir / f"{scenario.stem.replace('testbed_', 'testbed_fidelity_')}.png", result)
        results.append(result)
    w = worst(results)
    met = all(w["model/serving_profile"][e] <= b and w["sim/serving_profile"][e] <= b for e, b in BOUNDS.items())
    print("worst |error| with the serving profile: model " + ", ".join(f"{e} {100 * v:.1f} %" for e, v in w["model/serving_profile"].items())
          + "; sim " + ", ".join(f"{e} {100 * v:.1f} %" for e, v in w["sim/serving_profile"].items())
          + f" (bounds: mean 10 %, p90 and TTFT 15 %): {'met' if met else 'not met'}")
    slim = {r["scenario"]: {"file": r["file"], "requests": r["requests"], "serving_profile": r["serving_profile"],
                            "serving_profile_wall_s": r["serving_profile_wall_s"], "calibration": r["calibration"],
                            "nodes": {n: {k: v[k] for k in ("group", "testbed", "model", "sim")} for n, v in r["nodes"].items()}}
            for r in results}
    print(json.dumps({"benchmark": "testbed_fidelity", "quick": args.quick, "seeds": seeds, "scenarios": slim, "worst": w,
                      "bounds": BOUNDS, "met": met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
