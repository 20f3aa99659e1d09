"""The verifier node: an asyncio server that admits sessions, queues drafts from every drafter connection, verifies them in batches and answers with verdicts.

Tasks: one handler per connection (decode, state machine, validation, admission, queueing; answers go
through a per-connection outbox and writer task so a slow drafter never blocks the others), and one
batch loop that asks the scheduler for a batch and runs the runner in a worker thread
(`asyncio.to_thread`), so the event loop keeps serving I/O while the target forward runs. A bad message
gets an `Error` on its own connection and affects nothing else; input errors are logged on one line at
INFO, never with a traceback. A disconnect frees every session of that connection (KV and reservation).
Every verdict carries its `RoundTiming` (time on this node, target forwards, waiting behind other
batches' forwards); the rest is this node's overhead on the round, a histogram per drafter node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import ssl as ssl_lib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from edgespec.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FEATURE_BATCH_FRAMES,
    FEATURE_COUPLED_SAMPLING,
    ErrorCode,
    ErrorEffect,
    Event,
    LocalProtocolError,
    ProtocolError,
    Sampling,
    ServerLimits,
    SessionState,
    Transport,
    TransportClosed,
    TransportServer,
    VerifierConnection,
    batch_frames,
    serve,
    unbatch,
)
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages as m
from edgespec.policy.load import ForwardCost, ForwardCostFit
from edgespec.server.intake import checked_draft
from edgespec.server.kvbudget import KvBudget, NodeLimits, NodeQuotas, is_loopback_host, missing_auth_error
from edgespec.server.metrics import MetricsServer, VerifierMetrics
from edgespec.server.runner import DraftItem, RoundResult, VerifierRunner
from edgespec.server.scheduler import BatchPolicy, QueuedDraft, Scheduler, SchedulerConfig
from edgespec.spec.sampling import SamplingParams
from edgespec.spec.verify import DraftLimits

__all__ = ["VerifierConfig", "VerifierNode", "is_loopback_host"]

log = logging.getLogger(__name__)

MAX_NODE_LABEL_CHARS = 64  # a drafter's node id becomes a metrics label: keep it bounded
MAX_OUTBOX_MESSAGES = 65_536  # answers waiting for a drafter that does not read them: beyond this, drop it


@dataclass(frozen=True)
class VerifierConfig:
    """Settings of a verifier node (port 0 = ephemeral; metrics_port None = no metrics endpoint, 0 = ephemeral)."""

    target_dir: Optional[Path] = None  # None: the bundled target
    host: str = "127.0.0.1"
    port: int = 7700
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"  # /metrics has no authentication: loopback unless asked otherwise, whatever `host` is
    max_batch_tokens: int = 2048  # target positions per batch (Σ pending + γ)
    max_batch_size: int = 0  # drafts per batch; 0 = no limit, 1 = batching off
    batch_window_ms: float = 0.0  # 0: run what is queued at once (a drafter's Batch frame, or what arrived during a forward, is batched anyway)
    kv_budget_tokens: int = 262_144  # reserved per session: prompt + max_new_tokens + max_gamma
    max_sessions: int = 0  # open sessions on the node; 0 = no limit
    max_sessions_per_node: int = 0  # open sessions per drafter node id; 0 = no limit
    max_tokens_in_flight_per_node: int = 0  # Σ (γ + 1) of one drafter node's drafts queued or being verified; 0 = no limit
    max_gamma: int = 32
    max_top_k: int = 1024
    prob_atol: float = 1e-3  # tolerance on Σ q = 1
    default_max_new_tokens: int = 512  # budget of a session that leaves max_new_tokens at 0
    busy_retry_after_ms: int = 1000
    auth_token: Optional[str] = None
    node_tokens: Optional[Mapping[str, str]] = None  # drafter node id -> its own token (instead of auth_token): the token decides the node
    allow_no_auth: bool = False  # insecure: listen beyond loopback without an auth token
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    node_id: str = "verifier"
    model_id: Optional[str] = None  # announced in HelloAck; default: the target's directory
    device: str = "cpu"
    dtype: str = "float32"  # of the target: float32 | bfloat16 | float16
    cuda_graphs: Optional[bool] = None  # CUDA graphs of the decode/verify steps; None: on with a CUDA device
    seed: int = 0  # picks the seeds of sessions that leave theirs unset
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    calibrate: bool = True  # time a few forwards at start-up: the prior of the forward-time model sent in load hints
    forward_cost: Optional[ForwardCost] = None  # announce this forward-time model (e.g. from a profile) instead of fitting one
    merge_share: float = 0.5  # merge wait = this share of a forward's fixed cost (the scheduler's docstring); 0: off

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if self.max_gamma < 0 or self.max_top_k < 1 or self.default_max_new_tokens < 1:
            raise ValueError("need max_gamma >= 0, max_top_k >= 1 and default_max_new_tokens >= 1")
        if self.max_sessions_per_node < 0 or self.max_tokens_in_flight_per_node < 0:
            raise ValueError("need max_sessions_per_node >= 0 and max_tokens_in_flight_per_node >= 0 (0 = no limit)")
        if self.auth_token is not None and self.node_tokens is not None:
            raise ValueError("give auth_token (one token for every drafter node) or node_tokens (a token per node), not both")
        if self.node_tokens is not None and not self.node_tokens:
            raise ValueError("node_tokens is empty: no drafter node could connect")
        refusal = missing_auth_error(self.host, self.auth_token or self.node_tokens, self.allow_no_auth)
        if refusal is not None:
            raise ValueError(refusal)

    @property
    def exposed_without_auth(self) -> bool:
        """Listening beyond loopback with no auth token (only with `allow_no_auth`)."""
        return not (self.auth_token or self.node_tokens) and not is_loopback_host(self.host)


@dataclass
class _Peer:
    """One drafter connection: its transport, protocol state machine, outbox and open sessions."""

    peer_id: int
    transport: Transport
    conn: VerifierConnection
    node: str  # the drafter's node id (its token's with per-node tokens, else from Hello), the metrics label, fairness and limits key
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    token_limits: dict[int, int] = field(default_factory=dict)  # session id -> last position it may draft at + 1
    closed: bool = False
    reads_batches: bool = False  # the drafter lists the feature "batch-frames" in its Hello: it reads Batch frames
    bytes_counted: int = 0
    received_s: float = 0.0  # time.perf_counter() when the message being handled was received


class VerifierNode:
    """A verifier node serving the wire protocol for one target model; `await start()`, then `port`, `metrics_port`; `await stop()`."""

    def __init__(self, config: VerifierConfig = VerifierConfig(), target=None, *, policy: Optional[BatchPolicy] = None) -> None:
        self.config = config
        self._target = target
        self.metrics = VerifierMetrics()
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_batch_tokens, config.max_batch_size, config.batch_window_ms / 1000.0), policy
        )
        self.budget = KvBudget(config.kv_budget_tokens)
        self.quotas = NodeQuotas(NodeLimits(config.max_sessions_per_node, config.max_tokens_in_flight_per_node))
        self.runner: Optional[VerifierRunner] = None
        self.limits = ServerLimits(config.max_gamma, config.max_top_k, config.max_message_bytes, config.max_sessions)
        self.draft_limits = DraftLimits(config.max_gamma, config.max_top_k, config.prob_atol)
        self._peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(config.seed)
        self._server: Optional[TransportServer] = None
        self._metrics_server: Optional[MetricsServer] = None
        self._batch_task: Optional[asyncio.Task] = None
        self._wake: Optional[asyncio.Event] = None
        self._stopped: Optional[asyncio.Event] = None
        self._verify_ms = 0.0  # moving average of one batch's wall time
        self.cost_fit = ForwardCostFit()  # the forward-time model sent in load hints (seeded by the start-up calibration)
        self._batch_rows = self._batch_width = 0.0  # moving averages over verification forwards
        self._background: set[asyncio.Task] = set()
        self.model_id = config.model_id or "target"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the target if needed, listen, serve metrics, start the batch loop."""
        if self.config.exposed_without_auth:
            log.warning("verifier listening on %s with no auth token (--allow-no-auth): anyone who can reach it can use it", self.config.host)
        if self.config.metrics_port is not None and not is_loopback_host(self.config.metrics_host):
            log.warning("/metrics listening on %s: it has no authentication, anyone who can reach it reads this node's metrics", self.config.metrics_host)
        if self._target is None:
            self._target = await asyncio.to_thread(_load_target, self.config)
        target = self._target
        if self.config.model_id is None and getattr(target, "path", None) is not None:
            self.model_id = f"{target.path.parent.name}/{target.path.name}"
        self.runner = VerifierRunner(target)
        if self.config.forward_cost is not None:
            self.cost_fit = ForwardCostFit(prior=self.config.forward_cost)  # never observes: stays at the given model
            self._publish_cost()
        elif self.config.calibrate:
            points = await asyncio.to_thread(self.runner.calibrate)
            self.cost_fit = ForwardCostFit(prior=ForwardCostFit().fit_points(points))
            self._publish_cost()
        self._wake, self._stopped = asyncio.Event(), asyncio.Event()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            auth_token=self.config.auth_token,
            ssl=self._ssl_context(),
            max_message_bytes=self.config.max_message_bytes,
            node_tokens=self.config.node_tokens,
        )
        if self.config.metrics_port is not None:
            self._metrics_server = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        self._batch_task = asyncio.create_task(self._batch_loop(), name="verifier-batch-loop")
        log.info("verifier node %s listening on %s", self.config.node_id, self.url)

    async def stop(self) -> None:
        """Stop accepting, close every connection (their sessions are freed), stop the batch loop and the metrics server."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._batch_task is not None:
            self._batch_task.cancel()
            await asyncio.gather(self._batch_task, return_exceptions=True)
            self._batch_task = None
        for peer in list(self._peers.values()):
            self._drop_peer(peer)
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if self._stopped is not None:
            self._stopped.set()

    async def serve_forever(self) -> None:
        """Start (if not started) and serve until `stop()`."""
        if self._server is None:
            await self.start()
        await self._stopped.wait()

    async def __aenter__(self) -> "VerifierNode":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def metrics_port(self) -> Optional[int]:
        return self._metrics_server.port if self._metrics_server is not None else None

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls_cert else "ws"
        return f"{scheme}://{self.config.host}:{self.port}"

    @property
    def metrics_url(self) -> Optional[str]:
        if self._metrics_server is None:
            return None
        host = self.config.metrics_host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.metrics_port}/metrics"

    @property
    def active_sessions(self) -> int:
        return self.runner.session_count if self.runner else 0

    def _ssl_context(self) -> Optional[ssl_lib.SSLContext]:
        if self.config.tls_cert is None:
            return None
        ctx = ssl_lib.SSLContext(ssl_lib.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        return ctx

    # ------------------------------------------------------------------ one connection

    async def _handle(self, transport: Transport) -> None:
        peer = _Peer(next(self._ids), transport, VerifierConnection(self.runner.vocab_size, self.limits), node=transport.authenticated_node or transport.peer)
        self._peers[peer.peer_id] = peer
        writer = asyncio.create_task(self._write(peer), name=f"verifier-writer-{peer.peer_id}")
        try:
            while not peer.closed:
                try:
                    envelope = await transport.recv()
                except ProtocolError as exc:  # an undecodable frame: answer on this connection, keep serving
                    self._count_bytes(peer)
                    self._reply_error(peer, exc)
                    continue
                peer.received_s = time.perf_counter()
                self._count_bytes(peer)
                if not all(self._receive(peer, item) for item in unbatch(envelope)):  # a Batch frame's messages, each as if alone
                    peer.outbox.put_nowait(None)  # an identity its token does not allow: the writer ends the connection after the error
                    await asyncio.wait([writer], timeout=5.0)
                    break
        except TransportClosed:
            pass
        finally:
            self._drop_peer(peer)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _receive(self, peer: _Peer, item) -> bool:
        """One received message (or the error that stands for a bad Batch item) through the state machine to its handler; False: end the connection."""
        try:
            if isinstance(item, ProtocolError):
                raise item
            event = peer.conn.receive(item)
            if event is not None:
                self._on_event(peer, event)
        except LocalProtocolError:  # this node tried to send something out of turn: a bug, not the peer's fault
            log.exception("verifier bug while serving %s", peer.node)
        except ProtocolError as exc:  # bad input: answer on this connection, keep serving (an AUTH error ends it)
            self._reply_error(peer, exc)
            return exc.code is not ErrorCode.AUTH
        return True

    async def _write(self, peer: _Peer) -> None:
        """Send the peer's outbox in order, what has queued up meanwhile in Batch frames where the peer reads them; ends with the connection."""
        outbox, limit = peer.outbox, self.config.max_message_bytes
        try:
            while True:
                queued = [await outbox.get()]
                while peer.reads_batches and not outbox.empty() and queued[-1] is not None:
                    queued.append(outbox.get_nowait())
                ending = queued[-1] is None  # end the connection after what was queued before
                queued = [e for e in queued if e is not None]
                frames = batch_frames(queued, max_message_bytes=limit) if len(queued) > 1 else queued
                for frame in frames:
                    await peer.transport.send(frame)
                if ending:
                    await peer.transport.close()
                    return
        except TransportClosed:
            peer.closed = True

    def _post(self, peer: _Peer, envelope: pb.Envelope) -> None:
        """Apply an answer to the peer's state machine and queue it for sending (order preserved)."""
        if peer.closed:
            return
        if peer.outbox.qsize() >= MAX_OUTBOX_MESSAGES:
            log.warning("dropping drafter %s (%s): it does not read its answers", peer.node, peer.transport.peer)
            peer.closed = True
            task = asyncio.get_running_loop().create_task(peer.transport.close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        peer.outbox.put_nowait(peer.conn.send(envelope))

    def _count_bytes(self, peer: _Peer) -> None:
        seen = peer.transport.bytes_received
        if seen > peer.bytes_counted:
            self.metrics.received_bytes.labels(peer.node).inc(seen - peer.bytes_counted)
            peer.bytes_counted = seen

    def _reply_error(self, peer: _Peer, exc: ProtocolError) -> None:
        log.info("drafter %s (%s): %s", peer.node, peer.transport.peer, exc)
        self.metrics.errors.labels(peer.node, exc.code.name).inc()
        try:
            self._post(peer, exc.to_envelope())
        except LocalProtocolError:  # the error's effect does not fit the session's state: report it without one
            self._post(peer, m.error(exc.code, str(exc)))

    def _on_event(self, peer: _Peer, event: Event) -> None:
        kind = event.kind
        if kind == "hello":
            peer.node = _hello_node(peer.transport, event.message.node_id)
            peer.reads_batches = FEATURE_BATCH_FRAMES in event.message.features
            self._post(peer, m.hello_ack(self.config.node_id, self.model_id, self.runner.vocab_size, self.limits,
                                         features=[FEATURE_COUPLED_SAMPLING, FEATURE_BATCH_FRAMES]))
        elif kind in ("open_session", "resume"):
            self._open(peer, event)
        elif kind == "draft":
            self._on_draft(peer, event)
        elif kind == "close":
            self._close_session(peer, event.session_id)
            self._post(peer, m.close(event.session_id))
        elif kind == "error":
            log.info("drafter %s reported: %s", peer.node, ProtocolError.from_message(event.message))

    # ------------------------------------------------------------------ sessions

    def _load(self) -> pb.LoadHints:
        return m.load_hints(self.scheduler.depth, self.active_sessions, self._verify_ms, self._batch_rows, self._batch_width,
                            self.cost_fit.cost())

    def _observe_forward(self) -> None:
        """Fold the last batch's verification forward into the forward-time model and the batch-shape averages."""
        shape = self.runner.last_verify
        if shape is None:
            return
        rows, width, seconds = shape
        if self.config.forward_cost is None:
            self.cost_fit.observe(rows, width, seconds)
        cost = self.cost_fit.cost()
        if cost is not None:
            self.scheduler.merge_wait_s = self.config.merge_share * cost.base_s
        first = not self._batch_rows
        self._batch_rows = rows if first else 0.8 * self._batch_rows + 0.2 * rows
        self._batch_width = width if first else 0.8 * self._batch_width + 0.2 * width
        self._publish_cost()

    def _publish_cost(self) -> None:
        cost = self.cost_fit.cost()
        if cost is not None:
            self.metrics.set_forward_cost(cost.base_s, cost.per_position_s, cost.per_row_s)

    def _open(self, peer: _Peer, event: Event) -> None:
        msg, sid = event.message, event.session_id
        closed = ErrorEffect.SESSION_CLOSED
        if event.kind == "open_session":
            tokens, num_prompt, field_name = list(msg.prompt_token_ids), len(msg.prompt_token_ids), "open_session.prompt_token_ids"
        else:
            tokens, num_prompt, field_name = list(msg.transcript_token_ids), msg.num_prompt_tokens, "resume.transcript_token_ids"
        vocab = self.runner.vocab_size
        if max(tokens) >= vocab:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"token ids must be < {vocab}, got {max(tokens)}", session_id=sid, field=field_name, effect=closed)
        sampling = Sampling.from_message(msg.sampling, session_id=sid)
        params = SamplingParams(sampling.temperature, sampling.top_k, sampling.top_p)
        max_new = msg.max_new_tokens or self.config.default_max_new_tokens
        limit_tokens = max(num_prompt + max_new, len(tokens))
        if self.config.max_sessions and self.active_sessions >= self.config.max_sessions:
            self.metrics.sessions_refused.labels(peer.node).inc()
            raise ProtocolError(
                ErrorCode.BUSY, f"{self.active_sessions} sessions open, this verifier's limit is {self.config.max_sessions}",
                session_id=sid, effect=closed, retry_after_ms=self.config.busy_retry_after_ms,
            )
        self._check_node_sessions(peer, sid)
        key = (peer.peer_id, sid)
        need = limit_tokens + self.config.max_gamma
        admission = self.budget.reserve(key, need)
        if not admission.admitted:
            self.metrics.sessions_refused.labels(peer.node).inc()
            if admission.never:
                raise ProtocolError(ErrorCode.LIMITS, f"the session needs {need} KV tokens (prompt + max_new_tokens + max_gamma), over this verifier's whole budget of {self.budget.budget_tokens}", session_id=sid, effect=closed)
            raise ProtocolError(
                ErrorCode.BUSY, f"KV budget full: the session needs {need} tokens, {admission.free_tokens} of {self.budget.budget_tokens} are free",
                session_id=sid, effect=closed, retry_after_ms=self.config.busy_retry_after_ms,
            )
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(63)
        position = self.runner.open(key, tokens, params, seed, num_prompt, coupled=sampling.coupled)
        peer.token_limits[sid] = limit_tokens
        self.quotas.add_session(peer.node)
        self.metrics.active_sessions.labels(peer.node).inc()
        self.metrics.kv_tokens_reserved.set(self.budget.reserved_tokens)
        self._post(peer, m.session_opened(sid, position, self._load()))

    def _close_session(self, peer: _Peer, sid: int) -> None:
        """Forget a session: runner (its KV row is reclaimed by the batch loop), queue, reservation, metrics."""
        key = (peer.peer_id, sid)
        if peer.token_limits.pop(sid, None) is None:
            return
        self.runner.close(key)
        self.scheduler.drop_session(key)
        self.budget.release(key)
        self.quotas.remove_session(peer.node)
        self.quotas.release_draft(key)
        self.metrics.active_sessions.labels(peer.node).dec()
        self.metrics.kv_tokens_reserved.set(self.budget.reserved_tokens)
        self._wake.set()

    def _check_node_sessions(self, peer: _Peer, sid: int) -> None:
        """Refuse an open (BUSY, session closed) when the drafter node already has its limit of sessions open."""
        reason = self.quotas.session_refusal(peer.node)
        if reason is not None:
            self.metrics.sessions_refused.labels(peer.node).inc()
            self.metrics.node_limit_refusals.labels(peer.node, "sessions").inc()
            raise ProtocolError(ErrorCode.BUSY, reason, session_id=sid, effect=ErrorEffect.SESSION_CLOSED, retry_after_ms=self.config.busy_retry_after_ms)

    def _check_node_tokens(self, peer: _Peer, sid: int, tokens: int) -> None:
        """Refuse a draft (BUSY, draft rejected) that would take the drafter node over its tokens in flight; retry after about one batch."""
        reason = self.quotas.draft_refusal(peer.node, tokens)
        if reason is not None:
            self.metrics.node_limit_refusals.labels(peer.node, "tokens_in_flight").inc()
            retry_ms = min(max(1, math.ceil(self._verify_ms)), self.config.busy_retry_after_ms)
            raise ProtocolError(ErrorCode.BUSY, reason, session_id=sid, effect=ErrorEffect.DRAFT_REJECTED, retry_after_ms=retry_ms)

    def _drop_peer(self, peer: _Peer) -> None:
        """A connection ended: free every session it held."""
        peer.closed = True
        for sid in list(peer.token_limits):
            self._close_session(peer, sid)
        self.scheduler.drop_node(peer.peer_id)
        self._peers.pop(peer.peer_id, None)

    def _on_draft(self, peer: _Peer, event: Event) -> None:
        sid, position = event.session_id, event.message.position
        key = (peer.peer_id, sid)
        rejected = ErrorEffect.DRAFT_REJECTED
        limit = peer.token_limits.get(sid)
        if limit is None or not self.runner.is_open(key):  # refused at open time but the drafter drafted anyway
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "no such open session", session_id=sid, effect=rejected)
        if position >= limit:
            raise ProtocolError(ErrorCode.LIMITS, f"the session has reached its budget of {limit} tokens (prompt + max_new_tokens)", session_id=sid, field="draft.position", effect=rejected)
        tokens_in_flight = event.block.gamma + 1
        self._check_node_tokens(peer, sid, tokens_in_flight)
        draft = checked_draft(event.block, sid, self.runner.vocab_size, self.draft_limits)
        item = DraftItem(key, position, draft)
        cost = self.runner.pending_tokens(key) + item.gamma
        self.scheduler.submit(QueuedDraft(item, peer.peer_id, asyncio.get_running_loop().time(), cost, peer.received_s))
        self.quotas.add_draft(key, peer.node, tokens_in_flight)
        self.metrics.queue_depth.set(self.scheduler.depth)
        self._wake.set()

    # ------------------------------------------------------------------ batches

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            batch, wake_at = self.scheduler.next_batch(now, self.active_sessions)
            if batch:
                await self._run_batch(batch)
                continue
            if self.runner.needs_reclaim:  # no draft waits: crop the last batch's rejected tokens, free closed sessions' rows
                await asyncio.to_thread(self.runner.reclaim)
                self.metrics.kv_tokens_in_use.set(self.runner.kv_tokens_in_use)
                continue
            timeout = None if wake_at is None else max(0.0, wake_at - now)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _run_batch(self, batch: list[QueuedDraft]) -> None:
        self.metrics.queue_depth.set(self.scheduler.depth)
        earlier_forwards = list(self.runner.forward_windows)
        start = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.runner.verify_batch, [q.item for q in batch])
        except Exception:  # a server fault, not bad input: log it whole and end the sessions involved
            log.exception("verification of a batch of %d drafts failed", len(batch))
            for q in batch:
                peer = self._peers.get(q.node)
                sid = q.item.key[1]
                if peer is not None and peer.conn.session(sid).state is SessionState.AWAITING_VERDICT:
                    self._close_session(peer, sid)
                    self._post(peer, m.error(ErrorCode.INTERNAL, "verification failed on the verifier", session_id=sid, effect=ErrorEffect.SESSION_CLOSED))
            return
        finally:  # verified or failed: these drafts no longer count against their nodes' tokens in flight
            for q in batch:
                self.quotas.release_draft(q.item.key)
        elapsed_s = time.perf_counter() - start
        self._verify_ms = 1000.0 * elapsed_s if not self._verify_ms else 0.8 * self._verify_ms + 200.0 * elapsed_s
        rounds = self._post_verdicts(batch, results, start, earlier_forwards)
        self.scheduler.release([q.item.key for q in batch], asyncio.get_running_loop().time())
        await asyncio.sleep(0)  # the writers send the verdicts now; the books are kept after, off the verdicts' path
        self._observe_forward()
        forward_s = max((r.forward_s for r in results if r is not None), default=0.0)  # the batch's forwards (every row shares them)
        self.metrics.record_batch(len(batch), sum(q.cost_tokens for q in batch), elapsed_s, forward_s)
        self.metrics.kv_tokens_in_use.set(self.runner.kv_tokens_in_use)
        for node, gamma, accepted, overhead_s in rounds:
            self.metrics.record_round(node, gamma, accepted)
            self.metrics.observe_round_overhead(node, overhead_s)

    def _post_verdicts(self, batch: list[QueuedDraft], results: list[Optional[RoundResult]], start: float,
                       earlier_forwards: list[tuple[float, float]]) -> list[tuple[str, int, int, float]]:
        """Queue each result's Verdict (or error) to its drafter; returns (node, γ, accepted, verifier-side overhead) per verdict sent."""
        load = self._load()
        rounds = []
        for q, result in zip(batch, results):
            peer = self._peers.get(q.node)
            if result is None or peer is None or peer.closed:
                continue
            sid = q.item.key[1]
            info = peer.conn.session(sid)
            if info.state is not SessionState.AWAITING_VERDICT or info.position != result.position:
                continue  # the drafter closed the session meanwhile
            if result.error is not None:
                log.warning("session %s of %s: %s", sid, peer.node, result.error)
                self._post(peer, m.error(ErrorCode.INTERNAL, result.error, session_id=sid, effect=ErrorEffect.DRAFT_REJECTED))
                continue
            busy_wait = busy_wait_s(q.received_s, start, earlier_forwards)
            server_s = time.perf_counter() - q.received_s
            self._post(peer, m.verdict(sid, result.position, result.accepted, result.next_token_id, result.is_bonus, load,
                                       m.round_timing(server_s, result.forward_s, busy_wait)))
            rounds.append((peer.node, result.gamma, result.accepted, max(0.0, server_s - result.forward_s - busy_wait)))
        return rounds


