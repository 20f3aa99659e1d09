"""The distributed demo: one verifier node and several heterogeneous drafter nodes as processes on loopback, a workload through the OpenAI API, live per-node figures, and a comparison with AD served by the same verifier.

Topology (all on 127.0.0.1, ephemeral ports), for the chosen pair (`--pair`, default the bundled one):
- `verifier`: `edgespec serve` with the pair's target;
- `edge-topk`: the pair's draft, top-K q (K = 8), +2/−1 γ heuristic;
- `edge-tokens`: the pair's draft, tokens-only q, SLED confidence γ;
- `edge-small`: a 1-layer draft derived from the pair's, full q, static γ — a weaker, cheaper device;
- `edge-ad`: γ = 0, i.e. autoregressive decoding served by the same verifier (the baseline).
Every SD drafter gets the same requests at once, half greedy and half sampled (temperature 0.8,
seeded); then the AD node gets all of them at once (the same load). Greedy completions must equal
AD's text exactly. An instruct pair gets its prompts as chat messages (/v1/chat/completions).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgespec.demo.nodes import NodeProcess, post_json, start_node, stop_all

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: prompts, tokens per request, temperature of the sampled half, threads per process."""

    prompts: tuple[str, ...]
    max_tokens: int = 32
    temperature: float = 0.8
    verifier_threads: int = 2
    edge_threads: int = 1
    refresh_s: float = 0.5
    pair: str = "bundled"
    chat: bool = False  # send the prompts as user messages to /v1/chat/completions


@dataclass(frozen=True)
class EdgeSpec:
    name: str
    label: str  # what it drafts with, for the table
    args: tuple[str, ...]


def _edges(small_draft: Path, pair: str) -> list[EdgeSpec]:
    return [
        EdgeSpec("edge-topk", f"{pair} draft, top-K q (K=8), heuristic γ", ("--q-mode", "topk", "--top-k", "8", "--gamma-policy", "heuristic")),
        EdgeSpec("edge-tokens", f"{pair} draft, tokens-only q, SLED γ", ("--q-mode", "tokens", "--gamma-policy", "confidence")),
        EdgeSpec("edge-small", "1-layer draft, full q, static γ=3", ("--q-mode", "full", "--gamma-policy", "static", "--gamma", "3", "--draft", str(small_draft))),
    ]


AD_EDGE = EdgeSpec("edge-ad", "AD through the verifier (γ = 0)", ("--gamma-policy", "static", "--gamma", "0", "--max-gamma", "0"))


# ---------------------------------------------------------------- HTTP


