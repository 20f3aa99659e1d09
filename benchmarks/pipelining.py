"""End-to-end latency per token with and without pipelined drafting (EdgeConfig.pipeline), for a few concurrent sessions.

Regime: the bundled pair served for real: one verifier node (batched verification) in a process of
its own with `--verifier-threads` torch threads, and in this process two drafter nodes with the
same draft model, identical except `pipeline` (on: while a block is out for verification, draft the
next one assuming full acceptance plus the draft's guess of the bonus token; kept on a hit, dropped
on a miss), `--drafter-threads` torch threads; protobuf over WebSocket on 127.0.0.1, no added network
delay. Default 1 thread per side, so on a 2-core machine the drafter side and the verifier side each
have about one core, the regime pipelining is meant for (the draft model on a device of its own).
Static γ (`--gamma`, 4), top-K q (K = 8). S closed-loop clients each send requests of `--max-tokens`
new tokens (EOS ignored) back to back for `--duration-s`, through the drafter engine (`engine.submit`,
the code path behind the OpenAI API; the HTTP hop is left out); the two nodes are measured alternately
at each (temperature, S) point.

Latency per token = a request's wall time (submit to last token) / its completion tokens, median
over requests; ITL = (wall − time to first token) / (tokens − 1); also TTFT, aggregate tokens/s,
pipeline hits/misses (a hit = the speculative block was sent the moment the verdict arrived) and
the CPU seconds per wall second of the draft thread (pipelining spends draft compute on blocks that
may be dropped).

Prints a rich table; the last line of stdout is one JSON object.
Run: .venv/bin/python benchmarks/pipelining.py [--quick] [--sessions 1,2,4] [--temperatures 0,1] [--duration-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from _serving import VerifierProcess, Workload, add_pair_argument, edge_config, load_draft, machine, pair_prompts, run_workload


async def measure(args, draft, verifier: VerifierProcess) -> list[dict]:
    from edgespec.edge import EdgeNode

    prompts = pair_prompts(draft, args.pair)
    rows, nodes = [], {}
    try:
        for pipeline in (False, True):
            node = EdgeNode(edge_config(verifier.address, node_id=f"edge-pipeline-{'on' if pipeline else 'off'}", pipeline=pipeline,
                                        gamma=args.gamma, max_gamma=max(args.gamma, 1)), draft=draft)
            await node.start()
            nodes[pipeline] = node
            if not await node.wait_connected(30.0):
                raise RuntimeError("the drafter node did not connect to the verifier")
            await run_workload(node.engine, prompts, Workload(2, 0.0, 16))  # warm-up
        for temperature in args.temperatures:
            for s in args.sessions:
                for pipeline, node in nodes.items():
                    m = await run_workload(node.engine, prompts, Workload(s, args.duration_s, args.max_tokens, temperature=temperature))
                    row = {"temperature": temperature, "sessions": s, "pipeline": pipeline, **m.summary()}
                    spec = m.pipeline_hits + m.pipeline_misses
                    row["pipeline_hit_rate"] = m.pipeline_hits / spec if spec else None
                    rows.append(row)
                    print(f"  T={temperature:g} S={s:>2} pipeline {'on ' if pipeline else 'off'} {row['per_token_ms_median']:7.2f} ms/token  "
                          f"{m.tokens_per_s:6.1f} tok/s  hits {m.pipeline_hits}/{spec}", flush=True)
    finally:
        for node in nodes.values():
            await node.stop()
    return rows


def compare(rows: list[dict]) -> list[dict]:
    by = {(r["temperature"], r["sessions"], r["pipeline"]): r for r in rows}
    out = []
    for (temperature, s, pipeline), on in by.items():
        off = by.get((temperature, s, False))
        if pipeline and off and off["per_token_ms_median"]:
            out.append({"temperature": temperature, "sessions": s,
                        "per_token_ms_off": off["per_token_ms_median"], "per_token_ms_on": on["per_token_ms_median"],
                        "latency_change_pct": 100 * (on["per_token_ms_median"] / off["per_token_ms_median"] - 1),
                        "tokens_per_s_change_pct": 100 * (on["tokens_per_s"] / off["tokens_per_s"] - 1) if off["tokens_per_s"] else None,
                        "draft_thread_cpu_ratio": (on["draft_thread_cpu_s"] / off["draft_thread_cpu_s"])
                        if on["draft_thread_cpu_s"] and off["draft_thread_cpu_s"] else None})
    return out


def show(rows: list[dict], comparison: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    t = Table(title=f"Latency per token with and without pipelined drafting ({args.pair} pair, γ = {args.gamma}, top-8 q, {args.max_tokens} tokens/request, "
                    f"verifier {args.verifier_threads} thread(s), drafter {args.drafter_threads})")
    for col in ("T", "sessions", "pipeline", "ms/token (median)", "ITL ms", "TTFT ms", "tokens/s", "accept", "tok/round", "hits", "misses",
                "hit rate", "draft-thread cores", "drafter cores", "requests"):
        t.add_column(col, justify="right")
    for r in rows:
        hr = r["pipeline_hit_rate"]
        t.add_row(f"{r['temperature']:g}", str(r["sessions"]), "on" if r["pipeline"] else "off", f"{r['per_token_ms_median']:.2f}",
                  f"{r['itl_ms_median']:.2f}", f"{r['ttft_ms_median']:.1f}", f"{r['tokens_per_s']:.1f}", f"{r['acceptance_rate']:.2f}",
                  f"{r['tokens_per_round']:.2f}", str(r["pipeline_hits"]), str(r["pipeline_misses"]), "" if hr is None else f"{hr:.0%}",
                  "n/a" if r["draft_thread_cores"] is None else f"{r['draft_thread_cores']:.2f}", f"{r['drafter_cores']:.2f}", str(r["requests"]))
    console.print(t)
    t = Table(title="Pipelining on vs off")
    for col in ("T", "sessions", "ms/token off", "ms/token on", "latency change", "tokens/s change", "draft CPU on ÷ off"):
        t.add_column(col, justify="right")
    for c in comparison:
        t.add_row(f"{c['temperature']:g}", str(c["sessions"]), f"{c['per_token_ms_off']:.2f}", f"{c['per_token_ms_on']:.2f}",
                  f"{c['latency_change_pct']:+.1f}%", "" if c["tokens_per_s_change_pct"] is None else f"{c['tokens_per_s_change_pct']:+.1f}%",
                  "" if c["draft_thread_cpu_ratio"] is None else f"{c['draft_thread_cpu_ratio']:.2f}×")
    console.print(t)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sessions 1 and 4, temperature 0, 2.5 s per point (a smoke run)")
    parser.add_argument("--sessions", default="1,2,4", help="comma-separated session counts")
    parser.add_argument("--temperatures", default="0,1", help="comma-separated temperatures")
    parser.add_argument("--duration-s", type=float, default=5.0, help="closed-loop time per point and mode")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--verifier-threads", type=int, default=1)
    parser.add_argument("--drafter-threads", type=int, default=1)
    add_pair_argument(parser)
    args = parser.parse_args(argv)
    args.sessions = [int(x) for x in args.sessions.split(",") if x.strip()]
    args.temperatures = [float(x) for x in args.temperatures.split(",") if x.strip()]
    if args.quick:
        args.sessions, args.temperatures, args.duration_s = [1, 4], [0.0], 2.5

    t0 = time.perf_counter()
    draft = load_draft(args.drafter_threads, args.pair)
    with VerifierProcess(args.verifier_threads, pair=args.pair, max_gamma=max(args.gamma, 1)) as verifier:
        rows = asyncio.run(measure(args, draft, verifier))
    comparison = compare(rows)
    show(rows, comparison, args)
    print(json.dumps({"benchmark": "pipelining", "quick": args.quick, "gamma": args.gamma, "max_tokens": args.max_tokens,
                      "duration_s": args.duration_s, "verifier_threads": args.verifier_threads, "drafter_threads": args.drafter_threads,
                      "machine": machine(), "rows": rows, "comparison": comparison, "total_s": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
