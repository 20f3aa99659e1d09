"""Connections from a drafter node to its verifier nodes: handshake, sessions, drafts and verdicts, routing, reconnect and resume.

One `VerifierLink` per verifier address keeps one WebSocket connection (many sessions on it) alive:
it connects with the auth token, sends `Hello`, waits for `HelloAck`, then reads verdicts until the
connection drops, and reconnects with exponential backoff. Every envelope passes the sans-I/O
`DrafterConnection` state machine before it is queued, so the wire order is the state machine's order.

The `VerifierPool` places sessions on links (join-shortest-queue from the verifiers' load hints) and
moves them when something fails. The drafter owns the transcript: when a connection drops, or a verifier
closes a session (BUSY, eviction, restart), the session is reopened with `Resume` from its transcript on
the same or another verifier, under a fresh wire session id; a draft that was in flight is simply
redrafted (or resent) at the same position, so no token a user has seen is lost or changed. Outcomes
reach the engine through a `SessionListener` (plain callbacks on the event loop).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Protocol, Union

from edgespec.edge.drafting import DraftedBlock
from edgespec.edge.routing import VerifierLoad, choose_shortest_queue
from edgespec.protocol import (
    FEATURE_BATCH_FRAMES,
    FEATURE_COUPLED_SAMPLING,
    DrafterConnection,
    ErrorCode,
    ErrorEffect,
    LocalProtocolError,
    ProtocolError,
    Sampling,
    ServerLimits,
    Transport,
    TransportClosed,
    batch_frames,
    connect,
    unbatch,
)
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages as m

__all__ = ["ClientConfig", "RemoteSession", "SessionListener", "VerifierLink", "VerifierPool", "VerifierUnavailable", "verifier_url"]

log = logging.getLogger(__name__)


class VerifierUnavailable(RuntimeError):
    """No verifier could take a session (none reachable in time, or too many failed attempts)."""


@dataclass(frozen=True)
class ClientConfig:
    """How the drafter node reaches its verifiers."""

    verifiers: tuple[str, ...]  # "host:port" or ws:// / wss:// URLs
    auth_token: Optional[str] = None
    tls_ca_file: Optional[Union[str, Path]] = None  # PEM CA(s) trusted for wss:// verifiers (None: the system's trust store)
    node_id: str = "edge"
    draft_model_id: str = ""
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05  # first reconnect delay; doubles per failed attempt
    backoff_max_s: float = 2.0
    busy_retry_s: float = 0.25  # wait after BUSY when the verifier gives no retry_after_ms
    unavailable_timeout_s: float = 30.0  # a session waiting this long for any verifier fails
    max_reopen_attempts: int = 20  # consecutive failed (re)opens of one session before it fails

    def __post_init__(self) -> None:
        if not self.verifiers:
            raise ValueError("at least one verifier address is needed")


def verifier_url(address: str) -> str:
    """ws:// URL for "host:port" (URLs pass through)."""
    address = address.strip()
    if "://" in address:
        return address
    if ":" not in address:
        raise ValueError(f"verifier address must be HOST:PORT, got {address!r}")
    return f"ws://{address}"


def tls_context(url: str, ca_file: Optional[Union[str, Path]]) -> Optional[ssl.SSLContext]:
    """The client TLS context for a wss:// URL trusting `ca_file` (None: ws://, or the system's trust store)."""
    if not url.startswith("wss://") or ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(ca_file))


@dataclass
class RemoteSession:
    """What a verifier needs to (re)open a session; the drafter owns `transcript` (prompt + emitted tokens)."""

    key: int
    transcript: list[int]
    num_prompt_tokens: int
    sampling: Sampling
    max_new_tokens: int = 0


class SessionListener(Protocol):
    """Callbacks from the pool to the engine, on the event loop; none may block."""

    def on_opened(self, key: int) -> None: ...  # open at len(transcript); drafts may be sent

    def on_verdict(self, key: int, verdict: pb.Verdict) -> None: ...

    def on_draft_rejected(self, key: int, error: ProtocolError) -> None: ...  # redraft at the same position

    def on_interrupted(self, key: int) -> None: ...  # the verifier lost it; the pool reopens it (then on_opened)

    def on_failed(self, key: int, error: Exception) -> None: ...  # given up; the session is forgotten


