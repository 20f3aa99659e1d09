"""Draft blocks on the wire: pack γ drafted tokens and their q (full, top-K or tokens only) into a `Draft`, and back.

Encodings of q for a block of γ drafted tokens over a vocabulary of V (DESIGN §3):
- "full":   q_probs [γ, V] fp16, γ·V·2 bytes;
- "topk":   q_ids [γ, K] uint32 (varint on the wire) + q_probs [γ, K] fp16, K per message;
- "tokens": no probabilities (q is one-hot at each drafted token).
fp16 on the wire is exact only if the drafter samples from the quantised q: call `quantize_fp16`, renormalise
each row, sample from that, then send the quantised values. Unpacking checks shapes only (γ, V and K agree
with each other, the limits and the vocabulary); the values (finite, ≥ 0, rows sum to 1, ids in range, no
duplicates) are checked on the verifier by `edgespec.spec.verify.validate_draft`. numpy only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError

__all__ = [
    "Q_MODES",
    "DraftBlock",
    "QMessage",
    "quantize_fp16",
    "pack_full_q",
    "pack_topk_q",
    "pack_q",
    "pack_draft",
    "unpack_draft",
]

Q_MODES: tuple[str, ...] = ("full", "topk", "tokens")
QMessage = Union[pb.FullQ, pb.TopKQ, pb.TokensOnlyQ]
_FP16_LE = np.dtype("<f2")
_Q_FIELD = {"full": "full", "top_k": "topk", "tokens_only": "tokens"}  # Draft.q oneof name -> q mode


@dataclass(frozen=True)
class DraftBlock:
    """One session's draft block as numpy arrays, laid out like `edgespec.spec.verify.DraftBatch` for one sequence."""

    token_ids: np.ndarray  # [γ] int64
    q_mode: str = "tokens"  # "full" | "topk" | "tokens"
    q_probs: Optional[np.ndarray] = None  # full: [γ, V] float16; topk: [γ, K] float16; tokens: None
    q_ids: Optional[np.ndarray] = None  # topk: [γ, K] int64; otherwise None

    @property
    def gamma(self) -> int:
        return int(self.token_ids.shape[0])


# ---------------------------------------------------------------- packing (drafter side)


def quantize_fp16(probs: np.ndarray) -> np.ndarray:
    """Probabilities as the little-endian fp16 the wire carries (sample from these, renormalised)."""
    return np.ascontiguousarray(probs, dtype=_FP16_LE)


def _local(field: str, message: str) -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.BAD_DRAFT, message, field=field)


def pack_full_q(q_probs: np.ndarray) -> pb.FullQ:
    """Full q [γ, V] as γ·V fp16 values."""
    q_probs = np.asarray(q_probs)
    if q_probs.ndim != 2:
        raise _local("draft.full.probs_fp16", f"full q must be 2-D [γ, V], got shape {q_probs.shape}")
    return pb.FullQ(vocab_size=q_probs.shape[1], probs_fp16=quantize_fp16(q_probs).tobytes())


def pack_topk_q(q_ids: np.ndarray, q_probs: np.ndarray) -> pb.TopKQ:
    """Top-K q: ids [γ, K] and probs [γ, K] of the renormalised top-K each token was sampled from."""
    q_ids, q_probs = np.asarray(q_ids), np.asarray(q_probs)
    if q_ids.ndim != 2 or q_ids.shape != q_probs.shape:
        raise _local("draft.top_k.ids", f"top-K ids and probs must both be [γ, K], got {q_ids.shape} and {q_probs.shape}")
    return pb.TopKQ(k=q_ids.shape[1], ids=q_ids.reshape(-1).tolist(), probs_fp16=quantize_fp16(q_probs).tobytes())


def pack_q(q_mode: str, q_probs: Optional[np.ndarray] = None, q_ids: Optional[np.ndarray] = None) -> QMessage:
    """The q message for a mode: "full" (q_probs [γ, V]), "topk" (q_ids and q_probs [γ, K]) or "tokens"."""
    if q_mode == "full":
        return pack_full_q(q_probs)
    if q_mode == "topk":
        return pack_topk_q(q_ids, q_probs)
    if q_mode == "tokens":
        return pb.TokensOnlyQ()
    raise _local("draft.q", f"q mode must be one of {Q_MODES}, got {q_mode!r}")


def _q_rows(q: QMessage) -> Optional[int]:
    if isinstance(q, pb.FullQ):
        return len(q.probs_fp16) // (2 * q.vocab_size) if q.vocab_size else 0
    if isinstance(q, pb.TopKQ):
        return len(q.ids) // q.k if q.k else 0
    return None


