"""The `edgespec` command line: demo, generate, bench, plan, profile (typer app; heavy imports happen inside commands, so `plan` never loads torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="edgespec: lossless distributed speculative decoding for edge networks.",
)



bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (tables for people; --json ends with one JSON line).")
app.add_typer(bench_app, name="bench")

from edgespec.testbed.cli import app as testbed_app  # noqa: E402  (light: typer, rich, no torch)

app.add_typer(testbed_app, name="testbed")

from edgespec.models.cli import app as models_app, pair_option_help, resolve_pair  # noqa: E402  (light: typer only)

app.add_typer(models_app, name="models")


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # pipes and logs: wide enough for the benchmark tables
        console = Console(highlight=False, width=160)
    return console


# --device / --dtype / --cuda-graphs of the commands that run models (checked before anything loads)
DEVICE_HELP = "torch device of the models: cpu, cuda or cuda:N."
DTYPE_HELP = "model dtype: float32, bfloat16 or float16."
GRAPHS_HELP = "capture decode/verify steps as CUDA graphs (the default with --device cuda)."
NO_GRAPHS_HELP = "run every step eagerly on CUDA."


def _device_options(device: str, dtype: str, cuda_graphs: bool, no_cuda_graphs: bool):
    """The checked device options, or exit 2 with one line naming the option."""
    from edgespec.models.device import DeviceError, device_options

    try:
        return device_options(device, dtype, cuda_graphs or None, no_cuda_graphs)
    except DeviceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


def _load_pair(draft: Optional[Path], target: Optional[Path], need_draft: bool = True, pair: str = "bundled", opts=None):
    """Load target (and draft) from directories or GGUF files, defaulting to the named pair's, on `opts` (default: CPU, float32
    target); clear errors on failure. The draft runs in its own card's CPU dtype unless `opts` names a dtype other than float32."""
    import torch

    from edgespec.models.runtime import CausalLM, ModelLoadError, check_same_tokenizer

    draft, target = resolve_pair(pair, draft, target, need_draft)
    where = {} if opts is None else {"device": opts.device, "cuda_graphs": opts.cuda_graphs}
    target_dtype = torch.float32 if opts is None else opts.dtype
    draft_dtype = None if target_dtype == torch.float32 else target_dtype
    try:
        t = CausalLM.load(target, dtype=target_dtype, **where)
        d = CausalLM.load(draft, dtype=draft_dtype, **where) if need_draft else None
        if d is not None:
            check_same_tokenizer(d, t)
    except (ModelLoadError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    return d, t


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", help="Prompt text."),
    mode: str = typer.Option("sd", "--mode", help="sd (speculative) or ad (autoregressive)."),
    gamma: int = typer.Option(4, "--gamma", min=0, max=32, help="Draft length per round (SD)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Top-k filter of p (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus filter of p (1 = off)."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="New tokens to generate."),
    seed: Optional[int] = typer.Option(
        None, "--seed", min=0, max=2**64 - 1,
        help="Seeded sampling: the same text for sd and ad, any --gamma/--q-mode, and a served request with this seed (default: unseeded rejection sampling).",
    ),
    q_mode: str = typer.Option("full", "--q-mode", help="How q reaches the verifier: full, topk or tokens."),
    q_top_k: int = typer.Option(8, "--q-top-k", min=1, help="K for --q-mode topk."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory or .gguf file (default: the pair's)."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory or .gguf file (default: the pair's)."),
    pair: str = typer.Option("bundled", "--pair", help=pair_option_help),
    chat: bool = typer.Option(False, "--chat", help="Send the prompt as a user message through the model's chat template."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=GRAPHS_HELP),
    no_cuda_graphs: bool = typer.Option(False, "--no-cuda-graphs", help=NO_GRAPHS_HELP),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
) -> None:
    """Generate in-process with speculative (sd) or autoregressive (ad) decoding."""
    import json

    if mode not in ("sd", "ad"):
        raise typer.BadParameter("must be 'sd' or 'ad'", param_hint="--mode")
    if q_mode not in ("full", "topk", "tokens"):
        raise typer.BadParameter("must be full, topk or tokens", param_hint="--q-mode")
    if top_p <= 0:
        raise typer.BadParameter("must be in (0, 1]", param_hint="--top-p")
    opts = _device_options(device, dtype, cuda_graphs, no_cuda_graphs)
    console = _console()
    with console.status("loading models…"):
        from edgespec.api import SpeculativeDecoder

        d, t = _load_pair(draft, target, need_draft=mode == "sd", pair=pair, opts=opts)
        decoder = SpeculativeDecoder(t, d)
    if chat and not decoder.has_chat_template:
        raise typer.BadParameter("this target has no chat template", param_hint="--chat")
    with console.status(f"generating ({mode})…"):
        ids = decoder.encode_chat([{"role": "user", "content": prompt}]) if chat else prompt
        out = decoder.generate(ids, mode=mode, max_new_tokens=max_tokens, gamma=gamma, temperature=temperature,
                               top_k=top_k, top_p=top_p, q_mode=q_mode, q_top_k=q_top_k, seed=seed)
    summary = {
        "text": out.text, "token_ids": out.token_ids, "mode": mode, "num_rounds": out.num_rounds,
        "num_draft_tokens": out.num_draft_tokens, "num_accepted_tokens": out.num_accepted_tokens,
        "acceptance_rate": round(out.acceptance_rate, 4), "wall_s": round(out.wall_s, 4),
        "tokens_per_s": round(out.tokens_per_s, 2), "ttft_s": round(out.ttft_s, 4), "finished_by": out.finished_by,
    }
    if json_out:
        print(json.dumps(summary))
        return
    console.print(prompt, style="dim", end="")
    console.print(out.text, markup=False, highlight=False)
    line = f"{mode.upper()}: {len(out.token_ids)} tokens in {out.wall_s:.2f} s ({out.tokens_per_s:.1f} tok/s), {out.num_rounds} rounds"
    if mode == "sd":
        line += f", acceptance {out.acceptance_rate:.2f}, {len(out.token_ids) / max(out.num_rounds, 1):.2f} tokens/round"
    console.print(line, style="bold")


@app.command()
def demo(
    in_process: bool = typer.Option(False, "--in-process", help="Skip the network: AD vs SD in this process, side by side."),
    gamma: int = typer.Option(4, "--gamma", min=1, max=32, help="Draft length per round (--in-process)."),
    max_tokens: int = typer.Option(0, "--max-tokens", min=0, help="New tokens per request (default 32 distributed, 64 in-process)."),
    prompts: int = typer.Option(4, "--prompts", min=1, max=8, help="Prompts per drafter node (distributed; each sent greedy and sampled)."),
    loads: str = typer.Option("1,8,24", "--loads", help="Concurrent sessions at each load of the sweep (distributed), e.g. 1,8,24."),
    duration_s: float = typer.Option(4.0, "--duration-s", min=0.0, help="Closed-loop time per load and node in the sweep (distributed)."),
    pair: str = typer.Option("bundled", "--pair", help=pair_option_help),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON summary line (distributed)."),
) -> None:
    """Serve a pair over loopback: a verifier node and drafter nodes, losslessness, then SD vs AD as the load grows."""
    resolve_pair(pair, None, None)  # a bad name exits 2; a pair not yet cached is fetched here, once
    if in_process:
        _demo_in_process(gamma, max_tokens or 64, pair)
    else:
        _demo_distributed(max_tokens or 32, prompts, _positive_ints(loads, "--loads"), duration_s, json_out, pair)


def _positive_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected comma-separated whole numbers >= 1, got {text!r}", param_hint=option)
    return values


def _demo_distributed(max_tokens: int, prompts: int, loads: tuple[int, ...], duration_s: float, json_out: bool, pair: str) -> None:
    import json

    from edgespec.bench.prompts import prompts_for
    from edgespec.demo.nodes import NodeStartError
    from edgespec.demo.run import DemoConfig, run_demo
    from edgespec.models.catalog import pair_spec

    console = _console()
    chat = pair_spec(pair).chat
    cfg = DemoConfig(prompts=prompts_for(chat)[:prompts], max_tokens=max_tokens, loads=loads, duration_s=duration_s, pair=pair, chat=chat)
    try:
        report = run_demo(cfg, console, lambda msg: console.print(f"[dim]· {msg}[/dim]"))
    except NodeStartError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted; every node was stopped", err=True)
        raise typer.Exit(130)
    if json_out:
        print(json.dumps(report))


def _demo_in_process(gamma: int, max_tokens: int, pair: str) -> None:
    """Run a few of the pair's prompts with AD and SD in this process and compare them side by side."""
    from rich.table import Table

    from edgespec.bench.prompts import prompts_for
    from edgespec.bench.sd_vs_ad import pair_prompts
    from edgespec.models.catalog import pair_spec

    console = _console()
    chat = pair_spec(pair).chat
    with console.status(f"loading the {pair} draft/target pair…"):
        from edgespec.api import SpeculativeDecoder

        d, t = _load_pair(None, None, pair=pair)
        decoder = SpeculativeDecoder(t, d)
        texts, prompts = prompts_for(chat)[:5], pair_prompts(t, pair)[:5]
        decoder.generate(prompts[0], max_new_tokens=8)  # warm-up
    table = Table(title=f"edgespec demo: {pair} pair, greedy, γ={gamma}, {max_tokens} new tokens per prompt{' (or to EOS)' if chat else ''}")
    for col in ("prompt", "AD tok/s", "SD tok/s", "accepted/round", "acceptance", "speedup", "same output"):
        table.add_column(col, justify="left" if col == "prompt" else "right")
    totals = {"ad": [0, 0.0], "sd": [0, 0.0]}
    shown = None
    for i, (text, prompt) in enumerate(zip(texts, prompts), 1):
        with console.status(f"prompt {i}/{len(prompts)}: AD then SD…"):
            ad = decoder.generate(prompt, mode="ad", max_new_tokens=max_tokens, stop_at_eos=chat)
            sd = decoder.generate(prompt, mode="sd", gamma=gamma, max_new_tokens=max_tokens, stop_at_eos=chat)
        for key, r in (("ad", ad), ("sd", sd)):
            totals[key][0] += len(r.token_ids)
            totals[key][1] += r.wall_s
        shown = shown or (text + ("\n" if chat else ""), sd.text)
        table.add_row(
            text.strip().splitlines()[0][:32], f"{ad.tokens_per_s:.1f}", f"{sd.tokens_per_s:.1f}",
            f"{sd.num_accepted_tokens / max(sd.num_rounds, 1):.2f}", f"{sd.acceptance_rate:.2f}",
            f"{sd.tokens_per_s / ad.tokens_per_s:.2f}×", "✓" if sd.token_ids == ad.token_ids else "✗",
        )
    ad_rate, sd_rate = totals["ad"][0] / totals["ad"][1], totals["sd"][0] / totals["sd"][1]
    table.add_row("all", f"{ad_rate:.1f}", f"{sd_rate:.1f}", "", "", f"{sd_rate / ad_rate:.2f}×", "", style="bold")
    console.print(table)
    console.print(f"\nSD {'answer to' if chat else 'completion of'} the first prompt:", style="bold")
    console.print(shown[0], style="dim", end="", markup=False, highlight=False)
    console.print(shown[1], markup=False, highlight=False)


@bench_app.command("sd-vs-ad")
def bench_sd_vs_ad(
    gammas: str = typer.Option("1,2,3,4,5,6,8", "--gammas", help="Comma-separated draft lengths."),
    max_tokens: int = typer.Option(96, "--max-tokens", min=8, help="New tokens per prompt."),
    repeats: int = typer.Option(24, "--repeats", min=3, help="Repeats per step timing (median over all passes)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory or .gguf file (default: the pair's)."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory or .gguf file (default: the pair's)."),
    pair: str = typer.Option("bundled", "--pair", help=pair_option_help),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=GRAPHS_HELP),
    no_cuda_graphs: bool = typer.Option(False, "--no-cuda-graphs", help=NO_GRAPHS_HELP),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
) -> None:
    """SD vs AD tokens/s of a pair over γ, with α, step times, and Leviathan's and the zero-overhead bounds."""
    import json

    from rich.table import Table

    from edgespec.bench import sd_vs_ad

    try:
        gamma_list = [int(g) for g in gammas.split(",") if g.strip()]
    except ValueError:
        raise typer.BadParameter("must be comma-separated integers", param_hint="--gammas")
    if not gamma_list or any(not 1 <= g <= 32 for g in gamma_list):
        raise typer.BadParameter("each γ must be in [1, 32]", param_hint="--gammas")
    opts = _device_options(device, dtype, cuda_graphs, no_cuda_graphs)
    console = _console()
    with console.status("loading models…"):
        d, t = _load_pair(draft, target, pair=pair, opts=opts)
    with console.status("measuring…") as status:
        rows = sd_vs_ad.run(d, t, gamma_list, max_tokens, repeats, progress=lambda m: status.update(f"measuring: {m}"),
                            prompts=sd_vs_ad.pair_prompts(t, pair))
    dtypes = "/".join(dict.fromkeys(str(m.dtype).removeprefix("torch.") for m in (t, d)))
    table = Table(title=f"SD vs AD ({pair if not (draft or target) else 'given'} pair, batch 1, greedy, {opts.describe()}, {dtypes})")
    for col in ("γ", "α", "α_token", "tok/round", "c", "t_draft ms", "t_target ms", "t_verify ms", "AD tok/s", "SD tok/s",
                "speedup", "Leviathan", "0-overhead", "of bound", "= AD"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.gamma), f"{r.alpha:.3f}", f"{r.alpha_token:.3f}", f"{r.tokens_per_round:.2f}", f"{r.c:.3f}", f"{r.t_draft_s * 1e3:.2f}",
                      f"{r.t_target_s * 1e3:.2f}", f"{r.t_verify_s * 1e3:.2f}", f"{r.ad_tokens_per_s:.1f}",
                      f"{r.sd_tokens_per_s:.1f}", f"{r.speedup:.2f}×", f"{r.leviathan_bound:.2f}×",
                      f"{r.speedup_bound:.2f}×", f"{r.share_of_bound:.0%}", f"{r.identical}/{r.identical + r.ties}")
    console.print(table)
    if any(r.ties for r in rows):
        console.print(f"= AD: SD outputs equal to AD's token for token; the others part from AD's at a rounding tie of the target's {dtypes.split('/')[0]} "
                      "logits (the two tokens within 4 ulps) and go on as another greedy answer (docs/models.md#reduced-precision)")
    result = sd_vs_ad.rows_to_json(rows)
    result.update(device=str(opts.device), dtype=str(opts.dtype).removeprefix("torch."), cuda_graphs=opts.cuda_graphs)
    if json_out:
        print(json.dumps(result))
    else:
        console.print(f"best γ = {result['best_gamma']}: {result['best_speedup']:.2f}× AD, {result['best_share_of_bound']:.0%} of the zero-overhead bound")


@app.command()
def plan(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario file (TOML)."),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a figure of the plan to this PNG."),
) -> None:
    """Plan batching, speculation length and bandwidth for a deployment (never imports torch)."""
    from edgespec.plan.cli import run_plan

    raise typer.Exit(run_plan(scenario=scenario, json_out=json_out, plot=plot))