def _get(url: str, timeout_s: float = 5.0) -> Optional[dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _requests(cfg: DemoConfig) -> list[dict]:
    """Each prompt twice: greedy, and sampled at cfg.temperature with a fixed seed."""
    out = []
    for i, prompt in enumerate(cfg.prompts):
        body = {"messages": [{"role": "user", "content": prompt}]} if cfg.chat else {"prompt": prompt}
        out.append({**body, "max_tokens": cfg.max_tokens, "temperature": 0, "ignore_eos": True})
        out.append({**body, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "seed": i, "ignore_eos": True})
    return out


def _endpoint(body: dict) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def _text(reply: dict) -> str:
    choice = reply["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


# ---------------------------------------------------------------- live table


@dataclass
class _Phase:
    """Requests of one phase in flight on a set of nodes; counts what finished."""

    nodes: list[tuple[EdgeSpec, NodeProcess]]
    total_per_node: int
    started_s: float
    done: dict
    results: dict
    baseline: dict  # node name -> /stats at phase start
    elapsed_s: float = 0.0


def _table(phase: _Phase, title: str) -> Table:
    table = Table(title=title)
    for col in ("node", "drafts with", "requests", "tok/s", "acceptance", "mean γ", "draft batch", "uplink B/drafted tok"):
        table.add_column(col, justify="left" if col in ("node", "drafts with") else "right")
    elapsed = max(time.monotonic() - phase.started_s, 1e-9)
    for spec, node in phase.nodes:
        now = _get(f"{node.url}/stats") or {}
        before = phase.baseline.get(spec.name) or {}
        delta = lambda key: (now.get(key, 0) or 0) - (before.get(key, 0) or 0)  # noqa: E731
        drafted, rounds = delta("drafted_tokens"), delta("rounds")
        passes = delta("draft_passes")
        table.add_row(
            spec.name, spec.label, f"{phase.done[spec.name]}/{phase.total_per_node}",
            f"{delta('completion_tokens') / elapsed:.1f}",
            f"{delta('accepted_tokens') / drafted:.2f}" if drafted else "–",
            f"{drafted / rounds:.2f}" if rounds else "–",
            f"{delta('drafted_blocks') / passes:.1f}" if passes else "–",
            f"{delta('uplink_bytes') / drafted:.1f}" if drafted else "–",
        )
    return table


def _run_phase(console: Console, nodes: list[tuple[EdgeSpec, NodeProcess]], requests: list[dict], title: str,
               refresh_s: float) -> _Phase:
    """Send every request to every node at once; show the live table until all finish."""
    phase = _Phase(nodes, len(requests), time.monotonic(), {s.name: 0 for s, _ in nodes}, {},
                   {s.name: _get(f"{n.url}/stats") for s, n in nodes})
    lock = threading.Lock()

    def one(spec: EdgeSpec, node: NodeProcess, i: int, body: dict) -> None:
        reply = post_json(f"{node.url}{_endpoint(body)}", body)
        with lock:
            phase.results[(spec.name, i)] = reply
            phase.done[spec.name] += 1

    jobs = [(s, n, i, body) for s, n in nodes for i, body in enumerate(requests)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool, Live(_table(phase, title), console=console, refresh_per_second=4) as live:
        futures = [pool.submit(one, *job) for job in jobs]
        while not all(f.done() for f in futures):
            time.sleep(refresh_s)
            live.update(_table(phase, title))
        for f in futures:
            f.result()  # re-raise a failed request
        phase.elapsed_s = time.monotonic() - phase.started_s
        live.update(_table(phase, title))
    console.print()
    return phase


# ---------------------------------------------------------------- summary


def _summary(console: Console, sd: _Phase, ad: _Phase, requests: list[dict]) -> dict:
    ad_text = {i: _text(ad.results[("edge-ad", i)]) for i in range(len(requests))}
    table = Table(title="Summary: speculative decoding vs AD served by the same verifier")
    for col in ("node", "completion tokens", "wall s", "tok/s", "vs AD", "greedy output = AD"):
        table.add_column(col, justify="left" if col == "node" else "right")
    ad_tokens = sum(r["usage"]["completion_tokens"] for r in ad.results.values())
    ad_rate = ad_tokens / ad.elapsed_s
    report = {"ad_tokens_per_s": round(ad_rate, 2), "nodes": {}}
    sd_names = [s.name for s, _ in sd.nodes]
    for name in sd_names:
        replies = {i: sd.results[(name, i)] for i in range(len(requests))}
        greedy = [i for i, body in enumerate(requests) if body["temperature"] == 0]
        same = sum(_text(replies[i]) == ad_text[i] for i in greedy)
        tokens = sum(r["usage"]["completion_tokens"] for r in replies.values())
        report["nodes"][name] = {"completion_tokens": tokens, "greedy_equal_ad": f"{same}/{len(greedy)}"}
        table.add_row(name, str(tokens), "", "", "", f"{same}/{len(greedy)} {'✓' if same == len(greedy) else '✗'}")
    sd_tokens = sum(r["usage"]["completion_tokens"] for r in sd.results.values())
    sd_rate = sd_tokens / sd.elapsed_s
    table.add_row("all SD drafters", str(sd_tokens), f"{sd.elapsed_s:.1f}", f"{sd_rate:.1f}", f"{sd_rate / ad_rate:.2f}×", "", style="bold")
    table.add_row("edge-ad (baseline)", str(ad_tokens), f"{ad.elapsed_s:.1f}", f"{ad_rate:.1f}", "1.00×", "")
    console.print(table)
    report.update(sd_tokens_per_s=round(sd_rate, 2), speedup=round(sd_rate / ad_rate, 3))
    return report


# ---------------------------------------------------------------- entry point


def run_demo(cfg: DemoConfig, console: Console, say: Callable[[str], None]) -> dict:
    """Start the nodes, run the SD phase then the AD phase, print the summary, stop every node; returns the summary."""
    from edgespec.models.catalog import pair_dirs
    from edgespec.models.derive import truncate_layers

    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory(prefix="edgespec-demo-") as tmp:
        try:
            say(f"deriving a 1-layer draft from the {cfg.pair} one")
            small = truncate_layers(pair_dirs(cfg.pair, say)[0], Path(tmp) / "draft-1layer", layers=1)
            say("starting the verifier node")
            verifier = start_node("verifier", "serve", ["--port", "0", "--metrics-port", "0", "--pair", cfg.pair], threads=cfg.verifier_threads)
            nodes.append(verifier)
            edges = []
            for spec in _edges(small, cfg.pair) + [AD_EDGE]:
                say(f"starting {spec.name}")
                node = start_node(spec.name, "edge", ["--verifier", verifier.address, "--http-port", "0", "--node-id", spec.name, "--pair", cfg.pair,
                                                      "--threads", str(cfg.edge_threads), *spec.args], threads=cfg.edge_threads)
                nodes.append(node)
                edges.append((spec, node))
            console.print(f"verifier ws://{verifier.address}; drafters " + ", ".join(f"{s.name} {n.url}" for s, n in edges))
            requests = _requests(cfg)
            sd = _run_phase(console, edges[:-1], requests, f"Speculative decoding: {len(requests)} requests per drafter node", cfg.refresh_s)
            sd_nodes = len(edges) - 1  # the baseline carries the same load: every drafter's requests
            ad = _run_phase(console, edges[-1:], requests * sd_nodes,
                            f"Baseline: the same {len(requests) * sd_nodes} requests, AD through the verifier", cfg.refresh_s)
            return _summary(console, sd, ad, requests)
        finally:
            say("stopping every node")
            stop_all(nodes)
