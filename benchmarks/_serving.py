"""Shared pieces of the serving benchmarks (serving_batching.py, uplink_bytes.py, pipelining.py); each takes `--pair`.

The verifier node runs in a child process of its own (spawned, `torch.set_num_threads(verifier_threads)`)
and the drafter node in this process (`torch.set_num_threads(drafter_threads)`), talking over
127.0.0.1 through the real wire protocol: the two sides get their own interpreter, GIL and torch
threads, the nearest thing to "a drafter device and a verifier server" one 2-core machine offers, and
the CPU each side spends can be read separately:
- verifier: `resource.getrusage(RUSAGE_SELF)` of the child, reported over a pipe;
- drafter node: `getrusage(RUSAGE_SELF)` of this process (event loop, protocol, HTTP server idle, the draft thread);
- draft thread: the per-thread CPU clock (`time.pthread_getcpuclockid`) of the engine's worker thread
  (named "edgespec-draft_*"), i.e. the draft model's forwards and q packing only.
Nothing here changes edgespec modules; counting Draft bytes wraps `VerifierLink.send` on the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from edgespec.bench.prompts import PROMPTS  # noqa: E402  (code prompts like the bundled pair's training data)
from edgespec.models.catalog import PAIRS

LOOPBACK = "127.0.0.1"


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def draft_thread_cpu_s() -> Optional[float]:
    """CPU seconds of the drafter engines' worker threads ("edgespec-draft_*"), summed (None if the clock is unavailable).

    Summed because several drafter nodes in one process each have one; a delta over a run in which only one
    node worked is that node's draft thread (threads that appear during the run count from zero).
    """
    total = 0.0
    for t in threading.enumerate():
        if t.name.startswith("edgespec-draft") and t.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (AttributeError, OSError):
                return None
    return total


# ----------------------------------------------------------------------------- the verifier process


def histogram_totals(registry, name: str) -> dict:
    """A Prometheus histogram summed over its labels: {"count", "sum", "buckets": {le: cumulative count}}."""
    out = {"count": 0.0, "sum": 0.0, "buckets": {}}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_count":
                out["count"] += sample.value
            elif sample.name == f"{name}_sum":
                out["sum"] += sample.value
            elif sample.name == f"{name}_bucket":
                le = sample.labels["le"]
                out["buckets"][le] = out["buckets"].get(le, 0.0) + sample.value
    return out


def pin(cpus: Optional[set[int]]) -> None:
    """Restrict this process (every thread) to `cpus`; None leaves it as it is."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def split_cpus() -> tuple[set[int], set[int]]:
    """(the verifier's core, everything else's cores): the last CPU for the verifier, the rest for the drafters and clients."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError("pinning the verifier to a core of its own needs at least 2 CPUs")
    return {cpus[-1]}, set(cpus[:-1])


def _verifier_child(conn, config: dict, threads: int, cpus: Optional[set[int]] = None, pair: str = "bundled") -> None:
    pin(cpus)
    import torch

    torch.set_num_threads(threads)
    from edgespec.models.catalog import pair_dirs
    from edgespec.models.runtime import CausalLM
    from edgespec.server import VerifierConfig, VerifierNode

    target = CausalLM.load(pair_dirs(pair)[1])

    def snapshot(node) -> dict:
        reg = node.metrics.registry
        get = lambda name: reg.get_sample_value(name) or 0.0  # noqa: E731
        return {"cpu_s": cpu_s(), "batches": get("edgespec_verifier_batch_size_count"), "batch_drafts": get("edgespec_verifier_batch_size_sum"),
                "batch_tokens": get("edgespec_verifier_batch_tokens_sum"), "verify_s": get("edgespec_verifier_verify_seconds_sum"),
                "round_overhead": histogram_totals(reg, "edgespec_verifier_round_overhead_seconds")}

    async def main() -> None:
        node = VerifierNode(VerifierConfig(host=LOOPBACK, port=0, **config), target=target)
        await node.start()
        conn.send(node.port)
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            if cmd == "stats":
                conn.send(snapshot(node))
            else:
                break
        await node.stop()
        conn.send("stopped")

    asyncio.run(main())


class VerifierProcess:
    """A verifier node for the pair's target (default: the bundled one) in a spawned process; `port`, `stats()`, `stop()`."""

    def __init__(self, threads: int = 1, cpus: Optional[set[int]] = None, pair: str = "bundled", **config):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_verifier_child, args=(child, config, threads, cpus, pair), daemon=True)
        self._proc.start()
        if not self._conn.poll(120):
            raise RuntimeError("the verifier process did not start")
        self.port = self._conn.recv()
        self.address = f"{LOOPBACK}:{self.port}"

    def stats(self) -> dict:
        self._conn.send("stats")
        return self._conn.recv()

    def stop(self) -> None:
        try:
            self._conn.send("stop")
            self._conn.poll(10)
        except (BrokenPipeError, EOFError, OSError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

    def __enter__(self) -> "VerifierProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------- the drafter side


def load_draft(threads: int, pair: str = "bundled"):
    import torch

    torch.set_num_threads(threads)
    from edgespec.models.catalog import pair_dirs
    from edgespec.models.runtime import CausalLM

    return CausalLM.load(pair_dirs(pair)[0])


def encode(lm, text: str) -> tuple[int, ...]:
    """What the drafter's HTTP API does with a text prompt: the tokenizer's defaults (its post-processor decides on BOS)."""
    from edgespec.models.prompting import encode_text

    return tuple(encode_text(lm.tokenizer, text))


def pair_prompts(lm, pair: str) -> list[tuple[int, ...]]:
    """The pair's benchmark prompts as the drafter's HTTP API encodes them (instructions through the chat template for an instruct pair)."""
    from edgespec.bench.sd_vs_ad import pair_prompts as ids

    return [tuple(p) for p in ids(lm, pair)]


def add_pair_argument(parser) -> None:
    parser.add_argument("--pair", default="bundled", choices=sorted(PAIRS), help="draft/target pair (smollm2 is fetched on first use)")


class DraftCounter:
    """Counts the encoded bytes of Draft envelopes (and of everything) a drafter node sends, per message kind."""

    def __init__(self, node):
        from edgespec.protocol.codec import message_kind

        self.bytes: dict[str, int] = {}
        self.messages: dict[str, int] = {}
        for link in node.engine.pool.links:
            original = link.send

            def send(envelope, _original=original):
                kind = message_kind(envelope)
                self.bytes[kind] = self.bytes.get(kind, 0) + envelope.ByteSize()
                self.messages[kind] = self.messages.get(kind, 0) + 1
                return _original(envelope)

            link.send = send


@dataclass
class Workload:
    """Closed loop: `sessions` clients each send requests back to back until `duration_s` has passed."""

    sessions: int
    duration_s: float
    max_tokens: int
    temperature: float = 0.0
    seed0: int = 0
    min_requests: int = 1  # per client, even if the duration has passed
    stop_at_eos: bool = False  # True: answers end at EOS (an instruct pair's natural length)


@dataclass
class Measured:
    wall_s: float
    completion_tokens: int
    requests: int
    drafted: int
    accepted: int
    rounds: int
    pipeline_hits: int
    pipeline_misses: int
    per_token_s: list = field(default_factory=list)  # each request: wall / completion tokens
    itl_s: list = field(default_factory=list)  # each request: (wall - ttft) / (completion tokens - 1)
    ttft_s: list = field(default_factory=list)
    drafter_cpu_s: float = 0.0
    draft_thread_cpu_s: Optional[float] = None
    draft_rejections: int = 0
    ad_rounds: int = 0  # rounds without drafts
    per_request: list = field(default_factory=list)  # (drafted, accepted) of each request

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def acceptance_se(self) -> float:
        """Standard error of the acceptance rate, requests as clusters (ratio estimator, delta method)."""
        n = len(self.per_request)
        if n < 2 or not self.drafted:
            return 0.0
        a = self.acceptance
        return (sum((acc - a * d) ** 2 for d, acc in self.per_request) * n / (n - 1)) ** 0.5 / self.drafted

    def summary(self) -> dict:
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        return {"wall_s": self.wall_s, "completion_tokens": self.completion_tokens, "requests": self.requests,
                "tokens_per_s": self.tokens_per_s, "drafted_tokens": self.drafted, "accepted_tokens": self.accepted,
                "rounds": self.rounds, "acceptance_rate": self.acceptance, "acceptance_se": self.acceptance_se,
                "tokens_per_round": (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0,
                "pipeline_hits": self.pipeline_hits, "pipeline_misses": self.pipeline_misses, "draft_rejections": self.draft_rejections,
                "per_token_ms_median": 1000 * med(self.per_token_s) if self.per_token_s else None,
                "per_token_ms_mean": 1000 * statistics.fmean(self.per_token_s) if self.per_token_s else None,
                "itl_ms_median": 1000 * med(self.itl_s) if self.itl_s else None,
                "ttft_ms_median": 1000 * med(self.ttft_s) if self.ttft_s else None,
                "drafter_cpu_s": self.drafter_cpu_s, "draft_thread_cpu_s": self.draft_thread_cpu_s,
                "drafter_cores": self.drafter_cpu_s / self.wall_s if self.wall_s else 0.0,
                "draft_thread_cores": (self.draft_thread_cpu_s / self.wall_s) if self.wall_s and self.draft_thread_cpu_s is not None else None}


async def run_workload(engine, prompts: list, w: Workload) -> Measured:
    """Run `w` on a drafter engine; CPU of this process and of the draft thread over the run."""
    from edgespec.edge.engine import GenerationRequest
    from edgespec.spec.sampling import SamplingParams

    loop = asyncio.get_running_loop()
    params = SamplingParams(temperature=w.temperature)
    outs = []

    async def client(i: int) -> None:
        j = 0
        deadline = loop.time() + w.duration_s
        while j < w.min_requests or loop.time() < deadline:
            k = i + j * w.sessions
            request = GenerationRequest(prompts[k % len(prompts)], w.max_tokens, params, seed=w.seed0 + k, stop_at_eos=w.stop_at_eos)
            outs.append(await engine.submit(request).result())
            j += 1

    cpu0, thread0, t0 = cpu_s(), draft_thread_cpu_s(), time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(w.sessions)))
    wall = time.perf_counter() - t0
    cpu1, thread1 = cpu_s(), draft_thread_cpu_s()
    m = Measured(wall, sum(o.completion_tokens for o in outs), len(outs), sum(o.stats.drafted_tokens for o in outs),
                 sum(o.stats.accepted_tokens for o in outs), sum(o.stats.rounds for o in outs),
                 sum(o.stats.pipeline_hits for o in outs), sum(o.stats.pipeline_misses for o in outs))
    m.draft_rejections = sum(o.stats.draft_rejections for o in outs)
    m.ad_rounds = sum(o.stats.ad_rounds for o in outs)
    m.per_request = [(o.stats.drafted_tokens, o.stats.accepted_tokens) for o in outs]
    for o in outs:
        n = o.completion_tokens
        if n:
            m.per_token_s.append(o.stats.wall_s / n)
            m.ttft_s.append(o.stats.ttft_s)
        if n > 1:
            m.itl_s.append((o.stats.wall_s - o.stats.ttft_s) / (n - 1))
    m.drafter_cpu_s = cpu1 - cpu0
    if thread0 is not None and thread1 is not None:
        m.draft_thread_cpu_s = thread1 - thread0
    return m


@contextlib.asynccontextmanager
async def edge_nodes(configs: dict, draft, prompts: list):
    """Drafter nodes in this process by name (EdgeConfig each), connected and warmed up; stopped on exit."""
    from edgespec.edge import EdgeNode

    nodes = {}
    try:
        for name, config in configs.items():
            node = EdgeNode(config, draft=draft)
            await node.start()
            nodes[name] = node
            if not await node.wait_connected(30.0):
                raise RuntimeError(f"drafter node {name!r} did not connect to its verifier")
            await run_workload(node.engine, prompts, Workload(2, 0.0, 16))  # warm-up: threads, allocator, caches
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


def edge_config(address: str, **overrides):
    from edgespec.edge import EdgeConfig

    settings = dict(verifiers=(address,), http_host=LOOPBACK, http_port=0, gamma_policy="static", gamma=4, q_mode="topk", top_k=8)
    settings.update(overrides)
    return EdgeConfig(**settings)


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": ".".join(map(str, sys.version_info[:3]))}
