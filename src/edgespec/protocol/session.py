"""Sans-I/O connection state machines (h11-style) for both ends: which message may come next, per connection and per session.

No sockets, no asyncio: feed every envelope you received to `receive()` and pass every envelope
before you send it through `send()`. Both check the message against the state, apply the transition
and leave the state unchanged when they raise.
- `receive(env)` returns an `Event` (or None for a stale message that crossed a Close on the wire) and
  raises `ProtocolError` for an illegal message; reply with `send(exc.to_envelope())` and keep going.
- `send(env)` returns `env` and raises `LocalProtocolError` if this side may not send it (a caller bug).

Per session (DESIGN §2; the drafter owns the transcript, the verifier's KV is a cache):

    OPENING --SessionOpened--> IDLE --Draft(pos)--> AWAITING_VERDICT --Verdict(n)--> IDLE (pos += n + 1)
       |                        |  ^                     |
       |                        |  +--Error DRAFT_REJECTED+
       +---- Close --> CLOSING --Close (ack)--> closed;  Error SESSION_CLOSED --> closed, from any state

A draft must start at the session's position; at most one draft is outstanding per session; session ids
are never reused on a connection. On the verifier, a draft's shapes are checked on receipt against the
vocabulary and limits (`drafts.unpack_draft`) and the event carries the unpacked block.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Optional

from google.protobuf.message import Message

from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol.codec import message_kind, session_id_of
from edgespec.protocol.drafts import DraftBlock, unpack_draft
from edgespec.protocol.errors import ErrorCode, ErrorEffect, LocalProtocolError, ProtocolError
from edgespec.protocol.messages import Sampling, ServerLimits

__all__ = [
    "MAX_OUTSTANDING_DRAFTS",
    "Phase",
    "SessionState",
    "SessionInfo",
    "Event",
    "VerifierConnection",
    "DrafterConnection",
]

MAX_OUTSTANDING_DRAFTS = 1  # protocol version 1: one draft in flight per session
_REMOTE = ProtocolError  # raised by receive(): the peer broke the rules
_LOCAL = LocalProtocolError  # raised by send(): this side tried to


class Phase(enum.Enum):
    """Connection phase: before Hello, between Hello and HelloAck, then ready."""

    AWAITING_HELLO = "awaiting_hello"
    HELLO_PENDING = "hello_pending"
    READY = "ready"


class SessionState(enum.Enum):
    OPENING = "opening"  # OpenSession/Resume sent, SessionOpened not yet
    IDLE = "idle"  # open, no draft outstanding
    AWAITING_VERDICT = "awaiting_verdict"  # one draft outstanding
    CLOSING = "closing"  # Close received/sent, acknowledgement not yet
    CLOSED = "closed"  # not (or no longer) on this connection


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session as this side sees it."""

    session_id: int
    state: SessionState
    position: int = 0  # tokens in the transcript
    gamma: int = 0  # length of the outstanding draft (AWAITING_VERDICT), else 0


@dataclass(frozen=True)
class Event:
    """A received message the state machine accepted: its kind, the inner message, its session and (verifier, drafts) the unpacked block."""

    kind: str  # "hello", "open_session", "draft", "verdict", ...
    message: Message  # the inner message, e.g. pb.Draft
    session_id: Optional[int] = None
    block: Optional[DraftBlock] = None  # verifier side, kind == "draft": shapes checked


@dataclass
class _Session:
    state: SessionState
    position: int
    gamma: int = 0

    def info(self, session_id: int) -> SessionInfo:
        return SessionInfo(session_id, self.state, self.position, self.gamma)


