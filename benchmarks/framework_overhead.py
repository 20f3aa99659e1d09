"""Framework overhead per round (the time outside model forwards) vs concurrent sessions, measured from each verdict's RoundTiming; issue 3 asks for ≤ 2 ms p50 at 16 sessions on loopback.

Regime: the bundled pair (draft 1.5M, target 23M parameters, vocab 8192, float32, CPU) served for real:
one verifier node (`edgespec.server`, batched verification, `--batch-window-ms`) in a process of its
own and one drafter node (`edgespec.edge`) in this process, protobuf over WebSocket on 127.0.0.1;
`--verifier-threads` / `--drafter-threads` torch threads (default 1 each). Greedy decoding (tokens-only
q), static γ (`--gamma`, 4), no pipelining. S closed-loop clients each send requests of `--max-tokens`
new tokens (EOS ignored) back to back for `--duration-s`, through the drafter engine (`engine.submit`,
the code path behind the OpenAI API; the HTTP hop is left out).

Definition, per round (one draft block of one session):
- round: on the drafter, from just before the Draft is encoded and sent (`DraftEngine._try_send`) to
  just after its verdict's tokens are applied to the transcript and streamed to the request (`_emit`);
- forward: the verdict's `RoundTiming.forward_us`, the target forwards (prefill + verification forward)
  of the batch that verified the draft;
- busy wait: `RoundTiming.busy_wait_us`, the part of the draft's wait in the verifier's queue during
  which the verifier ran target forwards of other batches;
- overhead = round − forward − busy wait: serialization, transport both ways, both event loops,
  validation, queueing outside forwards (the batching window included), the verification maths,
  scheduling. Its split: verifier-side = server − forward − busy wait (`RoundTiming.server_us`: the
  draft's frame received → its verdict queued for sending), drafter + wire = overhead − verifier-side
  (the drafter's encode, send, receive and apply, both trips over loopback, and, since the verdict
  carries its timing, the verdict's wait in the verifier's outbox and its encoding).
No draft-model forward lies inside a round: without pipelining a session drafts after its verdict.
Every round's overhead comes from the drafter engine's stats (`EngineStats.round_overhead_s`, drained
as the run goes); forward and busy wait from the verdicts; the verifier's own histogram
(`edgespec_verifier_round_overhead_seconds`) gives its mean as a cross-check of the verifier-side part.

Prints a rich table; the last line of stdout is one JSON object ("met": p50 overhead ≤ 2 ms at S = 16).
Run: .venv/bin/python benchmarks/framework_overhead.py [--quick] [--sessions 1,4,16] [--duration-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import numpy as np

from _serving import VerifierProcess, Workload, add_pair_argument, edge_config, load_draft, machine, pair_prompts, pin, run_workload, split_cpus

TARGET_MS = 2.0
TARGET_SESSIONS = 16
DRAIN_PERIOD_S = 0.05  # the engine keeps its last 8192 samples: drain them well before that


class RoundLog:
    """Every round of a drafter engine: overhead and its verifier share (from `EngineStats`) and the verdict's RoundTiming."""

    def __init__(self, engine):
        self.engine = engine
        self.total_s, self.verifier_s, self.forward_s, self.busy_wait_s, self.server_s = [], [], [], [], []
        original = engine.on_verdict

        def on_verdict(key, verdict, _original=original):
            _original(key, verdict)  # first: the engine's sample ends inside it
            if verdict.HasField("timing"):
                t = verdict.timing
                self.forward_s.append(t.forward_us / 1e6)
                self.busy_wait_s.append(t.busy_wait_us / 1e6)
                self.server_s.append(t.server_us / 1e6)

        engine.on_verdict = on_verdict  # the pool looks the listener's method up on every call

    def drain(self) -> None:
        stats = self.engine.stats
        while stats.round_overhead_s:
            self.total_s.append(stats.round_overhead_s.popleft())
            self.verifier_s.append(stats.verifier_overhead_s.popleft())

    def reset(self) -> None:
        self.drain()
        for samples in (self.total_s, self.verifier_s, self.forward_s, self.busy_wait_s, self.server_s):
            samples.clear()

    async def drain_forever(self) -> None:
        while True:
            self.drain()
            await asyncio.sleep(DRAIN_PERIOD_S)


