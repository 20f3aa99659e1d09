"""Envelope bytes: encode and decode one wire message, with a size limit, a version check and clear errors.

`decode` turns any input into either a well-formed `Envelope` (exactly one message set, a supported
protocol version where the message carries one) or a `ProtocolError`: oversized input is LIMITS,
garbage or truncated bytes and an empty envelope are BAD_MESSAGE, a foreign version is VERSION.
Every proper prefix of an encoded envelope is rejected (the one top-level field is length-delimited).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol.errors import ErrorCode, ErrorEffect, LocalProtocolError, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MESSAGE_KINDS",
    "VERSIONED_KINDS",
    "encode",
    "decode",
    "message_kind",
    "session_id_of",
    "unbatch",
    "batch_frames",
]

PROTOCOL_VERSION: int = pb.PROTOCOL_VERSION_CURRENT
# Full q of γ = 32 rows over a 128k vocabulary is 8 MiB; top-K and tokens-only drafts are tiny.
DEFAULT_MAX_MESSAGE_BYTES: int = 8 * 2**20

MESSAGE_KINDS: tuple[str, ...] = tuple(f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["msg"].fields)
VERSIONED_KINDS: frozenset[str] = frozenset({"hello", "hello_ack", "open_session", "resume"})
UNBATCHABLE_KINDS: frozenset[str] = frozenset({"batch", "hello", "hello_ack"})  # never items of a Batch
_ITEM_FRAMING_BYTES = 6  # a Batch item's tag and length prefix, at most (messages under 2^28 bytes)


def message_kind(envelope: pb.Envelope) -> str:
    """The name of the message an envelope carries ("hello", "draft", ...); "" when it is empty."""
    return envelope.WhichOneof("msg") or ""


def session_id_of(envelope: pb.Envelope) -> int | None:
    """The session an envelope is about, or None (hello, hello_ack, batch, and errors without a session)."""
    kind = message_kind(envelope)
    if kind in ("", "hello", "hello_ack", "batch"):
        return None
    inner = getattr(envelope, kind)
    if kind == "error" and not inner.HasField("session_id"):
        return None
    return inner.session_id


def _check_version(envelope: pb.Envelope, kind: str) -> None:
    """A foreign version is refused; a refused OpenSession/Resume never opened (effect SESSION_CLOSED)."""
    if kind in VERSIONED_KINDS:
        version = getattr(envelope, kind).protocol_version
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.VERSION,
                f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})",
                session_id=session_id_of(envelope),
                field=f"{kind}.protocol_version",
                effect=ErrorEffect.SESSION_CLOSED,
            )


def encode(envelope: pb.Envelope, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Serialize one envelope; raises `LocalProtocolError` if it is empty or over `max_message_bytes`."""
    if not message_kind(envelope):
        raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "refusing to send an empty envelope (no message set)")
    data = envelope.SerializeToString()
    if len(data) > max_message_bytes:
        raise LocalProtocolError(
            ErrorCode.LIMITS,
            f"{message_kind(envelope)} message is {len(data)} bytes, over the limit of {max_message_bytes}",
            session_id=session_id_of(envelope),
        )
    return data


def decode(data: bytes, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> pb.Envelope:
    """Parse one envelope from `data`; raises `ProtocolError` (LIMITS, BAD_MESSAGE or VERSION) if it is not acceptable."""
    if len(data) > max_message_bytes:
        raise ProtocolError(ErrorCode.LIMITS, f"message is {len(data)} bytes, over the limit of {max_message_bytes}")
    envelope = pb.Envelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a valid Envelope (garbage or truncated, {len(data)} bytes): {exc}") from None
    kind = message_kind(envelope)
    if not kind:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"empty Envelope: no known message set ({len(data)} bytes)")
    _check_version(envelope, kind)
    return envelope


def unbatch(envelope: pb.Envelope) -> list[pb.Envelope | ProtocolError]:
    """The messages one decoded frame carries, in order: the envelope itself, or a Batch's items.

    Each item is checked as `decode` checks a frame (one message set, a supported version); a bad
    item comes back as its `ProtocolError` in its place, and its siblings stand.
    """
    if message_kind(envelope) != "batch":
        return [envelope]
    out: list[pb.Envelope | ProtocolError] = []
    for item in envelope.batch.items:
        kind = message_kind(item)
        if not kind:
            out.append(ProtocolError(ErrorCode.BAD_MESSAGE, "empty Envelope in a batch: no known message set"))
        elif kind in UNBATCHABLE_KINDS:
            out.append(ProtocolError(ErrorCode.BAD_MESSAGE, f"a batch cannot carry {kind} messages", field="batch.items"))
        else:
            try:
                _check_version(item, kind)
                out.append(item)
            except ProtocolError as exc:
                out.append(exc)
    if not out:
        out.append(ProtocolError(ErrorCode.BAD_MESSAGE, "empty batch: no items", field="batch.items"))
    return out


def batch_frames(envelopes: list[pb.Envelope], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[pb.Envelope]:
    """Pack envelopes (in order) into as few frames as the size limit allows: a lone envelope stays as it is, runs become Batches.

    An envelope that is alone over the limit is returned as it is (sending it fails as it would have).
    """
    frames: list[pb.Envelope] = []
    run: list[pb.Envelope] = []
    size = _ITEM_FRAMING_BYTES  # the Batch field's own tag and length

    def flush() -> None:
        if len(run) == 1:
            frames.append(run[0])
        elif run:
            frames.append(pb.Envelope(batch=pb.Batch(items=run)))

    for envelope in envelopes:
        item = envelope.ByteSize() + _ITEM_FRAMING_BYTES
        if run and size + item > max_message_bytes:
            flush()
            run, size = [], _ITEM_FRAMING_BYTES
        run.append(envelope)
        size += item
    flush()
    return frames