class _Connection:
    """Shared bookkeeping: the phase, the session table and the dispatch of received and sent messages."""

    role = "peer"

    def __init__(self) -> None:
        self.phase = Phase.AWAITING_HELLO
        self._sessions: dict[int, _Session] = {}
        self._on_receive: dict[str, Callable[[Message], Optional[Event]]] = {}
        self._on_send: dict[str, Callable[[Message], None]] = {}

    # ------------------------------------------------------------ queries

    def session(self, session_id: int) -> SessionInfo:
        """The state of a session (CLOSED if this connection does not know it)."""
        sess = self._sessions.get(session_id)
        return sess.info(session_id) if sess else SessionInfo(session_id, SessionState.CLOSED)

    def session_ids(self) -> tuple[int, ...]:
        """Every session this connection holds, in any state but CLOSED."""
        return tuple(self._sessions)

    # ------------------------------------------------------------ entry points

    def receive(self, envelope: pb.Envelope) -> Optional[Event]:
        """Apply a received envelope; returns its `Event`, or None if it is stale. Raises `ProtocolError`."""
        kind = message_kind(envelope)
        handler = self._on_receive.get(kind)
        if handler is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"a {self.role} does not accept {kind or 'empty'} messages", session_id=session_id_of(envelope))
        return handler(getattr(envelope, kind))

    def send(self, envelope: pb.Envelope) -> pb.Envelope:
        """Apply an envelope this side is about to send and return it. Raises `LocalProtocolError`."""
        kind = message_kind(envelope)
        handler = self._on_send.get(kind)
        if handler is None:
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, f"a {self.role} does not send {kind or 'empty'} messages")
        handler(getattr(envelope, kind))
        return envelope

    # ------------------------------------------------------------ helpers

    def _require_phase(self, allowed: tuple[Phase, ...], what: str, err: type[ProtocolError]) -> None:
        if self.phase not in allowed:
            raise err(ErrorCode.BAD_MESSAGE, f"{what} is not allowed in connection phase {self.phase.value}")

    def _known(self, session_id: int, what: str, err: type[ProtocolError]) -> _Session:
        sess = self._sessions.get(session_id)
        if sess is None:
            raise err(ErrorCode.UNKNOWN_SESSION, f"{what}: no session {session_id} on this connection", session_id=session_id)
        return sess

    def _require_state(self, sess: _Session, sid: int, allowed: SessionState, what: str, err: type[ProtocolError]) -> None:
        if sess.state is not allowed:
            raise err(ErrorCode.BAD_MESSAGE, f"{what} is not allowed while the session is {sess.state.value}", session_id=sid)

    def _apply_verdict(self, sess: _Session, msg: pb.Verdict, err: type[ProtocolError]) -> None:
        sid = msg.session_id
        self._require_state(sess, sid, SessionState.AWAITING_VERDICT, "a verdict", err)
        if msg.position != sess.position:
            raise err(ErrorCode.BAD_POSITION, f"verdict for position {msg.position}, the outstanding draft is at {sess.position}", session_id=sid, field="verdict.position")
        if msg.accepted > sess.gamma:
            raise err(ErrorCode.BAD_MESSAGE, f"accepted {msg.accepted} of a {sess.gamma}-token draft", session_id=sid, field="verdict.accepted")
        if msg.is_bonus != (msg.accepted == sess.gamma):
            raise err(ErrorCode.BAD_MESSAGE, f"is_bonus must be accepted == γ ({msg.accepted} of {sess.gamma})", session_id=sid, field="verdict.is_bonus")
        sess.state, sess.position, sess.gamma = SessionState.IDLE, sess.position + msg.accepted + 1, 0

    def _apply_opened(self, sess: _Session, msg: pb.SessionOpened, err: type[ProtocolError]) -> None:
        self._require_state(sess, msg.session_id, SessionState.OPENING, "session_opened", err)
        if msg.position != sess.position:
            raise err(ErrorCode.BAD_POSITION, f"opened at {msg.position}, the transcript has {sess.position} tokens", session_id=msg.session_id, field="session_opened.position")
        sess.state = SessionState.IDLE