def _ms(values, q: float) -> float:
    return 1000.0 * float(np.percentile(values, q)) if len(values) else float("nan")


def _mean_ms(values) -> float:
    return 1000.0 * statistics.fmean(values) if values else float("nan")


def summarize(log: RoundLog) -> dict:
    """Percentiles of the overhead and its split, and the means of the round's parts (mean round = overhead + forward + busy wait)."""
    total, verifier = np.array(log.total_s), np.array(log.verifier_s)
    drafter = total - verifier
    out = {"samples": len(total)}
    for q in (50, 90, 99):
        out[f"overhead_ms_p{q}"] = _ms(total, q)
        out[f"verifier_side_ms_p{q}"] = _ms(verifier, q)
        out[f"drafter_wire_ms_p{q}"] = _ms(drafter, q)
    out.update(overhead_ms_mean=_mean_ms(log.total_s), verifier_side_ms_mean=_mean_ms(log.verifier_s),
               drafter_wire_ms_mean=_mean_ms(list(drafter)), forward_ms_mean=_mean_ms(log.forward_s),
               busy_wait_ms_mean=_mean_ms(log.busy_wait_s), server_ms_mean=_mean_ms(log.server_s))
    out["round_ms_mean"] = out["overhead_ms_mean"] + out["forward_ms_mean"] + out["busy_wait_ms_mean"]
    return out


def histogram_mean_ms(before: dict, after: dict) -> float:
    count = after["count"] - before["count"]
    return 1000.0 * (after["sum"] - before["sum"]) / count if count else float("nan")


async def measure(args, draft, verifier: VerifierProcess) -> list[dict]:
    from edgespec.edge import EdgeNode

    prompts = pair_prompts(draft, args.pair)
    node = EdgeNode(edge_config(verifier.address, node_id="edge-overhead", gamma=args.gamma, max_gamma=max(args.gamma, 1), pipeline=False), draft=draft)
    await node.start()
    rows = []
    try:
        if not await node.wait_connected(30.0):
            raise RuntimeError("the drafter node did not connect to the verifier")
        log = RoundLog(node.engine)
        await run_workload(node.engine, prompts, Workload(2, 0.0, 16))  # warm-up: threads, allocator, caches
        for s in args.sessions:
            log.reset()
            before = verifier.stats()
            drainer = asyncio.create_task(log.drain_forever())
            try:
                m = await run_workload(node.engine, prompts, Workload(s, args.duration_s, args.max_tokens))
            finally:
                drainer.cancel()
            after = verifier.stats()
            log.drain()
            batches = after["batches"] - before["batches"]
            row = {"sessions": s, "rounds": m.rounds, **summarize(log),
                   "verifier_histogram_ms_mean": histogram_mean_ms(before["round_overhead"], after["round_overhead"]),
                   "tokens_per_s": m.tokens_per_s, "acceptance_rate": m.acceptance, "requests": m.requests, "wall_s": m.wall_s,
                   "mean_batch_drafts": (after["batch_drafts"] - before["batch_drafts"]) / batches if batches else 0.0,
                   "drafter_cores": m.drafter_cpu_s / m.wall_s, "verifier_cores": (after["cpu_s"] - before["cpu_s"]) / m.wall_s}
            rows.append(row)
            print(f"  S={s:>2} {row['rounds']} rounds  overhead p50 {row['overhead_ms_p50']:.2f} ms (verifier {row['verifier_side_ms_p50']:.2f}, "
                  f"drafter+wire {row['drafter_wire_ms_p50']:.2f})  forward {row['forward_ms_mean']:.2f} ms  round {row['round_ms_mean']:.2f} ms  "
                  f"{m.tokens_per_s:.1f} tok/s", flush=True)
    finally:
        await node.stop()
    return rows


