"""The testbed's users: a scenario's workload (closed loop or Poisson) sent to the drafter nodes' OpenAI APIs, timed per request.

Users sit on their device, so each request is made from a thread inside its drafter's namespace to
127.0.0.1 there. Requests stream (server-sent events): TTFT is the first text chunk, the finish is the
chunk with a finish reason, which also carries the request's speculative-decoding figures.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from edgespec.bench.prompts import PROMPTS
from edgespec.sim.config import RequestClass, Workload
from edgespec.testbed.netns import enter_netns

__all__ = ["RequestRecord", "WorkloadSpec", "run_workload", "complete"]

DEFAULT_PROMPTS = PROMPTS  # the prompts `edgespec profile` measures acceptance on


@dataclass(frozen=True)
class RequestRecord:
    """One request's life as the user saw it (seconds since the workload started)."""

    index: int
    node: str
    klass: str
    arrival_s: float
    first_token_s: Optional[float]
    finish_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    stats: dict = field(default_factory=dict)  # the response's `edgespec` object (rounds, drafted, accepted, ...)
    error: Optional[str] = None

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def ttft_s(self) -> Optional[float]:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s


@dataclass(frozen=True)
class WorkloadSpec:
    """What the users send: the scenario's workload and request classes, plus request settings."""

    workload: Workload
    classes: tuple[RequestClass, ...]
    temperature: float = 0.0
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seed: int = 0


