"""Scenario files for the simulator: the planner's TOML format plus `[sim]` tables (nodes, links, verifiers, workload, policies, SLOs).

The shared sections ([drafter], [verifier], [link], [speculation], [uplink], [[task]]) mean what
they mean to `edgespec plan`; `[sim]` adds what only a simulation needs. Request classes are the
scenario's tasks (identical tasks merged, weighted by count). Every field is documented in docs/simulator.md.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Optional

from edgespec.plan.latency import draft_bytes_per_token
from edgespec.plan.pairprofile import acceptance_curve, load_pair_profile
from edgespec.plan.profile import ProfileError
from edgespec.plan.scenario import _NONNEG, _NONNEG_INT, _POS, _POS_INT, Scenario, ScenarioError, _Ctx, _Section, load_scenario
from edgespec.policy.bandwidth import BandwidthPolicy, UplinkDemand
from edgespec.policy.gamma import GAMMA_POLICIES
from edgespec.sim.config import (
    BATCHINGS, MODES, ROUTINGS, DrafterGroup, RequestClass, ServingCosts, SimConfig, Slo, Speculation, VerifierConfig, Workload,
)
from edgespec.sim.costs import ConstantCost, NodeCost
from edgespec.sim.links import LinkModel

__all__ = ["load_sim_config", "sim_config_from_scenario", "serving_costs", "ScenarioError"]

_PROB = dict(check=lambda x: 0 <= x <= 1, what="a probability in [0, 1]")
_LOSS = dict(check=lambda x: 0 <= x < 1, what="a loss probability in [0, 1)")


def _classes(sc: Scenario) -> tuple[RequestClass, ...]:
    """Tasks as request classes; a task keeps its own α only where it differs from [speculation] alpha (else the run's curve applies)."""
    default = sc.system.speculation.alpha
    counts = Counter((t.name, t.input_tokens, t.output_tokens, None if t.alpha == default else t.alpha) for t in sc.tasks)
    return tuple(RequestClass(name or f"task{i}", inp, out, float(n), alpha) for i, ((name, inp, out, alpha), n) in enumerate(counts.items()))


def _groups(sim: _Section, sc: Scenario, draft_bytes: float, rounds_hint: float) -> tuple[DrafterGroup, ...]:
    link = sc.system.link
    entries = sim.raw("drafter_group")
    if entries is None:
        entries = [{"name": "drafters", "count": sim.number("drafter_nodes", 1, **_POS_INT)}]
    elif not isinstance(entries, list):
        sim.fail("drafter_group", "must be an array of tables: write each group as [[sim.drafter_group]]")
    groups, shares = [], []
    for i, entry in enumerate(entries):
        sec = _Section(entry, sim.path + ("drafter_group", i), sim.ctx)
        name = sec.string("name", f"group{i}")
        count = sec.number("count", 1, **_POS_INT)
        efficiency = sec.number("spectral_efficiency_bps_per_hz", None, **_POS)
        up_bps = sec.number("uplink_bps", link.uplink_bps, **_POS)
        latency = sec.number("latency_s", link.latency_s, **_NONNEG)
        jitter = sec.number("jitter_s", 0.0, **_NONNEG)
        loss = sec.number("loss", 0.0, **_LOSS)
        retransmit = sec.number("retransmit_s", 0.2, **_NONNEG)
        down = LinkModel(sec.number("downlink_bps", link.downlink_bps, **_POS), latency, jitter, loss, retransmit)
        group = DrafterGroup(name, count, LinkModel(up_bps, latency, jitter, loss, retransmit), down,
                             slowdown=sec.number("slowdown", 1.0, **_POS), alpha=sec.number("alpha", None, check=lambda x: 0 <= x <= 1, what="an acceptance probability in [0, 1]"),
                             weight=sec.number("weight", 1.0, **_POS))
        sec.done()
        groups.append(group)
        shares.append(efficiency)
    return tuple(_allocate(sim, sc, groups, shares, draft_bytes * rounds_hint))


def _allocate(sim: _Section, sc: Scenario, groups: list[DrafterGroup], efficiencies: list, bits_per_round: float) -> list[DrafterGroup]:
    """Groups with a spectral efficiency share [uplink].bandwidth_hz by the [sim] bandwidth policy: rate = b_k · e_k."""
    rule = sim.string("bandwidth", "uniform", choices=("uniform", "min_max", "min_sum"))
    wireless = [i for i, e in enumerate(efficiencies) if e is not None]
    if not wireless:
        return groups
    demands = [UplinkDemand(bits_per_round * 8.0, spectral_efficiency_bps_per_hz=efficiencies[i]) for i in wireless for _ in range(groups[i].count)]
    shares = BandwidthPolicy(rule).allocate(demands, sc.uplink.bandwidth_hz)
    out, k = list(groups), 0
    for i in wireless:
        hz = float(shares[k])  # nodes of one group are alike: they get equal shares
        k += groups[i].count
        out[i] = replace(groups[i], uplink=replace(groups[i].uplink, rate_bps=hz * efficiencies[i]))
    return out


def _verifiers(sec: Optional[_Section], sc: Scenario, draft_cost, verify_cost) -> VerifierConfig:
    if sec is None:
        return VerifierConfig()
    batching = sec.string("batching", "window", choices=BATCHINGS)
    dp_max_tasks = sec.number("dp_max_tasks", None, **_POS_INT)
    plan = None
    if batching == "dp":
        if not (isinstance(draft_cost, NodeCost) and isinstance(verify_cost, NodeCost)):
            sec.fail("batching", '"dp" plans with the latency model of [drafter] and [verifier] (or pair_profile); '
                                 "it cannot plan with [sim.costs] constants: drop [sim.costs] or choose window or max")
        plan = replace(sc.system, drafter=draft_cost.node, verifier=verify_cost.node)
    elif dp_max_tasks is not None:
        sec.fail("dp_max_tasks", f'only applies with batching = "dp"; got batching = {batching!r}')
    cfg = VerifierConfig(
        count=sec.number("count", 1, **_POS_INT),
        batching=batching,
        window_s=sec.number("window_s", 0.002, **_NONNEG),
        max_batch_size=sec.number("max_batch_size", 0, **_NONNEG_INT),
        max_batch_tokens=sec.number("max_batch_tokens", 2048, **_POS_INT),
        kv_budget_tokens=sec.number("kv_budget_tokens", 0, **_NONNEG_INT),
        busy_retry_s=sec.number("busy_retry_s", 0.05, **_NONNEG),
        dp_max_tasks=VerifierConfig.dp_max_tasks if dp_max_tasks is None else dp_max_tasks,
        merge_share=sec.number("merge_share", VerifierConfig.merge_share, **_NONNEG),
        plan_system=plan,
    )
    sec.done()
    return cfg


def _workload(sec: Optional[_Section], base_dir: Optional[Path]) -> Workload:
    if sec is None:
        return Workload()
    kind = sec.string("kind", "poisson", choices=("poisson", "closed", "trace"))
    trace: tuple[float, ...] = ()
    if kind == "trace":
        path = Path(sec.string("trace"))
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            sec.fail("trace", f"cannot read trace {str(path)!r} (a JSON list of arrival times in seconds): {exc}")
        if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v) for v in values):
            sec.fail("trace", "must be a non-empty JSON list of arrival times >= 0 (seconds)")
        trace = tuple(float(v) for v in values)
    w = Workload(
        kind=kind,
        requests=sec.number("requests", len(trace) or 100, **_POS_INT),
        rate_per_s=sec.number("rate_per_s", 10.0, **_POS),
        users_per_node=sec.number("users_per_node", 1, **_POS_INT),
        think_time_s=sec.number("think_time_s", 0.0, **_NONNEG),
        trace_s=trace,
        requests_per_user=sec.number("requests_per_user", 0, **_NONNEG_INT),
    )
    if w.requests_per_user and kind != "closed":
        sec.fail("requests_per_user", f'is for closed loop only (kind = "closed"), not kind = "{kind}"')
    sec.done()
    return w


