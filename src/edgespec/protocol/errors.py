"""Protocol errors: the `ProtocolError` exception, its codes and effects, and its `Error` message on the wire.

`ErrorCode` and `ErrorEffect` mirror the `Error.Code` and `Error.Effect` enums of edgespec.proto
(a test keeps them in step). A `ProtocolError` raised while handling a received message becomes the
`Error` envelope sent back with `to_envelope()`; a received `Error` becomes one with `from_message()`.
"""

from __future__ import annotations

import enum
from typing import Optional

from edgespec.protocol import edgespec_pb2 as pb

__all__ = ["ErrorCode", "ErrorEffect", "ProtocolError", "LocalProtocolError"]


class ErrorCode(enum.IntEnum):
    """Why a message or session failed (edgespec.proto `Error.Code`)."""

    UNSPECIFIED = 0
    BAD_MESSAGE = 1  # garbage, truncated, empty, wrong direction or out of order
    VERSION = 2  # unsupported protocol version
    UNKNOWN_SESSION = 3  # no such session on this connection
    BAD_POSITION = 4  # a draft that does not start at the session's position
    BAD_DRAFT = 5  # malformed draft: shapes, ids, q values
    LIMITS = 6  # over a limit: γ, K, message size, sessions, outstanding drafts
    BUSY = 7  # no capacity now; retry later or elsewhere
    AUTH = 8  # not authorised
    INTERNAL = 9  # the sender failed


class ErrorEffect(enum.IntEnum):
    """What an error did to the session it names (edgespec.proto `Error.Effect`)."""

    NONE = 0  # the offending message was ignored; the session is unchanged
    DRAFT_REJECTED = 1  # the outstanding draft was dropped; the session is idle at the same position
    SESSION_CLOSED = 2  # the session is gone; Resume it or open a new one


class ProtocolError(ValueError):
    """A message broke the protocol: `code`, a message for people, and optionally the session, field and effect."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        session_id: Optional[int] = None,
        field: str = "",
        effect: ErrorEffect = ErrorEffect.NONE,
        retry_after_ms: int = 0,
    ):
        self.code = ErrorCode(code)
        self.message = message
        self.session_id = session_id
        self.field = field
        self.effect = ErrorEffect(effect) if session_id is not None else ErrorEffect.NONE
        self.retry_after_ms = retry_after_ms
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f" (session {self.session_id})" if self.session_id is not None else ""
        field = f"{self.field}: " if self.field else ""
        return f"{self.code.name}{where}: {field}{self.message}"

    def to_message(self) -> pb.Error:
        """The `Error` message that reports this error to the peer."""
        err = pb.Error(code=int(self.code), message=self.message, field=self.field, retry_after_ms=self.retry_after_ms)
        if self.session_id is not None:
            err.session_id = self.session_id
            err.effect = int(self.effect)
        return err

    def to_envelope(self) -> pb.Envelope:
        """The `Error` envelope that reports this error to the peer."""
        return pb.Envelope(error=self.to_message())

    @classmethod
    def from_message(cls, err: pb.Error) -> "ProtocolError":
        """The error a peer reported (unknown codes and effects from a newer peer map to UNSPECIFIED / NONE)."""
        code = err.code if err.code in ErrorCode._value2member_map_ else ErrorCode.UNSPECIFIED
        effect = err.effect if err.effect in ErrorEffect._value2member_map_ else ErrorEffect.NONE
        session_id = err.session_id if err.HasField("session_id") else None
        return cls(code, err.message, session_id=session_id, field=err.field, effect=effect, retry_after_ms=err.retry_after_ms)


class LocalProtocolError(ProtocolError):
    """This side tried to send a message the protocol forbids: a bug in the caller, not the peer's fault."""
