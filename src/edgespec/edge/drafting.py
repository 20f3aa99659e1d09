"""One batched draft pass over many sessions' rows, with q exactly as the wire carries it (fp16, sampled after quantising).

Like `edgespec.models.decoder.draft_blocks`, but each block's q is what the verifier will reconstruct:
full and top-K probabilities are quantised to fp16 first and the token is sampled from those values
(renormalised), so the q on the wire *is* the distribution the token came from (DESIGN §3; a token whose
fp32 probability underflows fp16 can never be drafted). Temperature 0 drafts the argmax and sends
tokens only. Each drafted token also reports its confidence q(x) (SLED's stopping rule). Seeded sessions
(`draft_rows_coupled`) draft by Gumbel-max with their position-keyed noise and send tokens only
(`edgespec.spec.coupling`: their verification needs no q).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from edgespec.models.coupled import CoupledDraw
from edgespec.models.decoder import DraftRows, draft_loop, sync_row
from edgespec.models.runtime import CausalLM, RaggedKV
from edgespec.protocol import pack_q
from edgespec.protocol.drafts import QMessage
from edgespec.spec.sampling import SamplingParams, greedy_tokens, probs_from_logits, sample, sparsify_topk

__all__ = ["DraftedBlock", "sync_row", "draft_rows", "draft_rows_coupled"]


@dataclass(frozen=True)
class DraftedBlock:
    """γ drafted tokens of one session, their q as sent on the wire and the draft's confidence q(x) per token."""

    tokens: tuple[int, ...]
    q_mode: str = "tokens"  # "full" | "topk" | "tokens"
    q_probs: Optional[np.ndarray] = None  # full [γ, V] | topk [γ, K], float16 wire values
    q_ids: Optional[np.ndarray] = None  # topk [γ, K] int64
    confidence: tuple[float, ...] = field(default=())

    @property
    def gamma(self) -> int:
        return len(self.tokens)

    def truncate(self, gamma: int) -> "DraftedBlock":
        """The first `gamma` tokens (a prefix of a block with its q rows is still a valid block)."""
        if gamma >= self.gamma:
            return self
        cut = lambda a: None if a is None else a[:gamma]  # noqa: E731
        return DraftedBlock(self.tokens[:gamma], self.q_mode, cut(self.q_probs), cut(self.q_ids), self.confidence[:gamma])

    def q_message(self) -> QMessage:
        """The q of this block as a protocol message (tokens only for an empty block)."""
        if self.gamma == 0 or self.q_mode == "tokens":
            return pack_q("tokens")
        return pack_q(self.q_mode, self.q_probs, self.q_ids)


def _draw(logits: torch.Tensor, params: SamplingParams, q_mode: str, top_k: int, gen: torch.Generator):
    """One token per row of logits [R, V] -> tokens [R], wire q rows (or None), q ids (or None), confidence q(x) [R]."""
    if params.greedy:
        probs = torch.softmax(logits.float(), dim=-1)
        tokens = greedy_tokens(logits)
        return tokens, None, None, probs.gather(1, tokens[:, None]).squeeze(1)
    probs = probs_from_logits(logits, params)  # [R, V] float32
    if q_mode == "full":
        wire = probs.to(torch.float16)
        weights = wire.float()
        tokens = sample(weights, gen)
        conf = weights.gather(1, tokens[:, None]).squeeze(1) / weights.sum(-1)
        return tokens, wire, None, conf
    if q_mode == "topk":
        ids, kept = sparsify_topk(probs, top_k)  # [R, K]
        wire = kept.to(torch.float16)
        weights = wire.float()
        choice = sample(weights, gen)  # [R] index into K
        conf = weights.gather(1, choice[:, None]).squeeze(1) / weights.sum(-1)
        return ids.gather(1, choice[:, None]).squeeze(1), wire, ids, conf
    tokens = sample(probs, gen)
    return tokens, None, None, probs.gather(1, tokens[:, None]).squeeze(1)


def draft_rows(
    lm: CausalLM,
    kv: RaggedKV,
    transcripts: Sequence[Optional[Sequence[int]]],
    gammas: Sequence[int],
    params: SamplingParams,
    q_mode: str,
    top_k: int,
    gen: torch.Generator,
) -> list[Optional[DraftedBlock]]:
    """Draft γ_b tokens extending `transcripts[b]` for every row b of `kv` (γ_b = 0: row untouched, None returned).

    One batched draft forward per step; q_mode is forced to "tokens" at temperature 0.
    """
    q_mode = "tokens" if params.greedy else q_mode
    _check_rows(kv, transcripts, gammas)
    drafted = draft_loop(lm, kv, transcripts, gammas, lambda logits: _draw(logits, params, q_mode, top_k, gen))
    return _blocks(drafted, gammas, q_mode)


def draft_rows_coupled(
    lm: CausalLM,
    kv: RaggedKV,
    transcripts: Sequence[Optional[Sequence[int]]],
    gammas: Sequence[int],
    params: SamplingParams,
    seeds: Sequence[int],
) -> list[Optional[DraftedBlock]]:
    """Like `draft_rows` for seeded sessions: row b's token at transcript position j is argmax (log q + G_{seeds[b], j});
    blocks carry tokens only."""
    _check_rows(kv, transcripts, gammas)
    starts = [len(t) if t is not None else 0 for t in transcripts]
    drafted = draft_loop(lm, kv, transcripts, gammas, CoupledDraw(params, seeds, starts, gammas))
    return _blocks(drafted, gammas, "tokens")


def _check_rows(kv: RaggedKV, transcripts: Sequence, gammas: Sequence[int]) -> None:
    if len(transcripts) != kv.batch_size or len(gammas) != kv.batch_size:
        raise ValueError(f"need a transcript and a γ for each of the {kv.batch_size} rows")


def _blocks(drafted: DraftRows, gammas: Sequence[int], q_mode: str) -> list[Optional[DraftedBlock]]:
    """One `DraftedBlock` per row with γ > 0 (None for the others), q as numpy wire arrays."""
    out: list[Optional[DraftedBlock]] = []
    for b, gamma in enumerate(gammas):
        if gamma <= 0:
            out.append(None)
            continue
        q_probs = torch.stack(drafted.q_rows[b]).cpu().numpy() if drafted.q_rows[b] else None
        q_ids = torch.stack(drafted.id_rows[b]).cpu().numpy().astype(np.int64) if drafted.id_rows[b] else None
        out.append(DraftedBlock(tuple(drafted.tokens[b]), q_mode, q_probs, q_ids, tuple(drafted.confidence[b])))
    return out