def _slo(sec: Optional[_Section]) -> Slo:
    if sec is None:
        return Slo()
    slo = Slo(sec.number("ttft_s", None, **_POS), sec.number("tpot_s", None, **_POS), sec.number("e2e_s", None, **_POS))
    sec.done()
    return slo


def _answer_tokens(sc: Scenario) -> int:
    """The tasks' mean answer length: which of a profile's curves (measured per answer length) applies."""
    return round(sum(t.output_tokens for t in sc.tasks) / len(sc.tasks)) if sc.tasks else 0


def _pair_profile(sim: _Section, sc: Scenario, base_dir: Optional[Path]):
    """`[sim] pair_profile`: costs from the measured pair (`edgespec profile`) and its acceptance curve for the chosen setting.

    A serving profile (edgespec-pair-profile/2, `edgespec profile --serving`) also gives the serving terms: forwards as the
    serving processes ran them, framework time per round at both ends, the open handshake, the HTTP request, the verifier's
    cost of drafts arriving during a forward and how a shared core serves several devices (`ServingCosts`).
    """
    name = sim.string("pair_profile", None)
    q_mode = sim.string("profile_q_mode", "topk", choices=("full", "topk", "tokens"))
    temperature = sim.number("profile_temperature", 1.0, **_NONNEG)
    top_k = sim.number("profile_top_k", sc.system.speculation.top_k, **_POS_INT)
    if name is None:
        return None
    path = Path(name) if Path(name).is_absolute() or base_dir is None else base_dir / name
    try:
        pp = load_pair_profile(path)
        curve = acceptance_curve(pp, q_mode, temperature, top_k if q_mode == "topk" else None, _answer_tokens(sc) or None)
    except (OSError, ProfileError) as exc:
        sim.fail("pair_profile", f"cannot use pair profile {str(path)!r}: {exc}")
    if pp.serving is None:
        return NodeCost(replace(sc.system.drafter, profile=pp.draft)), NodeCost(replace(sc.system.verifier, profile=pp.target)), curve, None
    sp = pp.serving
    draft = NodeCost(replace(sc.system.drafter, profile=sp.draft_step))
    verify = NodeCost(replace(sc.system.verifier, profile=sp.target_forward))
    return draft, verify, curve, sp


