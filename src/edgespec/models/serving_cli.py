"""`edgespec profile --serving`: check the options, measure the serving nodes (`edgespec.models.serving_profile`), write and show the profile."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import typer

MAX_PROBE_BATCH = 64  # --batch-sizes: the probe opens this many sessions at most

__all__ = ["profile_serving"]


def _int_list(text: str, what: str, low: int, high: Optional[int], option: str) -> tuple[int, ...]:
    """Comma-separated integers in [low, high], sorted and deduplicated; BadParameter naming `option` otherwise."""
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        values = ()
    if not values or values[0] < low or (high is not None and values[-1] > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise typer.BadParameter(f"must be {what} {bounds} separated by commas, got {text!r}", param_hint=option)
    return values


def _attach(verifier: Optional[str], metrics: Optional[str], drafters: Optional[str], token_file: Optional[Path]):
    from edgespec.edge.node import parse_verifiers
    from edgespec.models.serving_profile import Attach

    given = {"--attach-verifier": verifier, "--attach-metrics": metrics, "--attach-drafters": drafters}
    if not any(given.values()):
        if token_file is not None:
            raise typer.BadParameter("only with --attach-verifier (a testbed writes its own token)", param_hint="--auth-token-file")
        return None
    for option, value in given.items():
        if not value:
            raise typer.BadParameter(f"attaching needs {', '.join(given)} together", param_hint=option)
    try:
        parse_verifiers(verifier)
        nodes = parse_verifiers(drafters)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--attach-drafters" if "," in (drafters or "") else "--attach-verifier")
    if not metrics.startswith(("http://", "https://")):
        raise typer.BadParameter(f"must be an http:// URL, got {metrics!r}", param_hint="--attach-metrics")
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {token_file}: {exc.strerror or exc}", param_hint="--auth-token-file")
    return Attach(verifier, metrics, nodes, token)


def _plan(scenario: Optional[Path], gamma: Optional[int], answer_tokens: Optional[str], temperature: Optional[float],
          q_mode: Optional[str], top_k: Optional[int], quick: bool, seed: int, attached: bool, max_host_load: float = 0.1,
          batch_sizes: Optional[str] = None):
    from edgespec.models.serving_profile import ServingPlan, plan_from_scenario
    from edgespec.plan.scenario import ScenarioError

    if q_mode is not None and q_mode not in ("full", "topk", "tokens"):
        raise typer.BadParameter(f"must be full, topk or tokens, got {q_mode!r}", param_hint="--q-mode")
    overrides = dict(gamma=gamma, answer_tokens=_int_list(answer_tokens, "answer lengths", 2, None, "--answer-tokens") if answer_tokens else None, temperature=temperature,
                     q_mode=q_mode, top_k=top_k, seed=seed, max_host_load=max_host_load)
    try:
        plan = plan_from_scenario(scenario, **overrides) if scenario is not None else \
            ServingPlan(**{k: v for k, v in overrides.items() if v is not None})
    except (ScenarioError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario" if scenario else "--max-gamma")
    if batch_sizes:  # sessions per verify batch (probe) and per drafter node (node phases, bare grid): as the deployment has them
        sizes = _int_list(batch_sizes, "batch sizes", 1, MAX_PROBE_BATCH, "--batch-sizes")
        plan = replace(plan, batch_sizes=sizes, probe=replace(plan.probe, batch_sizes=sizes))
    if attached:
        plan = replace(plan, slowdowns=())  # quotas need a testbed of our own
    return replace(plan, rounds=48) if quick else plan


def _tables(pp, summary: dict) -> list:
    from rich.table import Table

    sp = pp.serving
    t = Table(title=f"serving nodes: what a round costs beyond bare forwards ({sp.setting.q_mode}, T={sp.setting.temperature:g}, "
                    f"γ = {sp.setting.gamma}); ms")
    t.add_column("term")
    t.add_column("serving", justify="right")
    t.add_column("bare forwards", justify="right")
    t.add_row("target forwards, batch 1, γ + 1 tokens", f"{summary['target_forward_ms_batch1']:.2f}",
              "–" if summary["target_forward_bare_ms_batch1"] is None else f"{summary['target_forward_bare_ms_batch1']:.2f}")
    t.add_row("draft pass, batch 1, γ tokens", f"{summary['draft_pass_ms']:.2f}", f"{summary['draft_pass_bare_ms']:.2f}")
    t.add_row(f"verifier framework per batch ({' / '.join(summary['verifier_framework_ms'])} drafts)", " / ".join(f"{v:.2f}" for v in summary["verifier_framework_ms"].values()), "0")
    t.add_row("drafter + wire framework per round", f"{summary['drafter_framework_ms']:.2f}", "0")
    t.add_row("device CPU per round off the round's path", f"{summary['drafter_background_ms']:.2f}", "0")
    t.add_row("a draft arriving / a verdict leaving during a forward", f"{summary['overlap_ms']:.2f} / {summary['verdict_overlap_ms']:.2f}", "0")
    t.add_row("session open (beyond the link)", f"{summary['open_ms']:.2f}", "0")
    t.add_row("HTTP request (user TTFT − engine TTFT)", f"{summary['request_ms']:.2f}", "0")
    t.add_row("first round of a lone session (engine TTFT)", f"{summary['first_round_ms']:.2f}", "")
    for k, v in summary["devices_pass_ms"].items():
        if k != "1":
            cpu = summary["devices_cpu_per_round_ms"].get(k)
            t.add_row(f"draft pass, {k} devices with a session each on the device CPUs", f"{v:.2f}",
                      f"device CPU per round {cpu:.2f} (alone {summary['devices_cpu_per_round_ms']['1']:.2f}); core efficiency "
                      f"{summary['core_efficiency'][k]:.2f}" if cpu is not None else f"core efficiency {summary['core_efficiency'][k]:.2f}")
    for s, v in summary["quota_pass_ms"].items():
        t.add_row(f"draft pass under a quota of 1/{s} core", f"{v:.2f}", f"share of a core {sp.quota_cap(float(s)):.2f}")
    gamma = max(c.max_gamma for c in pp.acceptance)
    a = Table(title="acceptance on the profile's prompts; a_i = P(draft i accepted | 1..i-1 accepted)")
    for col in ("answer tokens", "setting", "rounds", f"tok/round γ={gamma}", *[f"a{i}" for i in range(1, gamma + 1)]):
        a.add_column(col, justify="left" if col == "setting" else "right")
    for c in pp.acceptance:
        a.add_row(str(c.answer_tokens), c.label, str(c.rounds), f"{c.tokens_per_round(c.max_gamma):.2f}", *[f"{x:.2f}" for x in c.per_position])
    return [t, a]


def profile_serving(*, out: Path, draft: Optional[Path], target: Optional[Path], quick: bool, threads: int, gamma: Optional[int], seed: int,
                    json_out: bool, scenario: Optional[Path], answer_tokens: Optional[str], temperature: Optional[float],
                    q_mode: Optional[str], top_k: Optional[int], attach: tuple, token_file: Optional[Path], console,
                    progress_bars: Callable, load_pair: Callable, max_host_load: float = 0.1, batch_sizes: Optional[str] = None) -> int:
    """The command; returns its exit status (option errors raise typer.BadParameter: exit 2)."""
    attached = _attach(*attach, token_file)
    plan = _plan(scenario, gamma, answer_tokens, temperature, q_mode, top_k, quick, seed, attached is not None, max_host_load, batch_sizes)
    from edgespec.testbed.netns import TestbedError

    if attached is None:
        from edgespec.testbed.check import require

        try:
            require(cpu_quota=bool(plan.slowdowns))
        except TestbedError as exc:
            console.print(f"error: {exc} (or attach to running nodes with --attach-verifier, --attach-metrics, --attach-drafters)")
            return 1
    with console.status("loading models…"):
        import torch

        from edgespec.models.serving_profile import measure_serving_pair, serving_summary
        from edgespec.plan.pairprofile import write_pair_profile

        torch.set_num_threads(threads)
        d, t = load_pair(draft, target)
    flags = [("--scenario", scenario), ("--answer-tokens", answer_tokens), ("--temperature", temperature), ("--q-mode", q_mode),
             ("--top-k", top_k), ("--max-gamma", gamma), ("--batch-sizes", batch_sizes), ("--draft", draft), ("--target", target)]
    command = ["edgespec", "profile", "--serving", "--out", str(out), *(["--quick"] if quick else []), "--threads", str(threads),
               "--seed", str(seed), *[str(v) for f, v in flags if v is not None for v in (f, v)]]
    try:
        with progress_bars(console) as report:
            pp = measure_serving_pair(d, t, plan, attach=attached, progress=report, say=console.print, command=shlex.join(command))
    except (TestbedError, RuntimeError, OSError) as exc:
        console.print(f"error: the serving profile failed: {exc}")
        return 1
    write_pair_profile(pp, out)
    summary = serving_summary(pp)
    for table in _tables(pp, summary):
        console.print(table)
    console.print(f"wrote {out} ({pp.format}) in {pp.meta['wall_s']:.1f} s")
    if json_out:
        print(json.dumps({"profile": str(out), "format": pp.format, "wall_s": pp.meta["wall_s"], **summary}))
    return 0