def complete(port: int, body: dict, *, timeout_s: float = 600.0, clock: Callable[[], float] = time.perf_counter,
             on_text: Optional[Callable[[float, str], None]] = None, host: str = "127.0.0.1") -> dict:
    """One streamed /v1/completions call on `host` (127.0.0.1 in the calling thread's namespace); text, times and figures.

    `on_text(t, text)` is called for every text chunk as it arrives (t from `clock`).
    """
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    out: dict = {"text": "", "first_s": None, "stats": {}, "usage": {}, "error": None}
    try:
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}),
                     {"Content-Type": "application/json"})
        reply = conn.getresponse()
        if reply.status != 200:
            out["error"] = f"HTTP {reply.status}: {reply.read().decode(errors='replace')[:300]}"
            return out
        for raw in reply:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                out["error"] = event["error"].get("message", str(event["error"]))
            for choice in event.get("choices", []):
                if choice.get("text"):
                    now = clock()
                    out["first_s"] = out["first_s"] or now
                    out["text"] += choice["text"]
                    if on_text is not None:
                        on_text(now, choice["text"])
            out["stats"] = event.get("edgespec", out["stats"])
            out["usage"] = event.get("usage") or out["usage"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return out


class _Driver:
    """Issues the workload's requests and records them; one thread pool per drafter node, each thread in that node's namespace."""

    def __init__(self, nodes: dict[str, tuple[str, int]], spec: WorkloadSpec, weights: dict[str, float],
                 on_record: Callable[[RequestRecord], None]) -> None:
        self.nodes, self.spec, self.on_record = nodes, spec, on_record
        self.rng = random.Random(spec.seed)
        self.lock = threading.Lock()
        self.issued = 0
        self.records: list[RequestRecord] = []
        self.class_weights = [c.weight for c in spec.classes]
        self.names = list(nodes)
        self.node_weights = [weights.get(n, 1.0) for n in self.names]
        self.t0 = time.perf_counter()
        self.per_node = {n: 0 for n in self.names}  # requests issued per node: node k's j-th request uses prompt j (mod the list)

    def _take(self) -> Optional[tuple[int, RequestClass]]:
        """The next request's index and class, or None when the workload is done."""
        with self.lock:
            if self.issued >= self.spec.workload.requests:
                return None
            self.issued += 1
            return self.issued - 1, self.rng.choices(self.spec.classes, self.class_weights)[0]

    def one(self, name: str, index: int, klass: RequestClass, arrival_s: float) -> None:
        s = self.spec
        with self.lock:
            j = self.per_node[name]
            self.per_node[name] += 1
        body = {"prompt": s.prompts[j % len(s.prompts)], "max_tokens": klass.output_tokens, "ignore_eos": True,
                "temperature": s.temperature}  # no seed: a seeded request is coupled (tokens only), not the scenario's q mode
        got = complete(self.nodes[name][1], body)
        finish = time.perf_counter() - self.t0
        first = None if got["first_s"] is None else got["first_s"] - self.t0
        record = RequestRecord(index, name, klass.name, arrival_s, first, finish, got["usage"].get("prompt_tokens", 0),
                               got["usage"].get("completion_tokens", 0), got["text"], got["stats"], got["error"])
        with self.lock:
            self.records.append(record)
        self.on_record(record)

    def user(self, name: str, user: int) -> None:
        """A closed-loop user: request, wait for it, think, repeat while the workload lasts."""
        think_s = self.spec.workload.think_time_s
        rng = random.Random(f"{self.spec.seed}/{name}/{user}")
        while (job := self._take()) is not None:
            self.one(name, job[0], job[1], time.perf_counter() - self.t0)
            if think_s > 0:
                time.sleep(rng.expovariate(1.0 / think_s))

    def arrivals(self) -> list[tuple[float, str]]:
        """Open loop: (time, node) of every arrival, Poisson or from the trace, nodes drawn by weight."""
        w = self.spec.workload
        times = sorted(w.trace_s)[: w.requests] if w.kind == "trace" else []
        t = 0.0
        while w.kind == "poisson" and len(times) < w.requests:
            times.append(t)
            t += self.rng.expovariate(w.rate_per_s)
        return [(t, self.rng.choices(self.names, self.node_weights)[0]) for t in times]


def run_workload(nodes: dict[str, tuple[str, int]], spec: WorkloadSpec, *, weights: Optional[dict[str, float]] = None,
                 on_record: Callable[[RequestRecord], None] = lambda r: None) -> list[RequestRecord]:
    """Run the whole workload; `nodes` maps drafter name → (its namespace, its HTTP port on 127.0.0.1 there)."""
    driver = _Driver(nodes, spec, weights or {}, on_record)
    w = spec.workload
    pools = {name: ThreadPoolExecutor(max_workers=max(w.users_per_node, 1) if w.kind == "closed" else 64,
                                      initializer=enter_netns, initargs=(netns,))
             for name, (netns, _) in nodes.items()}
    try:
        futures = []
        if w.kind == "closed":
            futures = [pools[n].submit(driver.user, n, u) for n in nodes for u in range(w.users_per_node)]
        else:
            for t, name in driver.arrivals():
                time.sleep(max(0.0, t - (time.perf_counter() - driver.t0)))
                job = driver._take()
                if job is not None:
                    futures.append(pools[name].submit(driver.one, name, job[0], job[1], time.perf_counter() - driver.t0))
        for f in futures:
            f.result()
    finally:
        for pool in pools.values():
            pool.shutdown(wait=True)
    return sorted(driver.records, key=lambda r: r.index)


def summarize_records(records: Sequence[RequestRecord]) -> dict:
    """Mean and percentiles of latency and TTFT, throughput, errors — overall and per node."""
    def figures(rs: Sequence[RequestRecord]) -> dict:
        ok = [r for r in rs if r.error is None]
        if not ok:
            return {"requests": len(rs), "errors": len(rs)}
        lat = sorted(r.latency_s for r in ok)
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        span = max(r.finish_s for r in ok) - min(r.arrival_s for r in ok)
        tokens = sum(r.completion_tokens for r in ok)
        drafted = sum(r.stats.get("drafted_tokens", 0) for r in ok)
        return {"requests": len(rs), "errors": len(rs) - len(ok), "rounds": sum(r.stats.get("rounds", 0) for r in ok),
                "mean_latency_s": statistics.fmean(lat),
                "p50_latency_s": lat[len(lat) // 2], "p95_latency_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                "mean_ttft_s": statistics.fmean(ttft) if ttft else None, "tokens": tokens,
                "throughput_tokens_per_s": tokens / span if span > 0 else 0.0,
                "acceptance": sum(r.stats.get("accepted_tokens", 0) for r in ok) / drafted if drafted else None}

    out = figures(records)
    out["nodes"] = {n: figures([r for r in records if r.node == n]) for n in sorted({r.node for r in records})}
    return out