def serving_costs(sp, devices: int) -> ServingCosts:
    """The simulator's serving terms from a serving profile (`edgespec.plan.servingprofile.ServingProfile`) for `devices` drafter nodes."""
    caps = tuple((float(s), sp.quota_cap(float(s))) for s in sp.quota.batch_sizes) if sp.quota is not None else ()
    return ServingCosts(verifier_framework=sp.verifier_framework, drafter_framework=sp.drafter_framework,
                        drafter_background_s=sp.drafter_background_s, overlap_s=sp.overlap_s,
                        verdict_overlap_s=sp.verdict_overlap_s, open_s=sp.open_s, request_s=sp.request_s, core_efficiency=sp.core_efficiency(devices), quota_caps=caps)


def _costs(sim: _Section, sc: Scenario):
    sec = sim.sub("costs", required=False)
    if sec is None:
        return NodeCost(sc.system.drafter), NodeCost(sc.system.verifier)
    draft = ConstantCost(sec.number("draft_step_s", **_POS), prefill_per_token_s=sec.number("draft_prefill_per_token_s", 0.0, **_NONNEG))
    verify = ConstantCost(sec.number("verify_step_s", **_POS), sec.number("verify_per_token_s", 0.0, **_NONNEG),
                          sec.number("verify_per_seq_s", 0.0, **_NONNEG), sec.number("verify_prefill_per_token_s", 0.0, **_NONNEG))
    sec.done()
    return draft, verify


