"""Message builders: one function per wire message returning a ready `Envelope`, plus the sampling and limits settings they carry.

Use as `from edgespec.protocol import messages as m; m.draft(sid, pos, ids, q)`. Builders fill in the
protocol version and the defaults of edgespec.proto; `Sampling` and `ServerLimits` are the plain-Python
views of the `Sampling` and `Limits` messages (with the "0 means unset" rules applied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol.codec import DEFAULT_MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from edgespec.protocol.drafts import QMessage, pack_draft
from edgespec.protocol.errors import ErrorCode, ErrorEffect, ProtocolError
from edgespec.policy.load import ForwardCost, VerifierHints

__all__ = [
    "FEATURE_COUPLED_SAMPLING",
    "FEATURE_BATCH_FRAMES",
    "Sampling",
    "ServerLimits",
    "batch",
    "hello",
    "hello_ack",
    "open_session",
    "resume",
    "session_opened",
    "draft",
    "verdict",
    "close",
    "error",
    "load_hints",
    "round_timing",
]

_MAX_UINT32 = (1 << 32) - 1
FEATURE_COUPLED_SAMPLING = "coupled-sampling"  # HelloAck.features: the verifier implements Sampling.coupled
FEATURE_BATCH_FRAMES = "batch-frames"  # Hello.features / HelloAck.features: this side reads Batch frames


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a session (temperature 0 = greedy; top_k 0 = off; top_p 1 = off; seed None = verifier's choice;
    coupled: seeded sampling by Gumbel-max coupling, needs a seed)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None
    coupled: bool = False

    def to_message(self) -> pb.Sampling:
        msg = pb.Sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, coupled=self.coupled)
        if self.seed is not None:
            msg.seed = self.seed
        return msg

    @classmethod
    def from_message(cls, msg: pb.Sampling, *, session_id: Optional[int] = None, field: str = "sampling") -> "Sampling":
        """Read and check a `Sampling` message; raises `ProtocolError` (BAD_MESSAGE) naming the bad field."""
        if not (math.isfinite(msg.temperature) and msg.temperature >= 0):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"must be finite and >= 0, got {msg.temperature}", session_id=session_id, field=f"{field}.temperature")
        top_p = msg.top_p or 1.0
        if not 0.0 < top_p <= 1.0:  # also false for NaN
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"must be in (0, 1], got {msg.top_p}", session_id=session_id, field=f"{field}.top_p")
        seed = msg.seed if msg.HasField("seed") else None
        if msg.coupled and seed is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "coupled sampling needs a seed", session_id=session_id, field=f"{field}.seed")
        return cls(temperature=msg.temperature, top_k=msg.top_k, top_p=top_p, seed=seed, coupled=msg.coupled)


@dataclass(frozen=True)
class ServerLimits:
    """What a verifier accepts, announced in `HelloAck` (0 = no limit announced)."""

    max_gamma: int = 32
    max_top_k: int = 1024
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_sessions: int = 0

    def to_message(self) -> pb.Limits:
        return pb.Limits(max_gamma=self.max_gamma, max_top_k=self.max_top_k, max_message_bytes=self.max_message_bytes, max_sessions=self.max_sessions)

    @classmethod
    def from_message(cls, msg: pb.Limits) -> "ServerLimits":
        return cls(msg.max_gamma, msg.max_top_k, msg.max_message_bytes, msg.max_sessions)


def load_hints(queue_depth: int = 0, active_sessions: int = 0, verify_ms: float = 0.0, batch_rows: float = 0.0, batch_width: float = 0.0,
               forward_cost: Optional[ForwardCost] = None) -> pb.LoadHints:
    """Load hints a verifier attaches to `SessionOpened` and `Verdict` (its forward-time model in microseconds on the wire)."""
    hints = pb.LoadHints(queue_depth=queue_depth, active_sessions=active_sessions, verify_ms=verify_ms, batch_rows=batch_rows,
                         batch_width=batch_width)
    if forward_cost is not None:
        hints.forward_cost.CopyFrom(pb.ForwardCost(base_us=1e6 * forward_cost.base_s, per_position_us=1e6 * forward_cost.per_position_s,
                                                   per_row_us=1e6 * forward_cost.per_row_s))
    return hints


def verifier_hints(hints: pb.LoadHints) -> VerifierHints:
    """The facts in a verdict's load hints; fields a verifier left unset, or sent out of range (not finite, < 0), are None."""
    def positive(value: float) -> Optional[float]:
        return float(value) if math.isfinite(value) and value > 0.0 else None

    cost = None
    if hints.HasField("forward_cost"):
        c = hints.forward_cost
        values = (c.base_us, c.per_position_us, c.per_row_us)
        if all(math.isfinite(v) and v >= 0.0 for v in values) and any(v > 0.0 for v in values):
            cost = ForwardCost(*(v / 1e6 for v in values))
    verify_ms = positive(hints.verify_ms)
    return VerifierHints(int(hints.queue_depth), int(hints.active_sessions), verify_ms / 1000.0 if verify_ms else None,
                        positive(hints.batch_rows), positive(hints.batch_width), cost)


