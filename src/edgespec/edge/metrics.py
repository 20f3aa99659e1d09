"""Prometheus metrics of a drafter node, served at `/metrics` on its HTTP port, from a registry of its own.

Two kinds: per-round events the engine reports (`observe_round`: γ chosen, accepted tokens per block
position with vLLM's `spec_decode_*` names, round time) and figures read from the node when scraped
(requests, bytes per verifier, draft passes, and per-session gauges). Per-session series exist only while
their request runs, and for at most `max_session_series` requests (the oldest), so label cardinality stays
bounded by the node's concurrency whatever the traffic; a scrape never sees an ended session.
Scrapes run on the node's event loop (the HTTP server's), so they read the engine without locks.
"""

from __future__ import annotations

from typing import Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["EdgeMetrics", "MAX_SESSION_SERIES"]

MAX_SESSION_SERIES = 64  # running requests that get per-session series (the oldest first)
_GAMMA_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
_ROUND_S_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EdgeMetrics:
    """A drafter node's metrics: `observe_round` per verdict, the rest read from `engine` (a `DraftEngine`) when scraped."""

    def __init__(self, engine, registry: Optional[CollectorRegistry] = None, max_session_series: int = MAX_SESSION_SERIES) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.engine = engine
        self.max_session_series = max_session_series
        # vLLM's speculative decoding metrics (vllm/v1/spec_decode/metrics.py), same names and meaning, for this node's drafts:
        # plain counts here (a verdict adds to them with no locks or label lookups), exposed when scraped (`_NodeCollector`)
        self.num_drafts = self.num_draft_tokens = self.num_accepted_tokens = 0
        self.accepted_per_pos: list[int] = []  # accepted draft tokens at each block position (0 = first)
        self.gamma = Histogram("edgespec_edge_gamma", "Draft length γ of each verified round (0 = an AD round).", buckets=_GAMMA_BUCKETS, registry=r)
        self.round_seconds = Histogram(
            "edgespec_edge_round_seconds", "Round trip of a draft: sent to the verifier until its verdict arrived.", buckets=_ROUND_S_BUCKETS, registry=r
        )
        r.register(_NodeCollector(self))

    def observe_round(self, gamma: int, accepted: int, round_s: float) -> None:
        """One verdict: a block of `gamma` drafted tokens, the first `accepted` accepted, `round_s` after it was sent."""
        self.num_drafts += 1
        self.num_draft_tokens += gamma
        self.num_accepted_tokens += accepted
        per_pos = self.accepted_per_pos
        if len(per_pos) < gamma:  # a position's series exists (at 0) from the first block that reached it
            per_pos.extend([0] * (gamma - len(per_pos)))
        for pos in range(min(accepted, gamma)):
            per_pos[pos] += 1
        self.gamma.observe(gamma)
        self.round_seconds.observe(max(0.0, round_s))

    def render(self) -> bytes:
        """The exposition text, as `/metrics` serves it."""
        return generate_latest(self.registry)

    def route(self, path: str = "/metrics") -> Route:
        """A Starlette route serving `render()`."""

        async def endpoint(request: Request) -> Response:
            return Response(self.render(), media_type=CONTENT_TYPE_LATEST)

        return Route(path, endpoint, methods=["GET"])


class _NodeCollector(Collector):
    """Figures read from the engine at scrape time: requests, bytes per verifier, draft passes, per-session gauges."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable:
        engine = self.metrics.engine
        stats = engine.stats
        running = engine.running()
        yield from self._spec_decode()
        yield _gauge("edgespec_edge_requests_running", "Requests being generated.", len(running))
        yield _counter("edgespec_edge_requests_finished", "Requests completed.", stats.requests_finished)
        yield _counter("edgespec_edge_requests_failed", "Requests that failed (no verifier, shutdown, drafting error).", stats.requests_failed)
        yield _counter("edgespec_edge_completion_tokens", "Tokens emitted to users.", stats.completion_tokens)
        yield _counter("edgespec_edge_pipeline_hits", "Pre-drafted (pipelined) blocks sent the moment their verdict arrived.", stats.pipeline_hits)
        yield _counter("edgespec_edge_draft_passes", "Batched draft passes run.", stats.draft_passes)
        yield _counter("edgespec_edge_draft_seconds", "Wall time of the batched draft passes.", stats.draft_time_s)
        yield from self._links(engine.pool.status())
        yield from self._sessions(running)

    def _spec_decode(self) -> Iterable:
        m = self.metrics
        yield _counter("spec_decode_num_drafts", "Draft blocks verified.", m.num_drafts)
        yield _counter("spec_decode_num_draft_tokens", "Draft tokens verified.", m.num_draft_tokens)
        yield _counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.", m.num_accepted_tokens)
        per_pos = CounterMetricFamily("spec_decode_num_accepted_tokens_per_pos", "Accepted draft tokens at each position of the block (0 = first).",
                                      labels=["position"])
        for pos, count in enumerate(m.accepted_per_pos):
            per_pos.add_metric([str(pos)], count)
        yield per_pos

    def _links(self, links: list[dict]) -> Iterable:
        up = CounterMetricFamily("edgespec_edge_uplink_bytes", "Bytes sent to a verifier (hello, opens, drafts, closes).", labels=["verifier"])
        down = CounterMetricFamily("edgespec_edge_downlink_bytes", "Bytes received from a verifier.", labels=["verifier"])
        connected = GaugeMetricFamily("edgespec_edge_verifier_connected", "1 while the verifier's connection is up.", labels=["verifier"])
        for link in links:
            up.add_metric([link["address"]], link["bytes_sent"])
            down.add_metric([link["address"]], link["bytes_received"])
            connected.add_metric([link["address"]], 1 if link["connected"] else 0)
        yield from (up, down, connected)

    def _sessions(self, running: list) -> Iterable:
        shown = running[: self.metrics.max_session_series]
        families = {
            "tokens": GaugeMetricFamily("edgespec_edge_session_tokens", "Tokens the running request has emitted.", labels=["session"]),
            "rounds": GaugeMetricFamily("edgespec_edge_session_rounds", "Verified rounds of the running request.", labels=["session"]),
            "gamma": GaugeMetricFamily("edgespec_edge_session_mean_gamma", "Mean γ of the running request's rounds.", labels=["session"]),
            "acceptance": GaugeMetricFamily("edgespec_edge_session_acceptance_rate", "Accepted / drafted tokens of the running request.", labels=["session"]),
        }
        for r in shown:
            label = [str(r.key)]
            families["tokens"].add_metric(label, r.completion_tokens)
            families["rounds"].add_metric(label, r.stats.rounds)
            families["gamma"].add_metric(label, r.stats.drafted_tokens / r.stats.rounds if r.stats.rounds else 0.0)
            families["acceptance"].add_metric(label, r.stats.acceptance_rate)
        yield from families.values()
        yield _gauge("edgespec_edge_session_series_omitted", "Running requests beyond the per-session series limit (not shown per session).",
                     len(running) - len(shown))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)