def _open_position(msg: Message, kind: str, err: type[ProtocolError], session_id: int) -> int:
    """The position an OpenSession/Resume opens at, after checking its token lists and sampling settings."""
    effect = ErrorEffect.SESSION_CLOSED
    if kind == "open_session":
        tokens, field = msg.prompt_token_ids, "open_session.prompt_token_ids"
    else:
        tokens, field = msg.transcript_token_ids, "resume.transcript_token_ids"
    if not tokens:
        raise err(ErrorCode.BAD_MESSAGE, "needs at least one token", session_id=session_id, field=field, effect=effect)
    if kind == "resume" and not 1 <= msg.num_prompt_tokens <= len(tokens):
        raise err(ErrorCode.BAD_MESSAGE, f"must be in [1, {len(tokens)}], got {msg.num_prompt_tokens}", session_id=session_id, field="resume.num_prompt_tokens", effect=effect)
    try:
        Sampling.from_message(msg.sampling, session_id=session_id, field=f"{kind}.sampling")
    except ProtocolError as exc:
        raise err(exc.code, exc.message, session_id=session_id, field=exc.field, effect=effect) from None
    return len(tokens)


class VerifierConnection(_Connection):
    """The verifier's view of one drafter connection: receives Hello, OpenSession, Resume, Draft, Close; sends the answers."""

    role = "verifier"

    def __init__(self, vocab_size: Optional[int] = None, limits: ServerLimits = ServerLimits()) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.limits = limits
        self.hello: Optional[pb.Hello] = None
        self._on_receive = {
            "hello": self._recv_hello,
            "open_session": self._recv_open,
            "resume": self._recv_resume,
            "draft": self._recv_draft,
            "close": self._recv_close,
            "error": lambda msg: Event("error", msg, msg.session_id if msg.HasField("session_id") else None),
        }
        self._on_send = {
            "hello_ack": self._send_hello_ack,
            "session_opened": self._send_opened,
            "verdict": self._send_verdict,
            "close": self._send_close_ack,
            "error": self._send_error,
        }

    # ------------------------------------------------------------ received from the drafter

    def _recv_hello(self, msg: pb.Hello) -> Event:
        self._require_phase((Phase.AWAITING_HELLO,), "a second hello", _REMOTE)
        self.phase, self.hello = Phase.HELLO_PENDING, msg
        return Event("hello", msg)

    def _recv_opening(self, msg: Message, kind: str) -> Event:
        sid = msg.session_id
        self._require_phase((Phase.HELLO_PENDING, Phase.READY), kind, _REMOTE)
        if sid in self._sessions:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"session {sid} already exists on this connection", session_id=sid, field=f"{kind}.session_id")
        position = _open_position(msg, kind, _REMOTE, sid)
        if self.limits.max_sessions and len(self._sessions) >= self.limits.max_sessions:
            raise ProtocolError(ErrorCode.LIMITS, f"{len(self._sessions)} sessions open, the limit per connection is {self.limits.max_sessions}", session_id=sid, effect=ErrorEffect.SESSION_CLOSED)
        self._sessions[sid] = _Session(SessionState.OPENING, position)
        return Event(kind, msg, sid)

    def _recv_open(self, msg: pb.OpenSession) -> Event:
        return self._recv_opening(msg, "open_session")

    def _recv_resume(self, msg: pb.Resume) -> Event:
        return self._recv_opening(msg, "resume")

    def _recv_draft(self, msg: pb.Draft) -> Event:
        sid = msg.session_id
        self._require_phase((Phase.HELLO_PENDING, Phase.READY), "a draft", _REMOTE)
        sess = self._known(sid, "a draft", _REMOTE)
        if sess.state is SessionState.AWAITING_VERDICT:
            raise ProtocolError(ErrorCode.LIMITS, f"a draft is already outstanding (at most {MAX_OUTSTANDING_DRAFTS} per session)", session_id=sid)
        if sess.state is SessionState.CLOSING:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "a draft for a session that is closing", session_id=sid)
        self._require_state(sess, sid, SessionState.IDLE, "a draft", _REMOTE)  # OPENING: not yet
        rejected = ErrorEffect.DRAFT_REJECTED  # from here on, the drafter's one outstanding draft is this one
        if msg.position != sess.position:
            raise ProtocolError(ErrorCode.BAD_POSITION, f"draft at position {msg.position}, the session is at {sess.position}", session_id=sid, field="draft.position", effect=rejected)
        try:
            block = unpack_draft(msg, vocab_size=self.vocab_size, max_gamma=self.limits.max_gamma or None, max_top_k=self.limits.max_top_k or None)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, session_id=sid, field=exc.field, effect=rejected) from None
        sess.state, sess.gamma = SessionState.AWAITING_VERDICT, block.gamma
        return Event("draft", msg, sid, block)

    def _recv_close(self, msg: pb.Close) -> Event:
        sid = msg.session_id
        sess = self._known(sid, "close", _REMOTE)
        if sess.state is SessionState.CLOSING:
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, "close of a session that is already closing", session_id=sid)
        sess.state, sess.gamma = SessionState.CLOSING, 0
        return Event("close", msg, sid)

    # ------------------------------------------------------------ sent to the drafter

    def _send_hello_ack(self, msg: pb.HelloAck) -> None:
        self._require_phase((Phase.HELLO_PENDING,), "hello_ack", _LOCAL)
        self.phase = Phase.READY

    def _send_opened(self, msg: pb.SessionOpened) -> None:
        self._require_phase((Phase.READY,), "session_opened (send hello_ack first)", _LOCAL)
        self._apply_opened(self._known(msg.session_id, "session_opened", _LOCAL), msg, _LOCAL)

    def _send_verdict(self, msg: pb.Verdict) -> None:
        self._apply_verdict(self._known(msg.session_id, "a verdict", _LOCAL), msg, _LOCAL)

    def _send_close_ack(self, msg: pb.Close) -> None:
        sess = self._known(msg.session_id, "close", _LOCAL)
        self._require_state(sess, msg.session_id, SessionState.CLOSING, "a close acknowledgement", _LOCAL)
        del self._sessions[msg.session_id]

    def _send_error(self, msg: pb.Error) -> None:
        if not msg.HasField("session_id"):
            return
        sid, sess = msg.session_id, self._sessions.get(msg.session_id)
        if msg.effect == ErrorEffect.DRAFT_REJECTED:
            if sess is not None and sess.state is SessionState.AWAITING_VERDICT:
                sess.state, sess.gamma = SessionState.IDLE, 0
            elif sess is None or sess.state is not SessionState.IDLE:  # IDLE: a draft rejected on receipt
                raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "DRAFT_REJECTED for a session without a draft", session_id=sid)
        elif msg.effect == ErrorEffect.SESSION_CLOSED:
            self._sessions.pop(sid, None)  # unknown: an open rejected on receipt