def show(rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    t = Table(title=f"Framework overhead per round = round − forward − busy wait ({args.pair} pair, greedy, static γ={args.gamma}, no pipelining, "
                    f"batch window {args.batch_window_ms:g} ms, verifier {args.verifier_threads} thread(s), drafter {args.drafter_threads})")
    for col in ("sessions", "rounds", "overhead p50 / p90 / p99 ms", "verifier-side p50 / mean ms", "drafter+wire p50 / mean ms",
                "verifier hist. mean ms", "forward mean ms", "busy wait mean ms", "round mean ms", "batch (drafts)", "tokens/s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["sessions"]), str(r["rounds"]),
                  f"{r['overhead_ms_p50']:.2f} / {r['overhead_ms_p90']:.2f} / {r['overhead_ms_p99']:.2f}",
                  f"{r['verifier_side_ms_p50']:.2f} / {r['verifier_side_ms_mean']:.2f}", f"{r['drafter_wire_ms_p50']:.2f} / {r['drafter_wire_ms_mean']:.2f}",
                  f"{r['verifier_histogram_ms_mean']:.2f}", f"{r['forward_ms_mean']:.2f}", f"{r['busy_wait_ms_mean']:.2f}",
                  f"{r['round_ms_mean']:.2f}", f"{r['mean_batch_drafts']:.2f}", f"{r['tokens_per_s']:.1f}")
    console.print(t)
    at = next((r for r in rows if r["sessions"] == TARGET_SESSIONS), None)
    if at is not None:
        verdict = "meets" if at["overhead_ms_p50"] <= TARGET_MS else "misses"
        console.print(f"At {TARGET_SESSIONS} sessions the p50 overhead per round is {at['overhead_ms_p50']:.2f} ms ({verdict} the ≤ {TARGET_MS:g} ms target).")
    where = "the verifier pinned to the last core, the drafter node and clients to the others" if args.pin else "both processes share them"
    console.print(f"The machine has {machine()['cpus']} cores; {where}.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sessions 1 and 16, 2.5 s each (a smoke run)")
    parser.add_argument("--sessions", default=str(TARGET_SESSIONS), help="comma-separated session counts, e.g. 1,4,16")
    parser.add_argument("--duration-s", type=float, default=10.0, help="closed-loop time per session count")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per request")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--batch-window-ms", type=float, default=0.0, help="the verifier's batching window (its default)")
    parser.add_argument("--verifier-threads", type=int, default=1)
    parser.add_argument("--drafter-threads", type=int, default=1)
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin (default: the verifier on the last core, this process on the others, as `taskset` would)")
    add_pair_argument(parser)
    args = parser.parse_args(argv)
    args.sessions = [int(x) for x in args.sessions.split(",") if x.strip()]
    if args.quick:
        args.sessions, args.duration_s = [1, TARGET_SESSIONS], 2.5

    t0 = time.perf_counter()
    verifier_cpus, other_cpus = split_cpus() if args.pin else (None, None)
    pin(other_cpus)
    draft = load_draft(args.drafter_threads, args.pair)
    with VerifierProcess(args.verifier_threads, verifier_cpus, pair=args.pair, batch_window_ms=args.batch_window_ms,
                         max_gamma=max(args.gamma, 1)) as verifier:
        rows = asyncio.run(measure(args, draft, verifier))
    show(rows, args)
    at = next((r for r in rows if r["sessions"] == TARGET_SESSIONS), None)
    result = {"benchmark": "framework_overhead", "quick": args.quick, "gamma": args.gamma, "max_tokens": args.max_tokens,
              "duration_s": args.duration_s, "batch_window_ms": args.batch_window_ms, "verifier_threads": args.verifier_threads,
              "drafter_threads": args.drafter_threads, "pinned": args.pin, "machine": machine(), "rows": rows, "target_ms": TARGET_MS,
              "target_sessions": TARGET_SESSIONS, "p50_ms_at_target": at["overhead_ms_p50"] if at else None,
              "met": (at["overhead_ms_p50"] <= TARGET_MS) if at else None, "total_s": time.perf_counter() - t0}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
