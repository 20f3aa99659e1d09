"""Draft intake: turn a received draft block (numpy, shapes checked) into a validated one-row `DraftBatch`, or a BAD_DRAFT protocol error naming the wire field."""

from __future__ import annotations

import numpy as np
import torch

from edgespec.protocol import DraftBlock, ErrorCode, ErrorEffect, ProtocolError
from edgespec.spec.verify import DraftBatch, DraftError, DraftLimits, validate_draft

__all__ = ["draft_batch_from_block", "checked_draft"]

# DraftError fields (edgespec.spec.verify) -> the wire fields of edgespec.proto, per q mode
_WIRE_FIELD = {
    ("full", "q_probs"): "draft.full.probs_fp16",
    ("topk", "q_probs"): "draft.top_k.probs_fp16",
    ("topk", "q_ids"): "draft.top_k.ids",
    ("topk", "top_k"): "draft.top_k.k",
}


_ONE_BLOCK_CU: dict[int, torch.Tensor] = {}  # γ -> cu_gammas [0, γ] of a one-row batch (read-only, shared by every draft of that γ)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor owning its data: wire fp16 arrays are read-only views of the message and are copied; arrays the
    unpacking built (ids) are taken as they are."""
    owned = array.flags.owndata and array.flags.writeable
    return torch.from_numpy(array if owned else np.array(array, copy=True))


def _one_block_cu(gamma: int) -> torch.Tensor:
    cu = _ONE_BLOCK_CU.get(gamma)
    if cu is None:
        cu = _ONE_BLOCK_CU[gamma] = torch.tensor([0, gamma], dtype=torch.long)
    return cu


def draft_batch_from_block(block: DraftBlock) -> DraftBatch:
    """The one-row `DraftBatch` of a received block (q stays fp16; verification renormalises it)."""
    q_probs = None if block.q_probs is None else _tensor(block.q_probs)
    q_ids = None if block.q_ids is None else _tensor(block.q_ids)
    return DraftBatch(_tensor(block.token_ids), _one_block_cu(block.gamma), block.q_mode, q_probs, q_ids)


def checked_draft(block: DraftBlock, session_id: int, vocab_size: int, limits: DraftLimits) -> DraftBatch:
    """The block as a validated `DraftBatch`; raises `ProtocolError(BAD_DRAFT, effect=DRAFT_REJECTED)` naming the field."""
    draft = draft_batch_from_block(block)
    try:
        validate_draft(draft, vocab_size, limits)
    except DraftError as exc:
        field = _WIRE_FIELD.get((block.q_mode, exc.field), "draft.token_ids" if exc.field in ("token_ids", "gamma") else f"draft.{exc.field}")
        message = str(exc).removeprefix("invalid draft: ").removeprefix(f"{exc.field}: ")
        raise ProtocolError(ErrorCode.BAD_DRAFT, message, session_id=session_id, field=field, effect=ErrorEffect.DRAFT_REJECTED) from None
    return draft