def pack_draft(session_id: int, position: int, token_ids, q: QMessage) -> pb.Draft:
    """A `Draft` message: the γ drafted tokens extending the transcript at `position`, and their q."""
    draft = pb.Draft(session_id=session_id, position=position, token_ids=np.asarray(token_ids, dtype=np.int64).tolist())
    rows = _q_rows(q)
    if rows is not None and rows != len(draft.token_ids):
        raise _local("draft.q", f"q has {rows} rows for {len(draft.token_ids)} drafted tokens")
    field = {pb.FullQ: "full", pb.TopKQ: "top_k", pb.TokensOnlyQ: "tokens_only"}[type(q)]
    getattr(draft, field).CopyFrom(q)
    return draft


# ---------------------------------------------------------------- unpacking (verifier side)


def _bad(field: str, message: str, session_id: int, code: ErrorCode = ErrorCode.BAD_DRAFT) -> ProtocolError:
    return ProtocolError(code, message, session_id=session_id, field=field)


def _fp16_rows(data: bytes, rows: int, cols: int, field: str, session_id: int) -> np.ndarray:
    expected_bytes = rows * cols * _FP16_LE.itemsize
    if len(data) != expected_bytes:
        raise _bad(field, f"expected {rows}×{cols} fp16 values ({expected_bytes} bytes), got {len(data)} bytes", session_id)
    return np.frombuffer(data, dtype=_FP16_LE).reshape(rows, cols)


def _unpack_full(q: pb.FullQ, gamma: int, vocab_size: Optional[int], sid: int) -> np.ndarray:
    if q.vocab_size == 0:
        raise _bad("draft.full.vocab_size", "must be > 0", sid)
    if vocab_size is not None and q.vocab_size != vocab_size:
        raise _bad("draft.full.vocab_size", f"is {q.vocab_size}, the target's vocabulary has {vocab_size}", sid)
    return _fp16_rows(q.probs_fp16, gamma, q.vocab_size, "draft.full.probs_fp16", sid)


def _unpack_topk(q: pb.TopKQ, gamma: int, vocab_size: Optional[int], max_top_k: Optional[int], sid: int) -> tuple[np.ndarray, np.ndarray]:
    k = q.k
    if k == 0:
        raise _bad("draft.top_k.k", "K must be >= 1", sid)
    if max_top_k is not None and k > max_top_k:
        raise _bad("draft.top_k.k", f"K = {k} is over the limit of {max_top_k}", sid, ErrorCode.LIMITS)
    if vocab_size is not None and k > vocab_size:
        raise _bad("draft.top_k.k", f"K = {k} is larger than the vocabulary ({vocab_size})", sid)
    if len(q.ids) != gamma * k:
        raise _bad("draft.top_k.ids", f"expected γ·K = {gamma}×{k} = {gamma * k} ids, got {len(q.ids)}", sid)
    ids = np.fromiter(q.ids, dtype=np.int64, count=gamma * k).reshape(gamma, k)
    return ids, _fp16_rows(q.probs_fp16, gamma, k, "draft.top_k.probs_fp16", sid)


def unpack_draft(
    draft: pb.Draft,
    *,
    vocab_size: Optional[int] = None,
    max_gamma: Optional[int] = None,
    max_top_k: Optional[int] = None,
) -> DraftBlock:
    """The block a `Draft` carries, with its shapes checked; raises `ProtocolError` naming the field.

    fp16 arrays are read-only views of the message's bytes (copy before handing them to torch).
    """
    sid, gamma = draft.session_id, len(draft.token_ids)
    if max_gamma is not None and gamma > max_gamma:
        raise _bad("draft.token_ids", f"γ = {gamma} is over the limit of {max_gamma}", sid, ErrorCode.LIMITS)
    token_ids = np.fromiter(draft.token_ids, dtype=np.int64, count=gamma)
    which = draft.WhichOneof("q")
    if which is None:
        if gamma:
            raise _bad("draft.q", f"no q encoding set for {gamma} drafted tokens (use tokens_only for none)", sid)
        return DraftBlock(token_ids)
    mode = _Q_FIELD[which]
    if mode == "full":
        return DraftBlock(token_ids, mode, q_probs=_unpack_full(draft.full, gamma, vocab_size, sid))
    if mode == "topk":
        ids, probs = _unpack_topk(draft.top_k, gamma, vocab_size, max_top_k, sid)
        return DraftBlock(token_ids, mode, q_probs=probs, q_ids=ids)
    return DraftBlock(token_ids)