@dataclass
class _Placement:
    """Where a session lives: its link and wire id (link None while waiting to be (re)opened)."""

    session: RemoteSession
    pending_since: float
    link: Optional["VerifierLink"] = None
    wire_id: int = 0
    open: bool = False
    not_before: float = 0.0
    attempts: int = 0
    reopens: int = 0


class VerifierLink:
    """One verifier address: a connection that is kept up (reconnecting with backoff) and carries many sessions."""

    def __init__(self, pool: "VerifierPool", index: int, address: str):
        self.pool, self.index, self.address = pool, index, address
        self.url = verifier_url(address)
        self.ssl = tls_context(self.url, pool.config.tls_ca_file)
        self.conn: Optional[DrafterConnection] = None
        self.transport: Optional[Transport] = None
        self.hello_ack: Optional[pb.HelloAck] = None
        self.sessions: dict[int, int] = {}  # wire session id -> session key
        self.load = VerifierLoad()
        self.busy_until = 0.0
        self.connects = 0
        self.last_error = ""
        self._bytes_before = [0, 0]  # bytes sent / received on earlier connections
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def limits(self) -> Optional[ServerLimits]:
        return self.conn.limits if self.conn is not None else None

    def can_serve(self, session: RemoteSession) -> bool:
        """False for a seeded (coupled) session when this verifier's HelloAck does not announce coupled sampling."""
        return not session.sampling.coupled or (self.hello_ack is not None and FEATURE_COUPLED_SAMPLING in self.hello_ack.features)

    def send(self, envelope: pb.Envelope) -> None:
        """Apply `envelope` to the state machine and queue it (raises `LocalProtocolError` on a caller bug)."""
        if not self._ready or self.conn is None:
            raise TransportClosed(f"verifier {self.address} is not connected")
        self._outbox.put_nowait(self.conn.send(envelope))

    @property
    def bytes_sent(self) -> int:
        """Uplink bytes to this verifier over every connection so far."""
        return self._bytes_before[0] + (self.transport.bytes_sent if self.transport is not None else 0)

    @property
    def bytes_received(self) -> int:
        return self._bytes_before[1] + (self.transport.bytes_received if self.transport is not None else 0)

    def note_load(self, hints: pb.LoadHints) -> None:
        self.load = VerifierLoad(hints.queue_depth, hints.active_sessions, 0)

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Connect, serve, reconnect with exponential backoff, until the pool closes."""
        cfg = self.pool.config
        delay = cfg.backoff_initial_s
        while not self.pool.closing:
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 — refused, unreachable, bad handshake, bad URL: keep trying
                message = str(exc) or type(exc).__name__
                if message != self.last_error:
                    log.warning("verifier %s: cannot connect: %s", self.address, message)
                self.last_error = message
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.backoff_max_s)
                continue
            delay = cfg.backoff_initial_s
            self.last_error = ""
            try:
                await self._serve()
            except Exception:  # noqa: BLE001 — a bug must not end the link for good
                log.exception("verifier %s: connection failed", self.address)
            finally:
                await self._lost()
            if not self.pool.closing:
                log.warning("verifier %s: connection lost; reconnecting", self.address)
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        cfg = self.pool.config
        try:
            transport = await connect(self.url, auth_token=cfg.auth_token, ssl=self.ssl, open_timeout_s=cfg.connect_timeout_s)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionError(f"TLS: {self.url} presented a certificate this node does not trust ({exc.verify_message}); pass its CA with --tls-ca-file") from None
        conn = DrafterConnection()
        try:
            hello = m.hello(cfg.node_id, [cfg.draft_model_id] if cfg.draft_model_id else [], agent="edgespec-edge", features=[FEATURE_BATCH_FRAMES])
            await transport.send(conn.send(hello))
            event = conn.receive(await asyncio.wait_for(transport.recv(), cfg.connect_timeout_s))
            if event is None or event.kind != "hello_ack":
                if event is not None and event.kind == "error":
                    raise ProtocolError.from_message(event.message)
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"expected hello_ack, got {event.kind if event else 'nothing'}")
        except BaseException:
            await transport.close()
            raise
        self.transport, self.conn, self.hello_ack = transport, conn, event.message
        self._outbox = asyncio.Queue()
        self.load = VerifierLoad()
        self.connects += 1
        self._ready = True
        log.info("verifier %s: connected (target %s)", self.address, event.message.target_model_id)
        self.pool._link_ready(self)

    async def _serve(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            while True:
                try:
                    envelope = await self.transport.recv()
                except ProtocolError as exc:  # a message we cannot decode: ignore it, keep the connection
                    log.warning("verifier %s: bad message: %s", self.address, exc)
                    continue
                for item in unbatch(envelope):  # a Batch frame's messages, each as if it had come alone
                    try:
                        if isinstance(item, ProtocolError):
                            raise item
                        event = self.conn.receive(item)
                    except ProtocolError as exc:  # the verifier broke the rules: drop the connection, resume elsewhere
                        log.warning("verifier %s: protocol violation, reconnecting: %s", self.address, exc)
                        return
                    if event is not None:
                        self.pool._on_event(self, event)
                if writer.done():
                    return
        except TransportClosed:
            return
        finally:
            writer.cancel()

    async def _write(self) -> None:
        """Send the outbox in order; what queued up meanwhile (a draft pass's blocks) goes in Batch frames where the verifier reads them."""
        outbox = self._outbox
        batches = self.hello_ack is not None and FEATURE_BATCH_FRAMES in self.hello_ack.features
        while True:
            queued = [await outbox.get()]
            while batches and not outbox.empty():
                queued.append(outbox.get_nowait())
            frames = batch_frames(queued, max_message_bytes=self.transport.max_message_bytes) if len(queued) > 1 else queued
            for frame in frames:
                try:
                    await self.transport.send(frame)
                except TransportClosed:
                    return
                except LocalProtocolError as exc:  # e.g. over the size limit: a bug or a misconfiguration
                    log.error("verifier %s: cannot send %s: %s", self.address, frame.WhichOneof("msg"), exc)

    async def _lost(self) -> None:
        self._ready = False
        transport, self.transport = self.transport, None
        if transport is not None:
            self._bytes_before[0] += transport.bytes_sent
            self._bytes_before[1] += transport.bytes_received
        sessions, self.sessions = self.sessions, {}
        self.conn = None
        if transport is not None:
            try:
                await transport.close()
            except Exception:  # noqa: BLE001 — closing a broken connection may fail; it is gone either way
                pass
        self.pool._link_lost(self, sessions)

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()


class VerifierPool:
    """Sessions on verifier links: placement (JSQ), drafts, verdicts, and recovery (resume from the transcript)."""

    def __init__(self, config: ClientConfig, listener: SessionListener):
        self.config = config
        self.listener = listener
        self.links = [VerifierLink(self, i, address) for i, address in enumerate(config.verifiers)]
        self.closing = False
        self._placements: dict[int, _Placement] = {}
        self._wire_ids = itertools.count(1)
        self._tasks: list[asyncio.Task] = []
        self._wake: Optional[asyncio.Event] = None
        self._any_ready: Optional[asyncio.Event] = None

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start connecting to every verifier (returns at once; see `wait_connected`)."""
        self._wake, self._any_ready = asyncio.Event(), asyncio.Event()
        self._tasks = [asyncio.create_task(link.run(), name=f"verifier-{link.address}") for link in self.links]
        self._tasks.append(asyncio.create_task(self._placer(), name="verifier-placer"))

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once at least one verifier is connected (False after `timeout_s`)."""
        try:
            await asyncio.wait_for(self._any_ready.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        """Close every session and connection."""
        self.closing = True
        for key in list(self._placements):
            self.close(key)
        await asyncio.sleep(0)  # let the writers flush the closes
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        for link in self.links:
            await link.close()

    # ------------------------------------------------------------ queries

    @property
    def connected(self) -> list[str]:
        return [link.address for link in self.links if link.ready]

    def target_model_id(self) -> Optional[str]:
        for link in self.links:
            if link.hello_ack is not None and link.hello_ack.target_model_id:
                return link.hello_ack.target_model_id
        return None

    def limits(self, key: int) -> Optional[ServerLimits]:
        p = self._placements.get(key)
        return p.link.limits if p is not None and p.link is not None else None

    def verifier_of(self, key: int) -> Optional[str]:
        p = self._placements.get(key)
        return p.link.address if p is not None and p.link is not None else None

    def reopens(self, key: int) -> int:
        p = self._placements.get(key)
        return p.reopens if p is not None else 0

    def status(self) -> list[dict]:
        return [
            {"address": link.address, "connected": link.ready, "sessions": len(link.sessions), "connects": link.connects,
             "queue_depth": link.load.queue_depth, "bytes_sent": link.bytes_sent, "bytes_received": link.bytes_received,
             "last_error": link.last_error}
            for link in self.links
        ]

    # ------------------------------------------------------------ sessions

    def open(self, session: RemoteSession) -> None:
        """Place a session on a verifier (asynchronously: `on_opened` follows, or `on_failed`)."""
        if session.key in self._placements:
            raise ValueError(f"session {session.key} is already open")
        self._placements[session.key] = _Placement(session, pending_since=time.monotonic())
        self._wake.set()

    def send_draft(self, key: int, position: int, block: DraftedBlock) -> bool:
        """Send a draft for an open session; False if the session is not open on a verifier right now."""
        p = self._placements.get(key)
        if p is None or not p.open or p.link is None or not p.link.ready:
            return False
        try:
            p.link.send(m.draft(p.wire_id, position, block.tokens, block.q_message()))
        except TransportClosed:
            return False
        return True

    def close(self, key: int) -> None:
        """Forget a session and close it on its verifier (the acknowledgement is not awaited)."""
        p = self._placements.pop(key, None)
        if p is None or p.link is None or not p.link.ready:
            return
        try:
            p.link.send(m.close(p.wire_id))
        except (LocalProtocolError, TransportClosed):
            p.link.sessions.pop(p.wire_id, None)

    # ------------------------------------------------------------ placement

    async def _placer(self) -> None:
        while not self.closing:
            try:
                self._place()
            except Exception:  # noqa: BLE001 — keep placing whatever one session did
                log.exception("placing sessions failed")
            try:
                await asyncio.wait_for(self._wake.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _place(self) -> None:
        now = time.monotonic()
        links = [link for link in self.links if link.ready]
        for key, p in list(self._placements.items()):
            if p.link is not None:
                continue
            if now - p.pending_since > self.config.unavailable_timeout_s:
                self._fail(p, VerifierUnavailable(f"no verifier took the session within {self.config.unavailable_timeout_s:g} s (verifiers: {', '.join(self.config.verifiers)})"))
                continue
            able = [link for link in links if link.can_serve(p.session)]
            if not able and len(links) == len(self.links):
                self._fail(p, VerifierUnavailable(f"seeded sampling ('seed') needs a verifier that announces {FEATURE_COUPLED_SAMPLING!r}; none of {', '.join(self.config.verifiers)} does (upgrade them)"))
                continue
            candidates = [link for link in able if link.busy_until <= now]
            if p.not_before > now or not candidates:
                continue
            link = candidates[choose_shortest_queue([c.load for c in candidates])]
            sess, wire_id = p.session, next(self._wire_ids)
            n = len(sess.transcript)
            if n > sess.num_prompt_tokens:
                env = m.resume(wire_id, sess.transcript, sess.num_prompt_tokens, sess.sampling, draft_model_id=self.config.draft_model_id, max_new_tokens=sess.max_new_tokens)
            else:
                env = m.open_session(wire_id, sess.transcript, sess.sampling, draft_model_id=self.config.draft_model_id, max_new_tokens=sess.max_new_tokens)
            try:
                link.send(env)
            except TransportClosed:
                continue
            except LocalProtocolError as exc:
                self._fail(p, exc)
                continue
            link.sessions[wire_id] = key
            link.load = replace(link.load, placed_since_hint=link.load.placed_since_hint + 1)
            p.link, p.wire_id, p.open = link, wire_id, False
            p.attempts += 1

    def _repend(self, p: _Placement, delay_s: float = 0.0) -> None:
        now = time.monotonic()
        if p.open:  # it was running: a new wait for a verifier starts now (else the first one goes on)
            p.pending_since = now
        if p.link is not None:
            p.reopens += 1
        p.link, p.wire_id, p.open = None, 0, False
        p.not_before = now + delay_s
        self._wake.set()

    def _fail(self, p: _Placement, error: Exception) -> None:
        self._placements.pop(p.session.key, None)
        self._call("on_failed", p.session.key, error)

    def _call(self, name: str, *args) -> None:
        try:
            getattr(self.listener, name)(*args)
        except Exception:  # noqa: BLE001 — a listener bug must not take the connection down
            log.exception("session listener %s failed", name)

    # ------------------------------------------------------------ from the links

    def _link_ready(self, link: VerifierLink) -> None:
        self._any_ready.set()
        self._wake.set()

    def _link_lost(self, link: VerifierLink, sessions: dict[int, int]) -> None:
        if not any(other.ready for other in self.links):
            self._any_ready.clear()
        for wire_id, key in sessions.items():
            p = self._placements.get(key)
            if p is not None and p.link is link and p.wire_id == wire_id:
                self._repend(p)
                self._call("on_interrupted", key)

    def _placement_of(self, link: VerifierLink, wire_id: int) -> Optional[_Placement]:
        key = link.sessions.get(wire_id)
        p = self._placements.get(key) if key is not None else None
        return p if p is not None and p.link is link and p.wire_id == wire_id else None

    def _on_event(self, link: VerifierLink, event) -> None:
        msg = event.message
        if event.kind == "session_opened":
            if msg.HasField("load"):
                link.note_load(msg.load)
            p = self._placement_of(link, msg.session_id)
            if p is not None:
                p.open, p.attempts = True, 0
                self._call("on_opened", p.session.key)
        elif event.kind == "verdict":
            if msg.HasField("load"):
                link.note_load(msg.load)
            p = self._placement_of(link, msg.session_id)
            if p is not None:
                self._call("on_verdict", p.session.key, msg)
        elif event.kind == "close":
            link.sessions.pop(msg.session_id, None)
        elif event.kind == "error":
            self._on_error(link, ProtocolError.from_message(msg))

    def _on_error(self, link: VerifierLink, err: ProtocolError) -> None:
        if err.session_id is None:
            log.warning("verifier %s: %s", link.address, err)
            return
        wire_id = err.session_id
        p = self._placement_of(link, wire_id)
        if p is None:  # about a session we already closed or moved
            if err.effect == ErrorEffect.SESSION_CLOSED or err.code == ErrorCode.UNKNOWN_SESSION:
                link.sessions.pop(wire_id, None)
            return
        key = p.session.key
        if err.effect == ErrorEffect.DRAFT_REJECTED:
            self._call("on_draft_rejected", key, err)
            return
        if err.effect == ErrorEffect.NONE and err.code != ErrorCode.UNKNOWN_SESSION:
            log.warning("verifier %s: %s", link.address, err)
            return
        # the session is gone on that verifier: reopen it from the transcript (or give up)
        link.sessions.pop(wire_id, None)
        if err.effect == ErrorEffect.NONE:  # UNKNOWN_SESSION: the verifier forgot it; retire our side too
            try:
                link.send(m.close(wire_id))
            except (LocalProtocolError, TransportClosed):
                pass
        cfg = self.config
        if err.code == ErrorCode.BUSY:
            link.busy_until = time.monotonic() + (err.retry_after_ms / 1000.0 if err.retry_after_ms else cfg.busy_retry_s)
            delay = 0.0
        elif err.code in (ErrorCode.BAD_MESSAGE, ErrorCode.VERSION, ErrorCode.AUTH) and not p.open:
            self._fail(p, err)  # a verifier will never accept this open
            return
        else:
            delay = min(cfg.backoff_initial_s * 2 ** min(p.attempts, 16), cfg.backoff_max_s)
        if p.attempts >= cfg.max_reopen_attempts and err.code != ErrorCode.BUSY:
            self._fail(p, VerifierUnavailable(f"session failed {p.attempts} times in a row; last: {err}"))
            return
        log.info("verifier %s: session %d closed (%s); reopening", link.address, wire_id, err)
        self._repend(p, delay)
        self._call("on_interrupted", key)
