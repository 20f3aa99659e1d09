"""A verifier probe: a drafter speaking the real protocol to a running verifier node, sending drafts in batches it controls, reading each verdict's RoundTiming.

It measures what only the serving process shows: target forwards against batch size and new tokens
(every verdict carries its batch's forward time), the verifier's time outside forwards, the prompt's
prefill in the first round, the open handshake, and what a draft that arrives while a forward runs
costs that forward, and what the verdicts of one batch, going out while the next batch's forward runs,
cost that one (the event loop and the forward thread share one core and one interpreter). Sessions use
the setting's sampling and drafts carry q as that setting sends it (tokens only, top-K or full, uniform
over K or the vocabulary), so decoding, checking and the verification rule cost what they cost there;
the tokens are arbitrary: the verifier's work does not depend on whether they are accepted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from edgespec.protocol import DrafterConnection, Sampling, connect, pack_q
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages as m

__all__ = ["ProbeGrid", "ProbeResult", "probe_verifier"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ProbeGrid:
    """What the probe measures: forwards of `batch_sizes` × `new_tokens` (γ + 1), prefills of `prompt_tokens`, and repeats."""

    batch_sizes: tuple[int, ...] = (1, 2, 4)
    new_tokens: tuple[int, ...] = (1, 2, 3, 5)
    prefill_batch_sizes: tuple[int, ...] = (1, 2)
    prompt_tokens: tuple[int, ...] = (16, 64)
    repeats: int = 5
    warmup: int = 2
    overlap_repeats: int = 24
    q_mode: str = "tokens"  # how the drafts carry q (greedy sessions always send tokens only)
    temperature: float = 0.0  # the sessions' sampling temperature (0 = greedy)
    top_k: int = 8  # K of top-K q
    open_sessions: int = 0  # sessions open at the verifier while a batch of b is measured: max(b, open_sessions)


@dataclass
class ProbeResult:
    """Medians in seconds: forwards[(batch, new tokens)], overhead[batch] (per verdict: server − forward − wait behind others),
    prefill[(batch, prompt tokens)] (first-round forward − the steady forward of the same batch), open RTT, overlap cost."""

    forward_s: dict = field(default_factory=dict)
    overhead_s: dict = field(default_factory=dict)
    prefill_s: dict = field(default_factory=dict)
    open_s: float = 0.0
    overlap_s: float = 0.0  # per draft arriving during a forward
    verdict_overlap_s: float = 0.0  # per verdict of the previous batch going out during a forward
    context_tokens: int = 0


class _Client:
    """One connection; sessions keyed by id with their positions (the verdicts say where each goes next)."""

    def __init__(self, transport, conn: DrafterConnection, grid: ProbeGrid, vocab: int) -> None:
        self.t, self.conn, self.vocab = transport, conn, vocab
        self.q_mode = "tokens" if grid.temperature == 0 else grid.q_mode
        self.top_k = min(grid.top_k, vocab)
        self.position: dict[int, int] = {}
        self.ids = iter(range(1, 1 << 30))

    def _q(self, tokens: list[int]):
        """q as the setting sends it: uniform over K ids (the drafted token first) or over the vocabulary."""
        if self.q_mode == "tokens" or not tokens:
            return pack_q("tokens")
        if self.q_mode == "full":
            return pack_q("full", np.full((len(tokens), self.vocab), 1.0 / self.vocab, dtype=np.float32))
        ids = np.array([[t] + [(t + 37 * j) % self.vocab for j in range(1, self.top_k)] for t in tokens], dtype=np.int64)  # [γ, K]
        return pack_q("topk", np.full(ids.shape, 1.0 / self.top_k, dtype=np.float32), ids)

    async def open(self, prompt: Sequence[int], sampling: Sampling) -> tuple[int, float]:
        sid = next(self.ids)
        start = time.perf_counter()
        await self.t.send(self.conn.send(m.open_session(sid, list(prompt), sampling, max_new_tokens=4096)))
        event = await self._next()
        if event.kind != "session_opened":
            raise RuntimeError(f"the verifier did not open a probe session: {event.kind} {event.message}")
        self.position[sid] = event.message.position
        return sid, time.perf_counter() - start

    async def close(self, sid: int) -> None:
        await self.t.send(self.conn.send(m.close(sid)))
        self.position.pop(sid, None)

    async def send(self, sid: int, gamma: int) -> None:
        tokens = [(self.position[sid] * 7 + i) % 1000 + 10 for i in range(gamma)]  # any tokens: the work is the same
        await self.t.send(self.conn.send(m.draft(sid, self.position[sid], tokens, self._q(tokens))))

    async def verdicts(self, n: int) -> list[pb.Verdict]:
        out = []
        while len(out) < n:
            event = await self._next()
            if event.kind == "verdict":
                v = event.message
                self.position[v.session_id] = v.position + v.accepted + 1
                out.append(v)
            elif event.kind == "error":
                raise RuntimeError(f"the verifier refused a probe draft: {event.message}")
        return out

    async def _next(self):
        while True:
            event = self.conn.receive(await self.t.recv())
            if event is not None and event.kind != "close":  # acknowledgements of our closes
                return event


async def _round(client: _Client, sids: Sequence[int], gamma: int) -> list[pb.Verdict]:
    """One batch: a draft of γ tokens for every session, sent back to back (the verifier batches them), and their verdicts."""
    for sid in sids:
        await client.send(sid, gamma)
    return await client.verdicts(len(sids))


def _overhead_s(v: pb.Verdict) -> float:
    t = v.timing
    return max(0.0, (t.server_us - t.forward_us - t.busy_wait_us) / 1e6)


async def _probe(url: str, token: Optional[str], text: Sequence[int], grid: ProbeGrid, progress: Progress) -> ProbeResult:
    transport = await connect(url, auth_token=token)
    conn = DrafterConnection()
    await transport.send(conn.send(m.hello("serving-probe", agent="edgespec-profile")))
    ack = conn.receive(await transport.recv())
    if ack is None or ack.kind != "hello_ack":
        raise RuntimeError(f"{url} did not answer the probe's hello")
    client = _Client(transport, conn, grid, ack.message.vocab_size)
    greedy = Sampling(temperature=grid.temperature, seed=1)  # the setting's sampling (greedy at 0)
    res = ProbeResult()
    prompt = list(text[:16])
    try:
        # 1-2. steady forwards, batch × new tokens. A batch of b is measured with max(b, open_sessions) sessions open, as the
        #      deployment has them: with more sessions open than batched the verifier copies the batch's KV rows out of the
        #      cache and back, which a batch of every open session does not. The batch sizes that share an open count are
        #      measured together in interleaved sweeps; sessions are opened (their prompts prefilled in a round of their
        #      own) as the count grows.
        sids: list[int] = []
        open_rtts: list[float] = []
        samples: dict = {(b, n): [] for b in grid.batch_sizes for n in grid.new_tokens}
        overhead: dict = {b: [] for b in grid.batch_sizes}
        total, done = (grid.warmup + grid.repeats) * len(samples), 0
        for count in sorted({max(b, grid.open_sessions) for b in grid.batch_sizes}):
            while len(sids) < count:
                sid, rtt = await client.open(prompt, greedy)
                await _round(client, [sid], 1)  # its prompt's prefill
                sids.append(sid)
                open_rtts.append(rtt)
            cells = [(b, n) for b in grid.batch_sizes if max(b, grid.open_sessions) == count for n in grid.new_tokens]
            for sweep in range(grid.warmup + grid.repeats):
                for b, n in cells:
                    vs = await _round(client, sids[:b], n - 1)
                    if sweep >= grid.warmup:
                        samples[b, n].append(vs[0].timing.forward_us / 1e6)
                        overhead[b].extend(_overhead_s(v) for v in vs)
                    done += 1
                    progress("verifier forwards", done, total)
        res.open_s = statistics.median(open_rtts)
        res.forward_s = {c: statistics.median(v) for c, v in samples.items()}
        res.overhead_s = {b: statistics.fmean(v) for b, v in overhead.items()}
        res.context_tokens = len(prompt) + (grid.warmup + grid.repeats) * len(grid.new_tokens)
        keep = max(2, grid.open_sessions)  # the prefills and step 4 run beside the deployment's open sessions (two at least)
        for sid in sids[keep:]:
            await client.close(sid)
        sids = sids[:keep]
        # 3. prefill: fresh sessions on prompts of P tokens, each with a first draft of the largest γ
        gamma = max(grid.new_tokens) - 1
        pcells = [(b, p) for b in grid.prefill_batch_sizes for p in grid.prompt_tokens]
        for k, (b, p) in enumerate(pcells):
            firsts = []
            for _ in range(grid.repeats):
                fresh = [(await client.open(list(text[:p]), greedy))[0] for _ in range(b)]
                firsts.append((await _round(client, fresh, gamma))[0].timing.forward_us / 1e6)
                for sid in fresh:
                    await client.close(sid)
            steady = res.forward_s.get((b, gamma + 1), res.forward_s[min(res.forward_s)])
            res.prefill_s[b, p] = max(statistics.median(firsts) - steady, 1e-6)
            progress("verifier prefill", k + 1, len(pcells))
        # 4. a draft arriving while a forward runs: A's forward with B's draft sent a third of a forward later, against A
        #    alone; and B's forward, which starts as A's batch ends, while A's verdict goes out. Means: the cost comes in
        #    steps of the interpreter's switch interval, so a median would hide it.
        first = sids[0]
        second = sids[1] if len(sids) > 1 else (await client.open(prompt, greedy))[0]
        alone, arrival, departure = [], [], []
        for k in range(grid.overlap_repeats):
            alone.append((await _round(client, [first], gamma))[0].timing.forward_us / 1e6)
            await client.send(first, gamma)
            await asyncio.sleep(statistics.median(alone) / 3)
            await client.send(second, gamma)
            vs = {v.session_id: v for v in await client.verdicts(2)}
            arrival.append(vs[first].timing.forward_us / 1e6)
            departure.append(vs[second].timing.forward_us / 1e6)
            progress("verifier overlap", k + 1, grid.overlap_repeats)
        res.overlap_s = max(0.0, statistics.fmean(arrival) - statistics.fmean(alone))
        res.verdict_overlap_s = max(0.0, statistics.fmean(departure) - statistics.fmean(alone))
        for sid in list(client.position):
            await client.close(sid)
    finally:
        await transport.close()
    return res


def probe_verifier(url: str, token: Optional[str], text: Sequence[int], grid: ProbeGrid = ProbeGrid(),
                   progress: Optional[Progress] = None) -> ProbeResult:
    """Measure the verifier at `url` (ws://host:port) with `text` (token ids, at least max(prompt_tokens) long) as prompts."""
    if len(text) < max(grid.prompt_tokens + (16,)):
        raise ValueError(f"the probe needs at least {max(grid.prompt_tokens + (16,))} tokens of text, got {len(text)}")
    return asyncio.run(_probe(url, token, text, grid, progress or (lambda *_: None)))
