"""Draft/verdict messages per second through one WebSocket connection on loopback: the protocol stack alone, no models.

Regime: one Python process, one asyncio event loop, so BOTH ends share ONE core: a drafter client
and a toy verifier server talking over 127.0.0.1 through a single `edgespec.protocol` WebSocket
connection (no TLS, no compression, stdlib asyncio loop). Every message goes through the whole
stack on both sides: message builders, the sans-I/O state machines (the verifier's includes the
draft shape checks of `unpack_draft`), the codec (protobuf) and websockets framing over TCP. The
verifier "verifies" nothing: it answers every draft at once with a verdict accepting one token. So
this measures the framework's per-message CPU cost, the budget issue 3 sets at >= 10k draft/verdict
messages per second on one core; real serving adds model time on top.

Rows: S sessions share the connection, each with its one outstanding draft (the protocol's limit),
so S = 1 is ping-pong (latency-bound) and S = 16 keeps the pipe full (throughput-bound); q is sent
top-K (K ids + K fp16 probs per drafted token), tokens-only, or full (V fp16 per drafted token).
Messages counted = drafts + verdicts. Round trip = draft sent -> its verdict received.

Prints a table for people; the last line is one JSON object.
Run: .venv/bin/python benchmarks/transport_msgs.py [--duration-s 1.5] [--gamma 4] [--top-k 8] [--vocab 8192]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import numpy as np

from edgespec.protocol import DrafterConnection, ProtocolError, Transport, VerifierConnection, connect, encode, pack_q, serve
from edgespec.protocol import messages as m

HOST = "127.0.0.1"


async def toy_verifier(transport: Transport, vocab: int) -> None:
    """Answer every message at once; a draft gets a verdict accepting one token."""
    conn = VerifierConnection(vocab)
    while True:
        try:
            event = conn.receive(await transport.recv())
        except ProtocolError as exc:
            await transport.send(conn.send(exc.to_envelope()))
            continue
        sid = event.session_id
        if event.kind == "hello":
            reply = m.hello_ack("bench-verifier", "none", vocab)
        elif event.kind == "open_session":
            reply = m.session_opened(sid, conn.session(sid).position)
        elif event.kind == "draft":
            gamma = event.block.gamma
            reply = m.verdict(sid, event.message.position, min(1, gamma), 7, gamma <= 1, m.load_hints(queue_depth=1))
        else:
            reply = m.close(sid)
        await transport.send(conn.send(reply))


def make_q(q_mode: str, gamma: int, vocab: int, top_k: int, rng: np.random.Generator):
    """The q message of one draft block (fixed per run; packing cost is included per draft anyway)."""
    if q_mode == "full":
        full = rng.dirichlet(np.ones(vocab), size=gamma).astype(np.float32)
        return lambda: pack_q("full", full)
    ids = np.stack([rng.permutation(vocab)[:top_k] for _ in range(gamma)])
    probs = rng.dirichlet(np.ones(top_k), size=gamma)
    if q_mode == "topk":
        return lambda: pack_q("topk", probs, ids)
    return lambda: pack_q("tokens")


class Drafter:
    """S sessions over one connection; one reader task routes verdicts to the waiting session."""

    def __init__(self, client: Transport):
        self.client, self.conn = client, DrafterConnection()
        self.waiting: dict[int, asyncio.Future] = {}

    async def start(self, sessions: int) -> None:
        await self.client.send(self.conn.send(m.hello("bench-drafter")))
        self.conn.receive(await self.client.recv())
        for sid in range(1, sessions + 1):
            await self.client.send(self.conn.send(m.open_session(sid, [1, 2, 3], m.Sampling(0.0))))
            self.conn.receive(await self.client.recv())
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        while True:
            event = self.conn.receive(await self.client.recv())
            self.waiting.pop(event.session_id).set_result(event)

    async def session_loop(self, sid: int, q_factory, gamma: int, stop_at_s: float, rtts_s: list) -> int:
        rounds, loop = 0, asyncio.get_running_loop()
        while time.perf_counter() < stop_at_s:
            position = self.conn.session(sid).position
            fut = self.waiting[sid] = loop.create_future()
            t0 = time.perf_counter()
            await self.client.send(self.conn.send(m.draft(sid, position, [5] * gamma, q_factory())))
            await fut
            rtts_s.append(time.perf_counter() - t0)
            rounds += 1
        return rounds


async def run_case(sessions: int, q_mode: str, args) -> dict:
    rng = np.random.default_rng(0)
    q_factory = make_q(q_mode, args.gamma, args.vocab, args.top_k, rng)
    draft_bytes = len(encode(m.draft(1, 1000, [5] * args.gamma, q_factory())))
    server = await serve(lambda t: toy_verifier(t, args.vocab), HOST, 0)
    async with server:
        client = await connect(f"ws://{HOST}:{server.port}")
        drafter = Drafter(client)
        await drafter.start(sessions)
        rtts_s: list[float] = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        stop_at_s = t0 + args.duration_s
        rounds = await asyncio.gather(*(drafter.session_loop(sid, q_factory, args.gamma, stop_at_s, rtts_s) for sid in range(1, sessions + 1)))
        wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        drafter.reader.cancel()
        await client.close()
    total_rounds = sum(rounds)
    rtts_s.sort()
    return {
        "sessions": sessions,
        "q_mode": q_mode,
        "draft_bytes": draft_bytes,
        "rounds": total_rounds,
        "msgs_per_s": 2 * total_rounds / wall_s,
        "msgs_per_cpu_s": 2 * total_rounds / cpu_s if cpu_s > 0 else None,
        "cpu_share": cpu_s / wall_s,
        "rtt_p50_ms": 1e3 * statistics.median(rtts_s),
        "rtt_p99_ms": 1e3 * rtts_s[min(len(rtts_s) - 1, int(0.99 * len(rtts_s)))],
    }


def print_table(rows: list[dict]) -> None:
    head = f"{'sessions':>8} {'q':>7} {'bytes/draft':>11} {'msgs/s':>9} {'msgs/cpu-s':>10} {'cpu':>5} {'rtt p50 ms':>10} {'rtt p99 ms':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['sessions']:>8} {r['q_mode']:>7} {r['draft_bytes']:>11} {r['msgs_per_s']:>9.0f} {r['msgs_per_cpu_s']:>10.0f} {r['cpu_share']:>5.2f} {r['rtt_p50_ms']:>10.3f} {r['rtt_p99_ms']:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=1.5, help="measured time per row")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    cases = [(1, "topk"), (16, "topk"), (16, "tokens"), (16, "full")]
    rows = [asyncio.run(run_case(sessions, q_mode, args)) for sessions, q_mode in cases]
    print(f"loopback, one connection, both ends in one process on one core; γ={args.gamma}, K={args.top_k}, V={args.vocab}, {os.cpu_count()} CPUs visible")
    print_table(rows)
    best = max(r["msgs_per_s"] for r in rows if r["q_mode"] != "full")
    print(f"best draft/verdict messages per second (top-K or tokens-only): {best:.0f} (issue-3 target: >= 10000 on one core)")
    print(json.dumps({"benchmark": "transport_msgs", "gamma": args.gamma, "top_k": args.top_k, "vocab": args.vocab, "duration_s": args.duration_s, "best_msgs_per_s": best, "rows": rows}))


if __name__ == "__main__":
    main()
