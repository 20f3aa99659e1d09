"""Prometheus metrics of a verifier node (vLLM's speculative-decoding names plus batching, queue, timing, bytes and sessions), labelled per drafter node.

Each `VerifierMetrics` has its own `CollectorRegistry` (several nodes can live in one process, e.g. in
tests) and can serve it on its own HTTP port (`serve`, path `/metrics`). Counters appear with the
`_total` suffix, as in vLLM (`spec_decode_num_drafts_total{node="edge-1"}`).
"""

from __future__ import annotations

import threading
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

__all__ = ["VerifierMetrics", "MetricsServer"]

_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_TOKENS_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_VERIFY_S_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_OVERHEAD_S_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05)


class MetricsServer:
    """The HTTP server behind `/metrics` (a daemon thread); `port` is the bound port."""

    def __init__(self, httpd, thread: threading.Thread) -> None:
        self._httpd, self._thread = httpd, thread

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class VerifierMetrics:
    """The verifier node's metrics; `node` labels name the drafter node (its Hello node id)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        node = ["node"]
        # vLLM's speculative decoding metrics (vllm/v1/spec_decode/metrics.py), same names and meaning
        self.num_drafts = Counter("spec_decode_num_drafts", "Draft blocks verified.", node, registry=r)
        self.num_draft_tokens = Counter("spec_decode_num_draft_tokens", "Draft tokens verified.", node, registry=r)
        self.num_accepted_tokens = Counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.", node, registry=r)
        self.accepted_per_pos = Counter(
            "spec_decode_num_accepted_tokens_per_pos", "Accepted draft tokens at each position of the block (0 = first).", ["node", "position"], registry=r
        )
        self.num_emitted_tokens = Counter("edgespec_verifier_emitted_tokens", "Tokens emitted (accepted + recovered or bonus).", node, registry=r)
        # batching, queue, timing
        self.batch_size = Histogram("edgespec_verifier_batch_size", "Draft blocks per verification batch.", buckets=_BATCH_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("edgespec_verifier_batch_tokens", "Target positions per verification batch.", buckets=_BATCH_TOKENS_BUCKETS, registry=r)
        self.verify_seconds = Histogram("edgespec_verifier_verify_seconds", "Wall time of one batch: target forward and verification.", buckets=_VERIFY_S_BUCKETS, registry=r)
        self.forward_seconds = Counter("edgespec_verifier_forward_seconds", "Target forwards (prefill + verification) of every batch, wall time.", registry=r)
        self.queue_depth = Gauge("edgespec_verifier_queue_depth", "Drafts waiting to be verified.", registry=r)
        self.round_overhead_seconds = Histogram(
            "edgespec_verifier_round_overhead_seconds",
            "Per verdict: time on the verifier outside target forwards (server time - its batch's forwards - waiting behind other batches' forwards).",
            node, buckets=_OVERHEAD_S_BUCKETS, registry=r,
        )
        # traffic and sessions
        self.received_bytes = Counter("edgespec_verifier_received_bytes", "Bytes of messages received from drafter nodes.", node, registry=r)
        self.active_sessions = Gauge("edgespec_verifier_active_sessions", "Open sessions.", node, registry=r)
        self.sessions_refused = Counter("edgespec_verifier_sessions_refused", "Sessions refused BUSY (KV budget or the node's session limit).", node, registry=r)
        self.node_limit_refusals = Counter(
            "edgespec_verifier_node_limit_refusals", "Opens (limit=sessions) and drafts (limit=tokens_in_flight) refused BUSY by a per-drafter-node limit.",
            ["node", "limit"], registry=r,
        )
        self.errors = Counter("edgespec_verifier_errors", "Errors sent to drafter nodes, by code.", ["node", "code"], registry=r)
        self.kv_tokens_reserved = Gauge("edgespec_verifier_kv_tokens_reserved", "KV tokens reserved by open sessions.", registry=r)
        self.kv_tokens_in_use = Gauge("edgespec_verifier_kv_tokens_in_use", "KV tokens held in the cache.", registry=r)
        self._round_children: dict = {}  # node -> its labelled series of `record_round`
        self._overhead_children: dict = {}
        self._cost_children: Optional[tuple] = None
        self.forward_cost = Gauge(
            "edgespec_verifier_forward_cost_seconds",
            "The forward-time model sent in load hints: base + per_position·rows·width + per_row·rows, seconds per term.", ["term"], registry=r,
        )

    def record_round(self, node: str, gamma: int, accepted: int) -> None:
        """One verified draft block of `gamma` tokens of which the first `accepted` were accepted."""
        children = self._round_children.get(node)
        if children is None:  # a label lookup costs more than the increment: keep each node's series at hand
            children = self._round_children[node] = (self.num_drafts.labels(node), self.num_draft_tokens.labels(node),
                                                     self.num_accepted_tokens.labels(node), self.num_emitted_tokens.labels(node), [])
        drafts, draft_tokens, accepted_tokens, emitted, per_pos = children
        drafts.inc()
        draft_tokens.inc(gamma)
        accepted_tokens.inc(accepted)
        emitted.inc(accepted + 1)
        while len(per_pos) < gamma:
            per_pos.append(self.accepted_per_pos.labels(node, str(len(per_pos))))
        for pos in range(gamma):
            per_pos[pos].inc(1 if pos < accepted else 0)

    def set_forward_cost(self, base_s: float, per_position_s: float, per_row_s: float) -> None:
        """Publish the forward-time model's three terms (series looked up once)."""
        if self._cost_children is None:
            self._cost_children = tuple(self.forward_cost.labels(term) for term in ("base", "per_position", "per_row"))
        for child, value in zip(self._cost_children, (base_s, per_position_s, per_row_s)):
            child.set(value)

    def observe_round_overhead(self, node: str, seconds: float) -> None:
        """The verifier's time on one draft outside target forwards (see `round_overhead_seconds`)."""
        child = self._overhead_children.get(node)
        if child is None:
            child = self._overhead_children[node] = self.round_overhead_seconds.labels(node)
        child.observe(seconds)

    def record_batch(self, size: int, tokens: int, seconds: float, forward_s: float = 0.0) -> None:
        self.batch_size.observe(size)
        self.batch_tokens.observe(tokens)
        self.verify_seconds.observe(seconds)
        self.forward_seconds.inc(forward_s)

    def render(self) -> bytes:
        """The exposition text, as `/metrics` serves it."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve `/metrics` on host:port (0 = an ephemeral port) from a daemon thread."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(httpd, thread)