def _hello_node(transport: Transport, claimed: str) -> str:
    """The node a Hello makes its connection: the token's node with per-node tokens (a Hello claiming another one is
    refused with AUTH), else its claimed node id, or the peer address when it claims none."""
    node = transport.authenticated_node
    if node is None:
        return (claimed or transport.peer)[:MAX_NODE_LABEL_CHARS]
    if claimed and claimed != node:
        raise ProtocolError(ErrorCode.AUTH, f"this connection's token belongs to drafter node {node!r}, not {claimed!r}; start that drafter with --node-id {node}",
                            field="hello.node_id")
    return node


def busy_wait_s(received_s: float, batch_start_s: float, forward_windows: Sequence[tuple[float, float]]) -> float:
    """Seconds of [received_s, batch_start_s] during which target forwards (of other batches) ran: the overlap with their windows.

    The windows are in time order and do not overlap (one forward at a time), so the walk back from the newest
    stops at the first window that ended before the draft came: usually the newest one.
    """
    total = 0.0
    for start, end in reversed(forward_windows):
        if end <= received_s:
            break
        total += max(0.0, min(end, batch_start_s) - max(start, received_s))
    return total


def _load_target(config: VerifierConfig):
    """Load the target model named by the config (default: the bundled target)."""
    from edgespec.models.bundle import bundled_path
    from edgespec.models.runtime import CausalLM

    path = config.target_dir if config.target_dir is not None else bundled_path("target")
    return CausalLM.load(path, device=config.device, dtype=config.dtype, cuda_graphs=config.cuda_graphs)