@app.command()
def sim(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario file (TOML, the planner's format plus [sim] tables)."),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write latency.png and system.png into this directory."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write a Chrome-trace timeline (JSON) of the run."),
    requests: Optional[int] = typer.Option(None, "--requests", min=1, help="Override the workload's number of requests."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Override the scenario's seed."),
    requests_csv: Optional[Path] = typer.Option(None, "--requests-csv", help="Write one CSV row per request (timestamps, phases)."),
) -> None:
    """Simulate a deployment: drafter and verifier nodes, links, workload, the real policies (never imports torch)."""
    from edgespec.sim.cli import run_sim

    raise typer.Exit(run_sim(scenario=scenario, json_out=json_out, plot=plot, trace=trace, requests=requests, seed=seed,
                             requests_csv=requests_csv))


@app.command("profile")
def profile_command(
    out: Path = typer.Option(..., "--out", help="Pair profile JSON to write (edgespec-pair-profile/1)."),
    draft: Optional[Path] = typer.Option(None, "--draft", help="Draft model directory or .gguf file (default: the pair's)."),
    target: Optional[Path] = typer.Option(None, "--target", help="Target model directory or .gguf file (default: the pair's)."),
    pair: str = typer.Option("bundled", "--pair", help=pair_option_help),
    quick: bool = typer.Option(False, "--quick", help="Small grid, few tokens, γ = 4: a smoke run."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads while measuring."),
    max_gamma: Optional[int] = typer.Option(None, "--max-gamma", min=1, max=32,
                                            help="γ of the acceptance runs (default 8, 4 with --quick); γ+1 joins the verify grid."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every random draw of the acceptance runs."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help=GRAPHS_HELP),
    no_cuda_graphs: bool = typer.Option(False, "--no-cuda-graphs", help=NO_GRAPHS_HELP),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON summary on the last line."),
    serving: bool = typer.Option(False, "--serving", help="Profile serving nodes (a verifier and drafter nodes on a testbed, or --attach-*): "
                                 "writes edgespec-pair-profile/2 with what a round costs beyond bare forwards."),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="--serving: take γ, q mode, temperature, answer lengths and CPU quotas from this scenario."),
    answer_tokens: Optional[str] = typer.Option(None, "--answer-tokens", help="--serving: answer lengths, e.g. 64 or 32,128 (one acceptance curve each)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="--serving: sampling temperature of the workload (0 = greedy)."),
    q_mode: Optional[str] = typer.Option(None, "--q-mode", help="--serving: how q travels: full, topk or tokens."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="--serving: K for --q-mode topk."),
    attach_verifier: Optional[str] = typer.Option(None, "--attach-verifier", help="--serving: a running verifier HOST:PORT instead of a testbed."),
    attach_metrics: Optional[str] = typer.Option(None, "--attach-metrics", help="--serving: that verifier's metrics URL (http://HOST:PORT/metrics)."),
    attach_drafters: Optional[str] = typer.Option(None, "--attach-drafters", help="--serving: running drafter nodes' HTTP HOST:PORT[,HOST:PORT]."),
    auth_token_file: Optional[Path] = typer.Option(None, "--auth-token-file", help="--serving with --attach-*: the verifier's bearer token."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="--serving: sessions per verify batch and per drafter node to "
                                              "measure, e.g. 1,2,4,8,16,24 (default 1,2,4; larger ones are held at the largest measured)."),
    max_host_load: Optional[float] = typer.Option(None, "--max-host-load", min=0.0,
                                                  help="--serving: cores other processes of this host may take during a node phase "
                                                       "before it is measured again (default 0.1; a larger value accepts a noisier profile)."),
) -> None:
    """Measure a draft/target pair on this machine (step and verify times, per-position acceptance) into a pair profile for the simulator."""
    import json
    import shlex
    from dataclasses import replace

    _check_writable(out, "--out")
    opts = _device_options(device, dtype, cuda_graphs, no_cuda_graphs)
    serving_only = {"--scenario": scenario, "--answer-tokens": answer_tokens, "--temperature": temperature, "--q-mode": q_mode,
                    "--top-k": top_k, "--attach-verifier": attach_verifier, "--attach-metrics": attach_metrics,
                    "--attach-drafters": attach_drafters, "--auth-token-file": auth_token_file, "--max-host-load": max_host_load,
                    "--batch-sizes": batch_sizes}
    if not serving:
        for option, value in serving_only.items():
            if value is not None:
                raise typer.BadParameter("only with --serving", param_hint=option)
    else:
        if device != "cpu":
            raise typer.BadParameter("--serving profiles CPU nodes (on a testbed or attached); drop --device", param_hint="--device")
        from edgespec.models.serving_cli import profile_serving

        draft, target = resolve_pair(pair, draft, target)  # the testbed's nodes load the pair's files
        raise typer.Exit(profile_serving(out=out, draft=draft, target=target, quick=quick, threads=threads, gamma=max_gamma, seed=seed,
                                         json_out=json_out, scenario=scenario, answer_tokens=answer_tokens, temperature=temperature,
                                         q_mode=q_mode, top_k=top_k, attach=(attach_verifier, attach_metrics, attach_drafters),
                                         token_file=auth_token_file, console=_console(), progress_bars=_progress_bars, load_pair=_load_pair,
                                         max_host_load=0.1 if max_host_load is None else max_host_load, batch_sizes=batch_sizes))
    console = _console()
    with console.status("loading models…"):
        import torch

        from edgespec.bench.sd_vs_ad import pair_prompts
        from edgespec.models.profiling import FULL_GRID, QUICK_GRID, measure_pair
        from edgespec.plan.pairprofile import write_pair_profile

        torch.set_num_threads(threads)
        d, t = _load_pair(draft, target, pair=pair, opts=opts)
    grid = replace(QUICK_GRID if quick else FULL_GRID, seed=seed)
    grid = grid.with_max_gamma(max_gamma) if max_gamma else grid
    flags = [("--draft", draft), ("--target", target), ("--pair", pair if pair != "bundled" else None), ("--max-gamma", max_gamma),
             ("--device", device if opts.device.type != "cpu" else None), ("--dtype", dtype if opts.dtype != torch.float32 else None)]
    graphs_flag = ["--cuda-graphs"] * cuda_graphs + ["--no-cuda-graphs"] * no_cuda_graphs
    command = ["edgespec", "profile", "--out", str(out), *(["--quick"] if quick else []), "--threads", str(threads),
               "--seed", str(seed), *[str(v) for f, v in flags if v is not None for v in (f, v)], *graphs_flag]
    with _progress_bars(console) as report:
        pp = measure_pair(d, t, grid, prompts=pair_prompts(t, pair), progress=report, command=shlex.join(command))
    write_pair_profile(pp, out)
    for table in _pair_profile_tables(pp):
        console.print(table)
    console.print(f"wrote {out} in {pp.meta['wall_s']:.1f} s ({pp.meta['threads']} thread(s))")
    if json_out:
        print(json.dumps(_pair_profile_summary(pp, out)))


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output path that is a directory or whose directory does not exist or cannot be written, before any work."""
    import os

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory; give a file name", param_hint=option)
    if not parent.is_dir():
        raise typer.BadParameter(f"directory {parent} does not exist", param_hint=option)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise typer.BadParameter(f"cannot write {path}: permission denied", param_hint=option)


def _progress_bars(console):
    """A context manager yielding a `(phase, done, total)` callback that draws one rich progress bar per phase."""
    from edgespec.progress import progress_bars

    return progress_bars(console)


def _pair_profile_tables(pp) -> list:
    """Rich tables of a pair profile: step times, prefill times (ms) and acceptance curves."""
    from rich.table import Table

    steps = Table(title=f"step time, ms (median; context {pp.target.context_tokens} tokens)")
    steps.add_column("batch", justify="right")
    for role, prof, name in (("draft", pp.draft, "step"), ("target", pp.target, "verify")):
        for n in prof.step.tokens:
            steps.add_column(f"{role} {name} {int(n)} tok", justify="right")
    for i, b in enumerate(pp.target.step.batch_sizes):
        steps.add_row(str(int(b)), *[f"{v * 1e3:.2f}" for prof in (pp.draft, pp.target) for v in prof.step.time_s[i]])
    prefill = Table(title="prefill time, ms")
    prefill.add_column("batch", justify="right")
    for role, prof in (("draft", pp.draft), ("target", pp.target)):
        for n in prof.prefill.tokens:
            prefill.add_column(f"{role} {int(n)} tok", justify="right")
    for i, b in enumerate(pp.target.prefill.batch_sizes):
        prefill.add_row(str(int(b)), *[f"{v * 1e3:.2f}" for prof in (pp.draft, pp.target) for v in prof.prefill.time_s[i]])
    gamma = max(c.max_gamma for c in pp.acceptance)
    accept = Table(title=f"acceptance (static γ = {gamma}); a_i = P(draft i accepted | 1..i-1 accepted)")
    for col in ("setting", "rounds", "α", f"tok/round γ={gamma}", *[f"a{i}" for i in range(1, gamma + 1)]):
        accept.add_column(col, justify="left" if col == "setting" else "right")
    for c in pp.acceptance:
        accept.add_row(c.label, str(c.rounds), f"{c.alpha:.3f}", f"{c.tokens_per_round(c.max_gamma):.2f}",
                       *[f"{a:.2f}" for a in c.per_position])
    return [steps, prefill, accept]


def _pair_profile_summary(pp, out: Path) -> dict:
    """The --json line of `edgespec profile`: where the file went, batch-1 times and every curve."""
    return {
        "profile": str(out),
        "draft_step_s": dict(zip((str(int(b)) for b in pp.draft.step.batch_sizes), pp.draft.step.time_s[:, 0].tolist())),
        "target_verify_s_batch1": dict(zip((str(int(n)) for n in pp.target.step.tokens), pp.target.step.time_s[0].tolist())),
        "acceptance": [{"setting": c.label, "alpha": c.alpha, "per_position": list(c.per_position), "rounds": c.rounds}
                       for c in pp.acceptance],
        "wall_s": pp.meta["wall_s"],
    }


def _register_serving() -> None:
    """`edgespec serve` (verifier node) and `edgespec edge` (drafter node); their modules import torch only when run."""
    from edgespec.edge.cli import edge_command
    from edgespec.server.cli import serve_command

    app.command("serve")(serve_command)
    app.command("edge")(edge_command)


_register_serving()


if __name__ == "__main__":  # pragma: no cover
    app()