class DrafterConnection(_Connection):
    """The drafter's view of one verifier connection: sends Hello, OpenSession, Resume, Draft, Close; receives the answers."""

    role = "drafter"

    def __init__(self) -> None:
        super().__init__()
        self.hello_ack: Optional[pb.HelloAck] = None
        self.limits: Optional[ServerLimits] = None  # the verifier's, once its HelloAck arrived
        self._retired: set[int] = set()  # ids used and closed on this connection: never reused
        self._on_send = {
            "hello": self._send_hello,
            "open_session": self._send_open,
            "resume": self._send_resume,
            "draft": self._send_draft,
            "close": self._send_close,
            "error": lambda msg: None,
        }
        self._on_receive = {
            "hello_ack": self._recv_hello_ack,
            "session_opened": self._recv_opened,
            "verdict": self._recv_verdict,
            "close": self._recv_close_ack,
            "error": self._recv_error,
        }

    # ------------------------------------------------------------ sent to the verifier

    def _send_hello(self, msg: pb.Hello) -> None:
        self._require_phase((Phase.AWAITING_HELLO,), "a second hello", _LOCAL)
        self.phase = Phase.HELLO_PENDING

    def _send_opening(self, msg: Message, kind: str) -> None:
        sid = msg.session_id
        self._require_phase((Phase.HELLO_PENDING, Phase.READY), f"{kind} (send hello first)", _LOCAL)
        if sid in self._sessions or sid in self._retired:
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, f"session id {sid} is already used on this connection", session_id=sid)
        self._sessions[sid] = _Session(SessionState.OPENING, _open_position(msg, kind, _LOCAL, sid))

    def _send_open(self, msg: pb.OpenSession) -> None:
        self._send_opening(msg, "open_session")

    def _send_resume(self, msg: pb.Resume) -> None:
        self._send_opening(msg, "resume")

    def _send_draft(self, msg: pb.Draft) -> None:
        sid = msg.session_id
        sess = self._known(sid, "a draft", _LOCAL)
        self._require_state(sess, sid, SessionState.IDLE, "a draft", _LOCAL)
        if msg.position != sess.position:
            raise LocalProtocolError(ErrorCode.BAD_POSITION, f"draft at position {msg.position}, the session is at {sess.position}", session_id=sid)
        gamma, limits = len(msg.token_ids), self.limits
        if limits and limits.max_gamma and gamma > limits.max_gamma:
            raise LocalProtocolError(ErrorCode.LIMITS, f"γ = {gamma} is over the verifier's limit of {limits.max_gamma}", session_id=sid)
        sess.state, sess.gamma = SessionState.AWAITING_VERDICT, gamma

    def _send_close(self, msg: pb.Close) -> None:
        sess = self._known(msg.session_id, "close", _LOCAL)
        if sess.state is SessionState.CLOSING:
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "the session is already closing", session_id=msg.session_id)
        sess.state, sess.gamma = SessionState.CLOSING, 0

    # ------------------------------------------------------------ received from the verifier

    def _recv_hello_ack(self, msg: pb.HelloAck) -> Event:
        self._require_phase((Phase.HELLO_PENDING,), "hello_ack", _REMOTE)
        self.phase, self.hello_ack, self.limits = Phase.READY, msg, ServerLimits.from_message(msg.limits)
        return Event("hello_ack", msg)

    def _session_for(self, sid: int, what: str) -> Optional[_Session]:
        """The session a verifier message is about; None if it is closing (the message crossed our Close)."""
        self._require_phase((Phase.READY,), what, _REMOTE)
        sess = self._known(sid, what, _REMOTE)
        return None if sess.state is SessionState.CLOSING else sess

    def _recv_opened(self, msg: pb.SessionOpened) -> Optional[Event]:
        sess = self._session_for(msg.session_id, "session_opened")
        if sess is None:
            return None
        self._apply_opened(sess, msg, _REMOTE)
        return Event("session_opened", msg, msg.session_id)

    def _recv_verdict(self, msg: pb.Verdict) -> Optional[Event]:
        sess = self._session_for(msg.session_id, "a verdict")
        if sess is None:
            return None
        self._apply_verdict(sess, msg, _REMOTE)
        return Event("verdict", msg, msg.session_id)

    def _retire(self, sid: int) -> None:
        del self._sessions[sid]
        self._retired.add(sid)

    def _recv_close_ack(self, msg: pb.Close) -> Event:
        sid = msg.session_id
        sess = self._known(sid, "close", _REMOTE)
        self._require_state(sess, sid, SessionState.CLOSING, "a close acknowledgement", _REMOTE)
        self._retire(sid)
        return Event("close", msg, sid)

    def _recv_error(self, msg: pb.Error) -> Event:
        sid = msg.session_id if msg.HasField("session_id") else None
        sess = self._sessions.get(sid) if sid is not None else None
        if sess is not None:
            self._apply_error(sess, sid, msg)
        return Event("error", msg, sid)

    def _apply_error(self, sess: _Session, sid: int, msg: pb.Error) -> None:
        closing = sess.state is SessionState.CLOSING
        if msg.effect == ErrorEffect.SESSION_CLOSED or (closing and msg.code == ErrorCode.UNKNOWN_SESSION):
            self._retire(sid)
        elif msg.effect == ErrorEffect.DRAFT_REJECTED and not closing:
            self._require_state(sess, sid, SessionState.AWAITING_VERDICT, "DRAFT_REJECTED", _REMOTE)
            sess.state, sess.gamma = SessionState.IDLE, 0
