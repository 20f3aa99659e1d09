"""The distributed demo: one verifier node and several drafter nodes as processes on loopback; every drafter lossless, then served SD against batched AD at three loads, with the crossover.

Topology (all on 127.0.0.1, ephemeral ports; with two or more cores the verifier gets the last core to
itself and the drafter nodes share the others, as a server and its edge devices would):
- `verifier`: `edgespec serve` with the pair's target (`--pair`, default the bundled pair);
- `edge-adaptive`: the pair's draft, top-K q (K = 8), the default γ policy (AWC behind the speculation
  gate: γ = 0 where the verifier's load makes speculating lose);
- `edge-static`: the pair's draft, top-K q, static γ = 4 (speculates at any load);
- `edge-tokens`: the pair's draft, tokens-only q, SLED confidence γ;
- `edge-small`: a 1-layer draft derived from the pair's, full q, static γ = 3 — a weaker device;
- `edge-ad`: γ = 0, i.e. autoregressive decoding served by the same verifier (the baseline).

1. Losslessness: every node gets the same requests at once, half greedy and half sampled
   (temperature 0.8, unseeded: a seed would make a request coupled — tokens only on the wire — and
   hide what each node's q mode costs); greedy completions must equal AD's text exactly.
2. Load sweep: at each load L (default 1, 8 and 24 concurrent sessions) the AD, static and adaptive
   nodes take turns: L clients each send greedy requests back to back for `duration_s`; tokens/s,
   the ratio to AD at the same load, and the adaptive node's mean γ.

An instruct pair gets its prompts as chat messages (/v1/chat/completions).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgespec.demo.nodes import NodeProcess, post_json, start_node, stop_all

__all__ = ["DemoConfig", "run_demo", "crossover"]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs: prompts, tokens per request, the sampled half's temperature, the loads of the sweep and threads per process."""

    prompts: tuple[str, ...]
    max_tokens: int = 32
    temperature: float = 0.8
    loads: tuple[int, ...] = (1, 8, 24)
    duration_s: float = 4.0  # closed-loop time per (load, node) in the sweep
    verifier_threads: int = 1
    edge_threads: int = 1
    refresh_s: float = 0.5
    pair: str = "bundled"
    chat: bool = False  # send the prompts as user messages to /v1/chat/completions


@dataclass(frozen=True)
class EdgeSpec:
    name: str
    label: str  # what it drafts with, for the tables
    args: tuple[str, ...]


def _edges(small_draft: Path, pair: str) -> list[EdgeSpec]:
    return [
        EdgeSpec("edge-adaptive", f"{pair} draft, top-K q (K=8), adaptive γ (default)", ("--q-mode", "topk", "--top-k", "8")),
        EdgeSpec("edge-static", f"{pair} draft, top-K q (K=8), static γ=4", ("--q-mode", "topk", "--top-k", "8", "--gamma-policy", "static", "--gamma", "4")),
        EdgeSpec("edge-tokens", f"{pair} draft, tokens-only q, SLED γ", ("--q-mode", "tokens", "--gamma-policy", "confidence")),
        EdgeSpec("edge-small", "1-layer draft, full q, static γ=3", ("--q-mode", "full", "--gamma-policy", "static", "--gamma", "3", "--draft", str(small_draft))),
        EdgeSpec("edge-ad", "AD through the verifier (γ = 0)", ("--gamma-policy", "static", "--gamma", "0", "--max-gamma", "0")),
    ]


SWEEP = {"ad": "edge-ad", "static": "edge-static", "adaptive": "edge-adaptive"}  # policy -> node


# ---------------------------------------------------------------- HTTP


