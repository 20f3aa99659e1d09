"""The drafter <-> verifier wire protocol: messages (edgespec.proto), codec, sans-I/O session state machines and transport.

Layers, bottom up (each usable alone; none imports torch):
- `edgespec_pb2`: generated from `edgespec.proto`, the contract for drafters in any language;
- `codec`: Envelope <-> bytes with a size limit and version check; `errors`: `ProtocolError` and codes;
- `drafts`: a draft block's tokens and q (full / top-K / tokens only) <-> `Draft`, numpy arrays;
- `messages`: one builder per message (`messages.draft(...)` returns an Envelope);
- `session`: `VerifierConnection` / `DrafterConnection`, which messages may come next (no I/O);
- `transport`: the `Transport` interface and its WebSocket implementation (`serve`, `connect`).
See docs/protocol.md for the rules and a worked exchange.
"""

from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages
from edgespec.protocol.codec import DEFAULT_MAX_MESSAGE_BYTES, PROTOCOL_VERSION, batch_frames, decode, encode, message_kind, session_id_of, unbatch
from edgespec.protocol.drafts import Q_MODES, DraftBlock, pack_draft, pack_full_q, pack_q, pack_topk_q, quantize_fp16, unpack_draft
from edgespec.protocol.errors import ErrorCode, ErrorEffect, LocalProtocolError, ProtocolError
from edgespec.protocol.messages import FEATURE_BATCH_FRAMES, FEATURE_COUPLED_SAMPLING, Sampling, ServerLimits
from edgespec.protocol.session import (
    MAX_OUTSTANDING_DRAFTS,
    DrafterConnection,
    Event,
    Phase,
    SessionInfo,
    SessionState,
    VerifierConnection,
)
from edgespec.protocol.transport import Transport, TransportClosed, TransportServer, WebSocketTransport, connect, serve

__all__ = [
    "pb",
    "messages",
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "encode",
    "decode",
    "message_kind",
    "session_id_of",
    "unbatch",
    "batch_frames",
    "Q_MODES",
    "DraftBlock",
    "quantize_fp16",
    "pack_full_q",
    "pack_topk_q",
    "pack_q",
    "pack_draft",
    "unpack_draft",
    "ErrorCode",
    "ErrorEffect",
    "ProtocolError",
    "LocalProtocolError",
    "FEATURE_COUPLED_SAMPLING",
    "FEATURE_BATCH_FRAMES",
    "Sampling",
    "ServerLimits",
    "MAX_OUTSTANDING_DRAFTS",
    "Phase",
    "SessionState",
    "SessionInfo",
    "Event",
    "VerifierConnection",
    "DrafterConnection",
    "Transport",
    "TransportClosed",
    "TransportServer",
    "WebSocketTransport",
    "serve",
    "connect",
]