def round_timing(server_s: float, forward_s: float, busy_wait_s: float) -> pb.RoundTiming:
    """The verifier's time on one draft (seconds in; whole microseconds on the wire, rounded down so sums keep their order; clamped to uint32): see `RoundTiming` in edgespec.proto."""
    return pb.RoundTiming(server_us=_micros(server_s), forward_us=_micros(forward_s), busy_wait_us=_micros(busy_wait_s))


def _micros(seconds: float) -> int:
    return min(_MAX_UINT32, max(0, int(seconds * 1e6)))


def batch(items: Iterable[pb.Envelope]) -> pb.Envelope:
    """Several messages in one frame (either direction, to a peer that reads batches; see `codec.batch_frames`)."""
    return pb.Envelope(batch=pb.Batch(items=list(items)))


def hello(node_id: str, draft_model_ids: Iterable[str] = (), agent: str = "", features: Iterable[str] = ()) -> pb.Envelope:
    """Drafter -> verifier, the first message on a connection (`features`: e.g. `FEATURE_BATCH_FRAMES`)."""
    return pb.Envelope(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, node_id=node_id, draft_model_ids=list(draft_model_ids), agent=agent,
                                      features=list(features)))


def hello_ack(node_id: str, target_model_id: str, vocab_size: int, limits: ServerLimits = ServerLimits(), features: Iterable[str] = ()) -> pb.Envelope:
    """Verifier -> drafter, the answer to `hello` (`features`: e.g. `FEATURE_COUPLED_SAMPLING`, `FEATURE_BATCH_FRAMES`)."""
    ack = pb.HelloAck(protocol_version=PROTOCOL_VERSION, node_id=node_id, target_model_id=target_model_id, vocab_size=vocab_size, limits=limits.to_message(),
                      features=list(features))
    return pb.Envelope(hello_ack=ack)


def open_session(
    session_id: int,
    prompt_token_ids: Iterable[int],
    sampling: Sampling = Sampling(),
    *,
    draft_model_id: str = "",
    max_new_tokens: int = 0,
) -> pb.Envelope:
    """Drafter -> verifier: open a session on a prompt (its position becomes len(prompt))."""
    msg = pb.OpenSession(
        protocol_version=PROTOCOL_VERSION,
        session_id=session_id,
        prompt_token_ids=list(prompt_token_ids),
        sampling=sampling.to_message(),
        draft_model_id=draft_model_id,
        max_new_tokens=max_new_tokens,
    )
    return pb.Envelope(open_session=msg)


def resume(
    session_id: int,
    transcript_token_ids: Iterable[int],
    num_prompt_tokens: int,
    sampling: Sampling = Sampling(),
    *,
    draft_model_id: str = "",
    max_new_tokens: int = 0,
) -> pb.Envelope:
    """Drafter -> verifier: reopen a session from the drafter's whole transcript (its position becomes len(transcript))."""
    msg = pb.Resume(
        protocol_version=PROTOCOL_VERSION,
        session_id=session_id,
        transcript_token_ids=list(transcript_token_ids),
        num_prompt_tokens=num_prompt_tokens,
        sampling=sampling.to_message(),
        draft_model_id=draft_model_id,
        max_new_tokens=max_new_tokens,
    )
    return pb.Envelope(resume=msg)


def session_opened(session_id: int, position: int, load: Optional[pb.LoadHints] = None) -> pb.Envelope:
    """Verifier -> drafter: the session is open at `position`."""
    return pb.Envelope(session_opened=pb.SessionOpened(session_id=session_id, position=position, load=load))


def draft(session_id: int, position: int, token_ids: Iterable[int], q: QMessage) -> pb.Envelope:
    """Drafter -> verifier: γ drafted tokens extending the transcript at `position`, with q (see `drafts.pack_q`)."""
    return pb.Envelope(draft=pack_draft(session_id, position, list(token_ids), q))


def verdict(
    session_id: int,
    position: int,
    accepted: int,
    next_token_id: int,
    is_bonus: bool,
    load: Optional[pb.LoadHints] = None,
    timing: Optional[pb.RoundTiming] = None,
) -> pb.Envelope:
    """Verifier -> drafter: `accepted` draft tokens and the next token for the draft at `position` (`timing`: see `round_timing`)."""
    msg = pb.Verdict(session_id=session_id, position=position, accepted=accepted, next_token_id=next_token_id, is_bonus=is_bonus, load=load, timing=timing)
    return pb.Envelope(verdict=msg)


def close(session_id: int) -> pb.Envelope:
    """Drafter -> verifier: end a session; verifier -> drafter: the acknowledgement."""
    return pb.Envelope(close=pb.Close(session_id=session_id))


def error(
    code: ErrorCode,
    message: str,
    *,
    session_id: Optional[int] = None,
    effect: ErrorEffect = ErrorEffect.NONE,
    field: str = "",
    retry_after_ms: int = 0,
) -> pb.Envelope:
    """An `Error` envelope (same as `ProtocolError(...).to_envelope()`)."""
    return ProtocolError(code, message, session_id=session_id, effect=effect, field=field, retry_after_ms=retry_after_ms).to_envelope()