def _get(url: str, timeout_s: float = 5.0) -> Optional[dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _requests(cfg: DemoConfig) -> list[dict]:
    """Each prompt twice: greedy, and sampled at cfg.temperature (no seed: the node's q mode travels, see the module docstring)."""
    out = []
    for prompt in cfg.prompts:
        body = {"messages": [{"role": "user", "content": prompt}]} if cfg.chat else {"prompt": prompt}
        out.append({**body, "max_tokens": cfg.max_tokens, "temperature": 0, "ignore_eos": True})
        out.append({**body, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "ignore_eos": True})
    return out


def _endpoint(body: dict) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def _text(reply: dict) -> str:
    choice = reply["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def _cpu_split() -> tuple[list[str], list[str]]:
    """`taskset` prefixes (verifier, drafters): the last core for the verifier, the others for the drafters; none on one core."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", str(cpus[-1])], ["taskset", "-c", ",".join(map(str, cpus[:-1]))]


# ---------------------------------------------------------------- phase 1: losslessness


@dataclass
class _Phase:
    """Requests in flight on a set of nodes; counts what finished."""

    nodes: list[tuple[EdgeSpec, NodeProcess]]
    total_per_node: int
    started_s: float
    done: dict
    results: dict
    baseline: dict  # node name -> /stats at phase start
    elapsed_s: float = 0.0
    finished_s: dict = field(default_factory=dict)  # node name -> when its last request finished


def _delta(now: dict, before: dict, key: str) -> float:
    return (now.get(key, 0) or 0) - (before.get(key, 0) or 0)


def _table(phase: _Phase, title: str) -> Table:
    table = Table(title=title)
    for col in ("node", "drafts with", "requests", "tok/s", "acceptance", "mean γ", "uplink B/drafted tok"):
        table.add_column(col, justify="left" if col in ("node", "drafts with") else "right")
    for spec, node in phase.nodes:
        elapsed = max(phase.finished_s.get(spec.name, time.monotonic()) - phase.started_s, 1e-9)  # its own requests' span
        now, before = _get(f"{node.url}/stats") or {}, phase.baseline.get(spec.name) or {}
        drafted, rounds = _delta(now, before, "drafted_tokens"), _delta(now, before, "rounds")
        table.add_row(
            spec.name, spec.label, f"{phase.done[spec.name]}/{phase.total_per_node}",
            f"{_delta(now, before, 'completion_tokens') / elapsed:.1f}",
            f"{_delta(now, before, 'accepted_tokens') / drafted:.2f}" if drafted else "–",
            f"{drafted / rounds:.2f}" if rounds else "–",
            f"{_delta(now, before, 'uplink_bytes') / drafted:.1f}" if drafted else "–",
        )
    return table


def _lossless_phase(console: Console, nodes: list[tuple[EdgeSpec, NodeProcess]], requests: list[dict], refresh_s: float) -> _Phase:
    """Send every request to every node at once; show the live table until all finish."""
    phase = _Phase(nodes, len(requests), time.monotonic(), {s.name: 0 for s, _ in nodes}, {},
                   {s.name: _get(f"{n.url}/stats") for s, n in nodes})
    lock = threading.Lock()

    def one(spec: EdgeSpec, node: NodeProcess, i: int, body: dict) -> None:
        reply = post_json(f"{node.url}{_endpoint(body)}", body)
        with lock:
            phase.results[(spec.name, i)] = reply
            phase.done[spec.name] += 1
            if phase.done[spec.name] == phase.total_per_node:
                phase.finished_s[spec.name] = time.monotonic()

    title = f"1. Losslessness: the same {len(requests)} requests on every drafter node, greedy and sampled"
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


def _lossless_report(phase: _Phase, requests: list[dict]) -> dict:
    """Per SD node: greedy completions equal to AD's, and completion tokens."""
    ad_text = {i: _text(phase.results[("edge-ad", i)]) for i in range(len(requests))}
    greedy = [i for i, body in enumerate(requests) if body["temperature"] == 0]
    out = {}
    for spec, _ in phase.nodes:
        if spec.name == "edge-ad":
            continue
        replies = {i: phase.results[(spec.name, i)] for i in range(len(requests))}
        same = sum(_text(replies[i]) == ad_text[i] for i in greedy)
        out[spec.name] = {"completion_tokens": sum(r["usage"]["completion_tokens"] for r in replies.values()),
                          "greedy_equal_ad": f"{same}/{len(greedy)}"}
    return out


# ---------------------------------------------------------------- phase 2: the load sweep


def _closed_loop(node: NodeProcess, prompts: tuple[str, ...], sessions: int, duration_s: float, max_tokens: int, chat: bool = False) -> dict:
    """`sessions` clients send greedy requests back to back for `duration_s` (at least one each; chat messages for an instruct
    pair); tokens/s and the node's mean γ."""
    before = _get(f"{node.url}/stats") or {}
    tokens = [0] * sessions

    def client(i: int) -> None:
        deadline, j = time.monotonic() + duration_s, 0
        while j == 0 or time.monotonic() < deadline:
            prompt = prompts[(i + j * sessions) % len(prompts)]
            body = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
            body.update(max_tokens=max_tokens, temperature=0, ignore_eos=True)
            reply = post_json(f"{node.url}{_endpoint(body)}", body)
            tokens[i] += reply["usage"]["completion_tokens"]
            j += 1

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        for f in [pool.submit(client, i) for i in range(sessions)]:
            f.result()
    wall = time.monotonic() - start
    now = _get(f"{node.url}/stats") or {}
    rounds = _delta(now, before, "rounds")
    return {"tokens_per_s": sum(tokens) / wall, "wall_s": wall, "completion_tokens": sum(tokens),
            "mean_gamma": _delta(now, before, "drafted_tokens") / rounds if rounds else 0.0}


def _sweep(console: Console, nodes: dict[str, NodeProcess], cfg: DemoConfig) -> list[dict]:
    rows = []
    with console.status("") as status:
        for load in cfg.loads:
            for policy, name in SWEEP.items():
                status.update(f"2. Load sweep: {load} session(s), {policy} ({name}), {cfg.duration_s:g} s…")
                rows.append({"sessions": load, "policy": policy, **_closed_loop(nodes[name], cfg.prompts, load, cfg.duration_s, cfg.max_tokens,
                                                                                      cfg.chat)})
    for row in rows:
        ad = next(r for r in rows if r["sessions"] == row["sessions"] and r["policy"] == "ad")
        row["ratio_to_ad"] = row["tokens_per_s"] / ad["tokens_per_s"] if ad["tokens_per_s"] else None
    return rows


def crossover(rows: list[dict], policy: str) -> Optional[int]:
    """The smallest load at which `policy` runs slower than AD, or None if it is at least as fast at every load."""
    for row in sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["sessions"]):
        if row["ratio_to_ad"] is not None and row["ratio_to_ad"] < 1.0:
            return row["sessions"]
    return None


def _sweep_table(rows: list[dict], cfg: DemoConfig) -> Table:
    table = Table(title=f"2. Served SD vs batched AD through the same verifier ({cfg.max_tokens}-token greedy requests, {cfg.duration_s:g} s per point)")
    for col in ("sessions", "AD tok/s", "static γ=4 tok/s", "static vs AD", "adaptive tok/s", "adaptive vs AD", "adaptive mean γ"):
        table.add_column(col, justify="right")
    for load in cfg.loads:
        by = {r["policy"]: r for r in rows if r["sessions"] == load}
        table.add_row(str(load), f"{by['ad']['tokens_per_s']:.1f}", f"{by['static']['tokens_per_s']:.1f}", f"{by['static']['ratio_to_ad']:.2f}×",
                      f"{by['adaptive']['tokens_per_s']:.1f}", f"{by['adaptive']['ratio_to_ad']:.2f}×", f"{by['adaptive']['mean_gamma']:.2f}")
    return table


def _crossover_line(policy: str, label: str, rows: list[dict]) -> str:
    c = crossover(rows, policy)
    if c is None:
        return f"{label}: at least as fast as AD at every load measured"
    return f"{label}: slower than AD from {c} session(s) on"


# ---------------------------------------------------------------- entry point


def _start_edges(specs: list[EdgeSpec], verifier: NodeProcess, cfg: DemoConfig, prefix: list[str], say) -> dict[str, NodeProcess]:
    """Start every drafter node at once (each loads torch and its model) and wait for all of them."""
    say(f"starting {', '.join(s.name for s in specs)}")
    args = lambda spec: ["--verifier", verifier.address, "--http-port", "0", "--node-id", spec.name, "--pair", cfg.pair,  # noqa: E731
                         "--threads", str(cfg.edge_threads), *spec.args]
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = {spec.name: pool.submit(start_node, spec.name, "edge", args(spec), threads=cfg.edge_threads, prefix=prefix) for spec in specs}
        nodes, errors = {}, []
        for name, f in futures.items():
            try:
                nodes[name] = f.result()
            except Exception as exc:  # noqa: BLE001 — stop the ones that came up, then report
                errors.append(exc)
    if errors:
        stop_all(list(nodes.values()))
        raise errors[0]
    return nodes


def run_demo(cfg: DemoConfig, console: Console, say: Callable[[str], None]) -> dict:
    """Start the nodes, run the losslessness phase and the load sweep, print the summary, stop every node; returns the summary."""
    from edgespec.models.catalog import pair_dirs
    from edgespec.models.derive import truncate_layers

    nodes: list[NodeProcess] = []
    verifier_prefix, edge_prefix = _cpu_split()
    with tempfile.TemporaryDirectory(prefix="edgespec-demo-") as tmp:
        try:
            say(f"deriving a 1-layer draft from the {cfg.pair} one")
            small = truncate_layers(pair_dirs(cfg.pair, say)[0], Path(tmp) / "draft-1layer", layers=1)
            say("starting the verifier node" + (f" on core {verifier_prefix[-1]} (drafters on {edge_prefix[-1]})" if verifier_prefix else ""))
            verifier = start_node("verifier", "serve", ["--port", "0", "--metrics-port", "0", "--pair", cfg.pair], threads=cfg.verifier_threads, prefix=verifier_prefix)
            nodes.append(verifier)
            specs = _edges(small, cfg.pair)
            edges = _start_edges(specs, verifier, cfg, edge_prefix, say)
            nodes += edges.values()
            console.print(f"verifier ws://{verifier.address}; drafters " + ", ".join(f"{name} {n.url}" for name, n in edges.items()))
            requests = _requests(cfg)
            lossless = _lossless_report(_lossless_phase(console, [(s, edges[s.name]) for s in specs], requests, cfg.refresh_s), requests)
            rows = _sweep(console, edges, cfg)
            console.print(_sweep_table(rows, cfg))
            lines = [_crossover_line("static", "static γ=4", rows), _crossover_line("adaptive", "adaptive (default)", rows)]
            for line in lines:
                console.print(line)
            equal = all(v["greedy_equal_ad"].split("/")[0] == v["greedy_equal_ad"].split("/")[1] for v in lossless.values())
            counts = ", ".join(f"{name} {v['greedy_equal_ad']}" for name, v in lossless.items())
            console.print(f"greedy output = AD on every drafter node: {'✓' if equal else '✗'} ({counts})")
            return {"nodes": lossless, "sweep": rows, "crossover": {p: crossover(rows, p) for p in ("static", "adaptive")},
                    "lossless": equal}
        finally:
            say("stopping every node")
            stop_all(nodes)
