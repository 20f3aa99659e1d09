"""Soak test of a real deployment: steady closed-loop load for minutes, watching for errors, latency drift, memory growth and leaked KV.

Regime: the bundled pair (draft 1.5M, target 23M parameters, vocab 8192, float32, CPU) served as separate
processes on 127.0.0.1, exactly as a user would run them: one verifier node (`edgespec serve`, bundled
target, `--metrics-port`) and `--drafters` drafter nodes (`edgespec edge`, bundled draft, default
settings: top-K q with K = 8, heuristic γ), started with `edgespec.demo.nodes.start_node`. Each node gets
`--verifier-threads` / `--drafter-threads` torch threads (default 1 each). `--sessions` client threads
(spread round-robin over the drafter nodes) each send one request at a time, back to back, to
`POST /v1/completions` for `--duration-s`, then stop after their current request. Requests alternate
greedy (temperature 0, `--max-tokens` new tokens) and sampled (temperature 0.8, top_p 0.95, a fresh seed,
between 2/3 and 4/3 of `--max-tokens` tokens), over the 8 code prompts of the bundled pair; EOS ignored.

Reported: completed requests, errors (must be 0), requests/s and completion tokens/s; latency per
request (p50, p99) overall and per `--window-s` window, so drift is visible; resident memory (VmRSS
from /proc/PID/status, sampled every second) of the verifier and of every drafter process at the
start (the median over the second half of the first window, which is the warm-up) and at the end (the
median over the last window and after the load), with the growth in MiB and %, checked against
`--rss-growth-bound-mib` for each process; the verifier's /metrics once the clients have stopped (open sessions, KV
tokens reserved and in use, queue depth: all must return to 0, i.e. nothing leaked; errors sent,
BUSY answers, acceptance); greedy consistency (every greedy request of a prompt must return the text
of the first one); how long the nodes took to shut down on SIGINT.

Exit status 0 only when every check passes. Prints a progress line per window, rich tables at the
end; the last line of stdout is one JSON object. `--json-out FILE` writes the full report (every
window, the RSS timeline), `--plot FILE.png` draws latency and RSS over time.
Run: .venv/bin/python benchmarks/soak.py [--sessions 8] [--duration-s 120] [--window-s 15] [--drafters 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from edgespec.bench.prompts import PROMPTS  # code prompts like the bundled pair's training data (torch-free)
from edgespec.demo.nodes import NodeProcess, post_json, start_node, stop_all

TEMPERATURE = 0.8
TOP_P = 0.95
REQUEST_TIMEOUT_S = 180.0
MAX_ERROR_MESSAGES = 5
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- HTTP and /proc


def get_text(url: str, timeout_s: float = 5.0) -> Optional[str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def rss_mib(pid: int, field: str = "VmRSS") -> Optional[float]:
    """A memory figure of a process from /proc/PID/status (VmRSS: resident now; VmHWM: peak resident), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def cpu_s_of(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process (its threads included) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def scrape(metrics_url: str) -> Optional[dict]:
    """The verifier's /metrics as {sample name: value summed over labels}, plus errors by code."""
    from prometheus_client.parser import text_string_to_metric_families

    text = get_text(metrics_url)
    if text is None:
        return None
    out: dict = {"errors_by_code": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            if s.name == "edgespec_verifier_errors_total":
                code = s.labels.get("code", "?")
                out["errors_by_code"][code] = out["errors_by_code"].get(code, 0.0) + s.value
    return out


def percentile(xs: list[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..1) of xs; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# ----------------------------------------------------------------------------- the load


@dataclass
class Done:
    client: int
    drafter: int
    t_end: float  # seconds since the load started
    latency_s: float
    completion_tokens: int
    greedy: bool


class Load:
    """`sessions` client threads sending requests back to back until `stop` is set; results and errors under a lock."""

    def __init__(self, urls: list[str], sessions: int, max_tokens: int, seed: int):
        self.urls, self.sessions, self.max_tokens, self.seed = urls, sessions, max_tokens, seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done: list[Done] = []
        self.errors = 0
        self.error_messages: list[str] = []
        self.greedy_text: dict[int, str] = {}  # prompt index -> the first greedy completion
        self.greedy_checked = 0
        self.greedy_mismatches = 0
        self.t0 = 0.0
        self.threads: list[threading.Thread] = []
        self.inflight: dict[int, tuple[float, int, dict]] = {}  # client -> (sent at, drafter, body) of its current request

    def error(self, msg: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.error_messages) < MAX_ERROR_MESSAGES:
                self.error_messages.append(msg[:300])

    def _client(self, c: int) -> None:
        d = c % len(self.urls)
        url = f"{self.urls[d]}/v1/completions"
        rng = random.Random(self.seed * 1000 + c)
        k = c  # clients start at different prompts and alternate greedy / sampled
        lo, hi = max(1, (2 * self.max_tokens) // 3), max(1, (4 * self.max_tokens) // 3)
        while not self.stop.is_set():
            p = k % len(PROMPTS)
            greedy = k % 2 == 0
            body = {"prompt": PROMPTS[p], "ignore_eos": True}
            if greedy:
                body.update(max_tokens=self.max_tokens, temperature=0)
            else:
                body.update(max_tokens=rng.randint(lo, hi), temperature=TEMPERATURE, top_p=TOP_P, seed=rng.randrange(2**31))
            k += 1
            t = time.monotonic()
            with self.lock:
                self.inflight[c] = (t, d, body)
            try:
                reply = post_json(url, body, REQUEST_TIMEOUT_S)
                text = reply["choices"][0]["text"]
                n = int(reply["usage"]["completion_tokens"])
            except urllib.error.HTTPError as e:
                self.error(f"client {c} → drafter {d}: HTTP {e.code}: {e.read()[:200].decode(errors='replace')}")
                continue
            except Exception as e:  # noqa: BLE001 — every failure counts, the loop goes on
                self.error(f"client {c} → drafter {d}: {type(e).__name__}: {e}")
                continue
            finally:
                with self.lock:
                    self.inflight.pop(c, None)
            end = time.monotonic()
            if n != body["max_tokens"]:
                self.error(f"client {c}: asked {body['max_tokens']} tokens with ignore_eos, got {n}")
            if greedy:
                with self.lock:
                    first = self.greedy_text.get(p)
                    if first is None:
                        self.greedy_text[p] = text
                    else:
                        self.greedy_checked += 1
                        self.greedy_mismatches += text != first
                if first is not None and text != first:
                    self.error(f"greedy mismatch on prompt {p} (client {c}, drafter {d}): {text[:60]!r} vs first {first[:60]!r}")
            with self.lock:
                self.done.append(Done(c, d, end - self.t0, end - t, n, greedy))

    def start(self) -> None:
        self.t0 = time.monotonic()
        for c in range(self.sessions):
            t = threading.Thread(target=self._client, args=(c,), name=f"soak-client-{c}", daemon=True)
            t.start()
            self.threads.append(t)

    def join(self, timeout_s: float, on_wait=None, every_s: float = 10.0) -> bool:
        """Wait for every client to finish its current request; `on_wait(stuck)` every `every_s` while some have not."""
        deadline = time.monotonic() + timeout_s
        while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
            for t in self.threads:
                t.join(max(0.0, min(every_s, deadline - time.monotonic())))
                if t.is_alive():
                    break
            if on_wait is not None and any(t.is_alive() for t in self.threads):
                on_wait(self.stuck())
        return not any(t.is_alive() for t in self.threads)

    def stuck(self) -> list[str]:
        """The requests still in flight: client, drafter, for how long, what was asked."""
        now = time.monotonic()
        with self.lock:
            items = sorted(self.inflight.items())
        return [f"client {c} → drafter {d}: {now - t:.1f} s, temperature {b['temperature']}, max_tokens {b['max_tokens']}"
                for c, (t, d, b) in items]

    def snapshot(self) -> list[Done]:
        with self.lock:
            return list(self.done)


def window_row(done: list[Done], index: int, start: float, end: float) -> dict:
    lat = [x.latency_s for x in done]
    span = max(end - start, 1e-9)
    return {"window": index, "start_s": round(start, 2), "end_s": round(end, 2), "completed": len(done),
            "greedy": sum(x.greedy for x in done),
            "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99), "max_s": max(lat) if lat else None,
            "requests_per_s": len(done) / span, "tokens_per_s": sum(x.completion_tokens for x in done) / span}


# ----------------------------------------------------------------------------- nodes


def start_nodes(args) -> tuple[NodeProcess, list[NodeProcess], str, list[NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        verifier = start_node("verifier", "serve", ["--port", "0", "--metrics-port", "0"], threads=args.verifier_threads)
        started.append(verifier)
        m = None
        for line in verifier.tail:
            m = re.search(r"metrics (http://\S+/metrics)", line) or m
        if m is None:
            raise RuntimeError("the verifier did not announce its metrics URL:\n" + "\n".join(verifier.tail))
        metrics_url = m[1]
        def edge(i: int) -> NodeProcess:
            return start_node(f"edge-{i}", "edge", ["--verifier", verifier.address, "--http-port", "0", "--node-id", f"edge-{i}",
                                                    "--threads", str(args.drafter_threads)], threads=args.drafter_threads)

        with ThreadPoolExecutor(max_workers=args.drafters) as pool:  # drafter nodes start side by side (imports, model load)
            futures = [pool.submit(edge, i) for i in range(args.drafters)]
            drafters = []
            for f in futures:
                try:
                    drafters.append(f.result())
                except Exception:  # noqa: BLE001 — stop the ones that did start, then report the first failure
                    for g in futures:
                        if g is not f and g.exception() is None:
                            started.append(g.result())
                    raise
                started.append(drafters[-1])
        deadline = time.monotonic() + 60
        for node in drafters:
            while get_text(f"{node.url}/health") is None:  # 503 until a verifier is connected
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not connect to the verifier:\n" + "\n".join(node.tail))
                time.sleep(0.2)
        return verifier, drafters, metrics_url, started
    except BaseException:
        stop_all(started)
        raise


# ----------------------------------------------------------------------------- run


def run(args) -> dict:
    t_total = time.perf_counter()
    print(f"starting 1 verifier + {args.drafters} drafter node(s) on 127.0.0.1 …", flush=True)
    verifier, drafters, metrics_url, nodes = start_nodes(args)
    procs = {"verifier": verifier, **{d.name: d for d in drafters}}
    report: dict = {}
    shutdown_s = None
    try:
        print(f"nodes up after {time.perf_counter() - t_total:.1f} s: verifier ws://{verifier.address} (metrics {metrics_url}); drafters "
              + ", ".join(d.url for d in drafters), flush=True)
        # one greedy request per drafter before the clock starts: the first forwards allocate, fill caches
        for d in drafters:
            post_json(f"{d.url}/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "ignore_eos": True}, REQUEST_TIMEOUT_S)
        rss_timeline: list[dict] = []
        cpu0 = {name: cpu_s_of(n.proc.pid) for name, n in procs.items()}

        def sample(t: float) -> dict:
            row = {"t_s": round(t, 2), **{name: rss_mib(n.proc.pid) for name, n in procs.items()}}
            rss_timeline.append(row)
            return row

        load = Load([d.url for d in drafters], args.sessions, args.max_tokens, args.seed)
        sample(0.0)
        load.start()
        windows: list[dict] = []
        rss_at_window: list[dict] = []
        n_windows = max(1, int(round(args.duration_s / args.window_s)))
        bounds = [min(args.window_s * (i + 1), args.duration_s) for i in range(n_windows)]
        bounds[-1] = args.duration_s
        next_sample = 1.0
        w = 0
        while w < n_windows:
            now = time.monotonic() - load.t0
            if now >= bounds[w]:
                rss = sample(now)
                rss_at_window.append(rss)
                next_sample = now + 1.0  # the window's sample stands for this second's
                start = bounds[w - 1] if w else 0.0
                row = window_row([x for x in load.snapshot() if start <= x.t_end < bounds[w]], w + 1, start, bounds[w])
                row["rss_mib"] = {k: v for k, v in rss.items() if k != "t_s"}
                windows.append(row)
                lat = "–" if row["p50_s"] is None else f"p50 {row['p50_s']:.2f} s  p99 {row['p99_s']:.2f} s"
                print(f"[{bounds[w]:6.1f} s] window {w + 1}/{n_windows}: {row['completed']:4d} done  {lat}  "
                      f"{row['tokens_per_s']:6.1f} tok/s  RSS " + "  ".join(f"{k} {v:.0f} MiB" for k, v in row["rss_mib"].items() if v)
                      + f"  errors {load.errors}", flush=True)
                w += 1
                continue
            if now >= next_sample:
                sample(now)
                next_sample += 1.0
            time.sleep(min(0.2, max(0.01, bounds[w] - now)))
        load.stop.set()
        t_stop = time.monotonic() - load.t0
        def waiting(stuck: list[str]) -> None:
            print(f"  draining: {len(stuck)} request(s) still in flight: " + "; ".join(stuck), flush=True)
            for d in drafters:
                print(f"  {d.name} /stats: {get_text(f'{d.url}/stats')}", flush=True)
            vm = scrape(metrics_url) or {}
            print("  verifier: " + ", ".join(f"{k} {vm.get(k)}" for k in ("edgespec_verifier_active_sessions", "edgespec_verifier_queue_depth",
                                                                           "edgespec_verifier_kv_tokens_in_use")), flush=True)

        drained = load.join(REQUEST_TIMEOUT_S + 10, waiting)
        stuck = load.stuck()
        if stuck:
            load.error("still in flight after the drain timeout: " + "; ".join(stuck))
        t_drained = time.monotonic() - load.t0
        done = load.snapshot()
        tail = [x for x in done if x.t_end >= args.duration_s]  # requests in flight when the clock ran out
        windows[-1]["completed_after_stop"] = len(tail)
        print(f"load stopped at {t_stop:.1f} s; clients drained in {t_drained - t_stop:.1f} s ({len(tail)} request(s) finished after the stop)",
              flush=True)
        # verifier side after the clients are gone: every session closed, no KV held
        settle_deadline, metrics, settled_s = time.monotonic() + 10.0, None, None
        t_settle = time.monotonic()
        while time.monotonic() < settle_deadline:
            metrics = scrape(metrics_url)
            if metrics and all(metrics.get(k, 0.0) == 0.0 for k in ("edgespec_verifier_active_sessions", "edgespec_verifier_kv_tokens_in_use",
                                                                     "edgespec_verifier_kv_tokens_reserved", "edgespec_verifier_queue_depth")):
                settled_s = time.monotonic() - t_settle
                break
            time.sleep(0.25)
        print(f"verifier metrics after the load: {'settled' if settled_s is not None else 'NOT settled'} in {time.monotonic() - t_settle:.1f} s", flush=True)
        rss_end = sample(time.monotonic() - load.t0)
        cpu1 = {name: cpu_s_of(n.proc.pid) for name, n in procs.items()}
        hwm = {name: rss_mib(n.proc.pid, "VmHWM") for name, n in procs.items()}
        edge_stats = {}
        for d in drafters:
            text = get_text(f"{d.url}/stats")
            edge_stats[d.name] = json.loads(text) if text else None
    finally:
        t_shut = time.monotonic()
        print("stopping the nodes (SIGINT) …", flush=True)
        stop_all(nodes)
        shutdown_s = time.monotonic() - t_shut
        print(f"nodes stopped in {shutdown_s:.1f} s, exit codes " + ", ".join(f"{n.name} {n.proc.returncode}" for n in nodes), flush=True)
    exit_codes = {name: n.proc.returncode for name, n in procs.items()}

    # ------------------------------------------------------------------ figures and checks
    lat = [x.latency_s for x in done]
    wall = t_drained
    tokens = sum(x.completion_tokens for x in done)
    # RSS moves by tens of MiB from one second to the next under load (allocator caches, batch shapes), so start and end are
    # medians of the 1-s samples: start over the second half of window 1 (after warm-up), end over the last window and after the load
    first_end, last_start = bounds[0], (bounds[-2] if len(bounds) > 1 else 0.0)
    start_rows = [row for row in rss_timeline if first_end / 2 <= row["t_s"] <= first_end + 0.5]
    end_rows = [row for row in rss_timeline if row["t_s"] >= last_start]
    memory = {}
    for name in procs:
        a = _median([row.get(name) for row in start_rows])
        b = _median([row.get(name) for row in end_rows])
        grow = (b - a) if a is not None and b is not None else None
        memory[name] = {"rss_start_mib": a, "rss_end_mib": b, "growth_mib": grow,
                        "rss_after_window1_mib": rss_at_window[0].get(name), "rss_after_load_mib": rss_end.get(name),
                        "samples_start": len(start_rows), "samples_end": len(end_rows),
                        "growth_pct": 100.0 * grow / a if grow is not None and a else None, "peak_rss_mib": hwm.get(name),
                        "cpu_s": (cpu1[name] - cpu0[name]) if cpu1.get(name) is not None and cpu0.get(name) is not None else None}
        if memory[name]["cpu_s"] is not None:
            memory[name]["cores"] = memory[name]["cpu_s"] / wall
    m = metrics or {}
    drafts = m.get("spec_decode_num_draft_tokens_total", 0.0)
    verifier_metrics = {
        "active_sessions": m.get("edgespec_verifier_active_sessions"),
        "kv_tokens_in_use": m.get("edgespec_verifier_kv_tokens_in_use"),
        "kv_tokens_reserved": m.get("edgespec_verifier_kv_tokens_reserved"),
        "queue_depth": m.get("edgespec_verifier_queue_depth"),
        "settled_after_s": settled_s,
        "errors_sent": m.get("edgespec_verifier_errors_total", 0.0),
        "errors_by_code": m.get("errors_by_code", {}),
        "sessions_refused": m.get("edgespec_verifier_sessions_refused_total", 0.0),
        "draft_blocks": m.get("spec_decode_num_drafts_total", 0.0),
        "acceptance_rate": m.get("spec_decode_num_accepted_tokens_total", 0.0) / drafts if drafts else None,
        "tokens_per_round": (m.get("edgespec_verifier_emitted_tokens_total", 0.0) / m["spec_decode_num_drafts_total"]
                             if m.get("spec_decode_num_drafts_total") else None),
        "mean_batch_drafts": (m.get("edgespec_verifier_batch_size_sum", 0.0) / m["edgespec_verifier_batch_size_count"]
                              if m.get("edgespec_verifier_batch_size_count") else None),
    }
    failed_on_drafters = sum((s or {}).get("requests_failed", 0) for s in edge_stats.values())

    checks = {
        "no_errors": load.errors == 0,
        "requests_completed": len(done) > 0,
        "clients_drained": drained,
        "greedy_consistent": load.greedy_mismatches == 0,
        "no_failed_requests_on_drafters": failed_on_drafters == 0,
        "verifier_sessions_closed": metrics is not None and verifier_metrics["active_sessions"] == 0,
        "verifier_kv_released": metrics is not None and verifier_metrics["kv_tokens_in_use"] == 0 and verifier_metrics["kv_tokens_reserved"] == 0,
        "verifier_sent_no_errors": verifier_metrics["errors_sent"] == 0,
        "rss_growth_within_bound": all(v["growth_mib"] is not None and v["growth_mib"] <= args.rss_growth_bound_mib for v in memory.values()),
        "clean_shutdown": all(code == 0 for code in exit_codes.values()),
    }
    report = {
        "benchmark": "soak", "sessions": args.sessions, "drafters": args.drafters, "duration_s": args.duration_s, "window_s": args.window_s,
        "max_tokens": args.max_tokens, "verifier_threads": args.verifier_threads, "drafter_threads": args.drafter_threads,
        "completed": len(done), "greedy_completed": sum(x.greedy for x in done), "errors": load.errors, "error_messages": load.error_messages,
        "requests_per_s": len(done) / wall, "tokens_per_s": tokens / wall, "completion_tokens": tokens,
        "latency_p50_s": percentile(lat, 0.5), "latency_p99_s": percentile(lat, 0.99), "latency_max_s": max(lat) if lat else None,
        "greedy_checked": load.greedy_checked, "greedy_mismatches": load.greedy_mismatches,
        "drain_s": t_drained - t_stop, "wall_s": wall, "rss_growth_bound_mib": args.rss_growth_bound_mib, "memory": memory,
        "verifier_metrics": verifier_metrics, "drafter_stats": {k: _edge_summary(v) for k, v in edge_stats.items()},
        "shutdown_s": shutdown_s, "exit_codes": exit_codes, "checks": checks, "ok": all(checks.values()),
        "windows": windows, "rss_timeline": rss_timeline, "cpus": os.cpu_count(), "total_s": time.perf_counter() - t_total,
    }
    return report


def _median(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _edge_summary(s: Optional[dict]) -> Optional[dict]:
    if not s:
        return None
    keys = ("requests_finished", "requests_failed", "completion_tokens", "acceptance_rate", "mean_gamma", "mean_draft_batch",
            "round_overhead_ms_p50", "round_overhead_ms_p90")
    return {k: s.get(k) for k in keys}


# ----------------------------------------------------------------------------- output


def fmt(x, spec: str = ".2f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def show(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    names = list(r["memory"])
    t = Table(title=f"Soak: {r['sessions']} client(s) over {r['drafters']} drafter node(s), {r['duration_s']:.0f} s, "
                    f"windows of {r['window_s']:.0f} s ({r['max_tokens']} tokens greedy, {2 * r['max_tokens'] // 3}–{4 * r['max_tokens'] // 3} sampled)")
    for col in ("window", "span s", "completed", "p50 s", "p99 s", "max s", "req/s", "tokens/s", *[f"RSS {n} MiB" for n in names]):
        t.add_column(col, justify="right")
    for w in r["windows"]:
        t.add_row(str(w["window"]), f"{w['start_s']:.0f}–{w['end_s']:.0f}", str(w["completed"]), fmt(w["p50_s"]), fmt(w["p99_s"]), fmt(w["max_s"]),
                  f"{w['requests_per_s']:.2f}", f"{w['tokens_per_s']:.1f}", *[fmt(w["rss_mib"].get(n), ".0f") for n in names])
    t.add_row("all", f"0–{r['wall_s']:.0f}", str(r["completed"]), fmt(r["latency_p50_s"]), fmt(r["latency_p99_s"]), fmt(r["latency_max_s"]),
              f"{r['requests_per_s']:.2f}", f"{r['tokens_per_s']:.1f}", *["" for _ in names], style="bold")
    console.print(t)

    mt = Table(title=f"Memory (VmRSS): start = median of the 1-s samples in the 2nd half of window 1, end = median over the last window "
                     f"and after the load; bound {r['rss_growth_bound_mib']:.0f} MiB per process")
    for col in ("process", "RSS start MiB", "RSS end MiB", "growth MiB", "growth %", "after window 1", "after the load", "peak MiB", "CPU cores"):
        mt.add_column(col, justify="left" if col == "process" else "right")
    for n, v in r["memory"].items():
        mt.add_row(n, fmt(v["rss_start_mib"], ".1f"), fmt(v["rss_end_mib"], ".1f"), fmt(v["growth_mib"], "+.1f"), fmt(v["growth_pct"], "+.1f"),
                   fmt(v["rss_after_window1_mib"], ".1f"), fmt(v["rss_after_load_mib"], ".1f"), fmt(v["peak_rss_mib"], ".1f"), fmt(v.get("cores")))
    console.print(mt)

    vm = r["verifier_metrics"]
    ct = Table(title="Checks")
    ct.add_column("check")
    ct.add_column("result")
    ct.add_column("detail")
    detail = {
        "no_errors": f"{r['errors']} error(s)" + (": " + r["error_messages"][0] if r["error_messages"] else ""),
        "requests_completed": f"{r['completed']} requests, {r['completion_tokens']} tokens",
        "clients_drained": f"last requests finished {r['drain_s']:.1f} s after the stop",
        "greedy_consistent": f"{r['greedy_checked']} greedy repeats compared, {r['greedy_mismatches']} differed",
        "no_failed_requests_on_drafters": "requests_failed in each drafter's /stats",
        "verifier_sessions_closed": f"edgespec_verifier_active_sessions = {fmt(vm['active_sessions'], '.0f')}",
        "verifier_kv_released": f"kv_tokens_in_use = {fmt(vm['kv_tokens_in_use'], '.0f')}, kv_tokens_reserved = {fmt(vm['kv_tokens_reserved'], '.0f')}"
                                + (f" ({vm['settled_after_s']:.2f} s after the clients stopped)" if vm["settled_after_s"] is not None else ""),
        "verifier_sent_no_errors": f"edgespec_verifier_errors_total = {vm['errors_sent']:.0f} {vm['errors_by_code'] or ''}",
        "rss_growth_within_bound": ", ".join(f"{n} {fmt(v['growth_mib'], '+.1f')} MiB" for n, v in r["memory"].items()),
        "clean_shutdown": f"exit codes {r['exit_codes']} after SIGINT, {r['shutdown_s']:.1f} s",
    }
    for k, ok in r["checks"].items():
        ct.add_row(k, "[green]pass[/green]" if ok else "[red]FAIL[/red]", detail[k])
    console.print(ct)
    console.print(f"verifier: {vm['draft_blocks']:.0f} draft blocks, acceptance {fmt(vm['acceptance_rate'])}, "
                  f"{fmt(vm['tokens_per_round'])} tokens/round, {fmt(vm['mean_batch_drafts'])} drafts per batch, "
                  f"{vm['sessions_refused']:.0f} BUSY answers; the machine has {r['cpus']} cores.")
    for msg in r["error_messages"]:
        console.print(f"error: {msg}", markup=False, highlight=False)
    console.print("[green]soak passed[/green]" if r["ok"] else "[red]soak FAILED: " + ", ".join(k for k, v in r["checks"].items() if not v) + "[/red]")


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    mids = [(w["start_s"] + w["end_s"]) / 2 for w in r["windows"]]
    a.plot(mids, [w["p50_s"] for w in r["windows"]], "o-", label="p50")
    a.plot(mids, [w["p99_s"] for w in r["windows"]], "s-", label="p99")
    a.set_ylabel("latency per request (s)")
    a.set_ylim(bottom=0)
    a.legend()
    a.set_title(f"soak: {r['sessions']} clients, {r['drafters']} drafter(s), {r['window_s']:.0f} s windows")
    ts = [row["t_s"] for row in r["rss_timeline"]]
    for name in r["memory"]:
        b.plot(ts, [row.get(name) for row in r["rss_timeline"]], label=name)
    b.set_ylabel("VmRSS (MiB)")
    b.set_xlabel("time since the load started (s)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rounded(x, digits: int = 3):
    """x with every float rounded (for the one-line JSON summary)."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v, digits) for v in x]
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="concurrent client loops (spread over the drafter nodes)")
    parser.add_argument("--duration-s", type=float, default=120.0, help="how long the clients keep sending")
    parser.add_argument("--window-s", type=float, default=15.0, help="reporting window; the first one is the warm-up for RSS")
    parser.add_argument("--drafters", type=int, default=1, help="drafter node processes")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens of a greedy request (sampled: 2/3 to 4/3 of it)")
    parser.add_argument("--rss-growth-bound-mib", type=float, default=64.0, help="largest RSS growth allowed per process")
    parser.add_argument("--verifier-threads", type=int, default=1)
    parser.add_argument("--drafter-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seeds of the sampled requests")
    parser.add_argument("--json-out", help="write the full report (windows, RSS timeline) to this file")
    parser.add_argument("--plot", help="draw p50/p99 latency and RSS over time to this PNG (matplotlib)")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.drafters < 1 or args.max_tokens < 1 or args.window_s <= 0 or args.duration_s < args.window_s:
        parser.error("need --sessions, --drafters, --max-tokens >= 1 and --duration-s >= --window-s > 0")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed soak still stops its node processes (run's finally)
    r = run(args)
    show(r)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r, f, indent=1)
    if args.plot:
        plot(r, args.plot)
    summary = {k: v for k, v in r.items() if k not in ("windows", "rss_timeline", "drafter_stats")}
    summary["windows"] = [{k: v for k, v in w.items() if k != "rss_mib"} for w in r["windows"]]
    print(json.dumps(rounded(summary)))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