def sim_config_from_scenario(sc: Scenario, data: dict, ctx: _Ctx) -> SimConfig:
    """Build a SimConfig from a loaded planner scenario and the raw `[sim]` table."""
    sim = _Section(data.get("sim", {}), ("sim",), ctx)
    spec_in = sc.system.speculation
    vocab = sc.system.verifier.model.vocab
    mode = sim.string("mode", "sd", choices=MODES)
    gamma = sim.number("gamma", sc.planner.fixed_gamma, **_NONNEG_INT)
    max_gamma = sim.number("max_gamma", max(sc.planner.gamma_max, gamma), **_NONNEG_INT)
    if gamma > max_gamma:
        sim.fail("gamma", f"must be <= max_gamma ({max_gamma}), got {gamma}")
    acceptance = sim.raw("acceptance")
    if acceptance is None:
        curve = (spec_in.alpha,)
    elif isinstance(acceptance, list) and acceptance and all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in acceptance):
        curve = tuple(float(a) for a in acceptance)
    else:
        sim.fail("acceptance", "must be a non-empty list of per-position acceptance probabilities in [0, 1]")
    spec = Speculation(
        mode=mode,
        gamma_policy=sim.string("gamma_policy", "static", choices=GAMMA_POLICIES),
        gamma=gamma,
        max_gamma=max_gamma,
        load_aware=sim.boolean("load_aware", False),
        probe_every=sim.number("probe_every", 0, **_NONNEG_INT),
        confidence_threshold=sim.number("confidence_threshold", 0.3, **_PROB),
        confidence_noise=sim.number("confidence_noise", 0.5, **_PROB),
        acceptance=curve,
        draft_bytes_per_token=draft_bytes_per_token(spec_in, vocab),
        prompt_bytes_per_token=sc.uplink.upload_bytes_per_token,
        message_overhead_bytes=spec_in.message_overhead_bytes,
        verdict_bytes=spec_in.verdict_bytes,
    )
    draft_cost, verify_cost = _costs(sim, sc)
    measured = _pair_profile(sim, sc, ctx.base_dir)
    serving = None
    if measured is not None:
        if sim.has("costs"):
            sim.fail("pair_profile", "give either [sim.costs] or pair_profile, not both")
        if acceptance is not None:
            sim.fail("acceptance", "the pair profile supplies the acceptance curve; drop one of them")
        draft_cost, verify_cost, measured_curve, serving = measured
        spec = replace(spec, acceptance=measured_curve.per_position, acceptance_mix=measured_curve.per_prompt)
    groups = _groups(sim, sc, spec.draft_bytes_per_token * max(gamma, 1) + spec.message_overhead_bytes, 1.0)
    if serving is not None:
        serving = serving_costs(serving, sum(g.count for g in groups))
    config = SimConfig(
        classes=_classes(sc),
        drafters=groups,
        draft_cost=draft_cost,
        verify_cost=verify_cost,
        verifiers=_verifiers(sim.sub("verifiers", required=False), sc, draft_cost, verify_cost),
        workload=_workload(sim.sub("workload", required=False), ctx.base_dir),
        speculation=spec,
        slo=_slo(sim.sub("slo", required=False)),
        routing=sim.string("routing", "jsq", choices=ROUTINGS),
        seed=sim.number("seed", 0, **_NONNEG_INT),
        name=sc.name,
        serving=serving,
        device_cores=sim.number("device_cores", 0, **_NONNEG_INT),
    )
    sim.done()
    return config


def load_sim_config(path: Path | str, *, requests: Optional[int] = None, seed: Optional[int] = None,
                    pair_profile: Optional[Path | str] = None) -> SimConfig:
    """Read a scenario file and build its SimConfig; `requests`, `seed` and `pair_profile` (a path) override the file. Raises ScenarioError."""
    path = Path(path)
    sc = load_scenario(path)  # validates the shared sections (and reads the file)
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    if pair_profile is not None:
        data.setdefault("sim", {})["pair_profile"] = str(Path(pair_profile).resolve())
    config = sim_config_from_scenario(sc, data, _Ctx(text, str(path), path.parent))
    if requests is not None:
        if config.workload.requests_per_user:
            raise ScenarioError(f"{path}: the requests override is for a run's total; this scenario gives each user "
                                f"requests_per_user = {config.workload.requests_per_user} (change it in the file)")
        config = replace(config, workload=replace(config.workload, requests=requests))
    if seed is not None:
        config = replace(config, seed=seed)
    return config


