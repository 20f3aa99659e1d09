"""Lossless verification of a ragged batch of draft blocks: accepted count and next token (recovered or bonus) per sequence.

Layout (no padding on the target side): B sequences, sequence i drafted γ_i >= 0 tokens.
- `DraftBatch.token_ids`  [N] with N = Σ γ_i, sequence i at [cu[i], cu[i+1]);
- `DraftBatch.cu_gammas`  [B+1] cumulative draft lengths, cu[0] = 0;
- target logits           [N + B, V]: for sequence i the γ_i + 1 rows starting at cu[i] + i are the
                          target's predictions for draft positions 1..γ_i and the bonus position.

Rules (DESIGN §3), with u ~ U(0, 1) per position:
- greedy (temperature 0): accept while x == argmax p; emit argmax p at the stop.
- full q / top-K q / tokens only: accept x while u·q(x) < p(x) (i.e. u < min(1, p/q)); at the first
  rejection emit a recovered token from norm(max(0, p − q)); if all γ_i are accepted emit a bonus token
  from p. Top-K q is the renormalised top-K the drafter sampled from (exact q, zero elsewhere); tokens-only
  q is one-hot at x, so the residual is p with x removed.
Every q is validated first (`validate_draft`): a bad drafter gets a `DraftError` naming the field, and
can only lower acceptance, never change the output distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from edgespec.models.device import upload
from edgespec.spec.sampling import SamplingParams, greedy_tokens, probs_from_logits, sample, uniform

__all__ = ["QMode", "DraftBatch", "DraftLimits", "DraftError", "VerifyResult", "validate_draft", "verify", "verify_validated",
           "verify_probs", "verify_greedy"]

QMode = Literal["full", "topk", "tokens"]
Q_MODES: tuple[str, ...] = ("full", "topk", "tokens")


class DraftError(ValueError):
    """A drafter's input is malformed; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"invalid draft: {field}: {message}")
        self.field = field


@dataclass(frozen=True)
class DraftLimits:
    """What a verifier accepts from a drafter: longest block, largest top-K, tolerance on Σq = 1."""

    max_gamma: int = 32
    max_top_k: int = 1024
    prob_atol: float = 1e-3


@dataclass(frozen=True)
class DraftBatch:
    """Ragged draft blocks of B sequences and their draft distribution q in one of three encodings."""

    token_ids: torch.Tensor  # [N] int64
    cu_gammas: torch.Tensor  # [B+1] int64
    q_mode: str = "tokens"  # "full" | "topk" | "tokens"
    q_probs: Optional[torch.Tensor] = None  # full: [N, V]; topk: [N, K]; tokens: None
    q_ids: Optional[torch.Tensor] = None  # topk: [N, K] int64; otherwise None

    @property
    def batch_size(self) -> int:
        return self.cu_gammas.numel() - 1

    @property
    def gammas(self) -> torch.Tensor:  # [B]
        return self.cu_gammas[1:] - self.cu_gammas[:-1]

    @staticmethod
    def from_blocks(blocks: list[list[int]], q_mode: str = "tokens", q_probs=None, q_ids=None) -> "DraftBatch":
        """Build the flat layout from per-sequence token lists (q tensors already flat, [N, ...])."""
        lengths = torch.tensor([0] + [len(b) for b in blocks], dtype=torch.long)
        ids = torch.tensor([t for b in blocks for t in b], dtype=torch.long)
        return DraftBatch(ids, torch.cumsum(lengths, 0), q_mode, q_probs, q_ids)


@dataclass(frozen=True)
class VerifyResult:
    """Per sequence: accepted draft tokens and the next token (bonus if all were accepted, else recovered)."""

    num_accepted: torch.Tensor  # [B] int64
    next_tokens: torch.Tensor  # [B] int64
    is_bonus: torch.Tensor  # [B] bool


# ---------------------------------------------------------------- validation


def _check_probs(field: str, probs: torch.Tensor, atol: float) -> None:
    if not probs.is_floating_point():
        raise DraftError(field, f"must be floating point, got {probs.dtype}")
    if probs.numel() == 0:
        return
    sums = probs.double().sum(dim=-1)
    # one transfer for the three checks (one sync when q lives on a GPU)
    nonfinite, negative, worst = torch.stack([(~torch.isfinite(probs)).any().double(), (probs < 0).any().double(),
                                              (sums - 1.0).abs().max()]).tolist()
    if nonfinite:
        raise DraftError(field, "contains NaN or infinite values")
    if negative:
        raise DraftError(field, "contains negative probabilities")
    if worst > atol:
        raise DraftError(field, f"rows must sum to 1 (±{atol}); worst row is off by {worst:.3g}")


def _check_layout(draft: DraftBatch, vocab_size: int, limits: DraftLimits) -> None:
    ids, cu = draft.token_ids, draft.cu_gammas
    if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
        raise DraftError("token_ids", f"must be a 1-D integer tensor, got {tuple(ids.shape)} {ids.dtype}")
    if cu.dim() != 1 or cu.numel() < 2 or cu.dtype not in (torch.int64, torch.int32):
        raise DraftError("cu_gammas", "must be a 1-D integer tensor of B+1 cumulative counts (B >= 1)")
    bounds = cu.tolist()  # B + 1 counts: checked on the host (one transfer, no per-check tensor ops)
    if bounds[0] != 0 or bounds[-1] != ids.numel():
        raise DraftError("cu_gammas", f"must start at 0 and end at len(token_ids) = {ids.numel()}")
    gammas = [b - a for a, b in zip(bounds, bounds[1:])]
    if min(gammas) < 0:
        raise DraftError("cu_gammas", "must be non-decreasing (a draft length is negative)")
    if max(gammas) > limits.max_gamma:
        raise DraftError("gamma", f"draft length {max(gammas)} exceeds the limit {limits.max_gamma}")
    if ids.numel():
        lo, hi = _min_max(ids)
        if lo < 0 or hi >= vocab_size:
            raise DraftError("token_ids", f"ids must be in [0, {vocab_size})")


def _min_max(values: torch.Tensor) -> tuple[int, int]:
    """(min, max) of a non-empty integer tensor: on the host for a few values (a draft block), by one reduction for many."""
    if values.numel() <= 256:
        flat = values.flatten().tolist()
        return min(flat), max(flat)
    lo, hi = torch.aminmax(values)
    return int(lo.item()), int(hi.item())


def _check_full_q(draft: DraftBatch, vocab_size: int, limits: DraftLimits) -> None:
    q = draft.q_probs
    n = draft.token_ids.numel()
    if q is None or tuple(q.shape) != (n, vocab_size):
        raise DraftError("q_probs", f"full q must have shape [{n}, {vocab_size}], got {None if q is None else tuple(q.shape)}")
    _check_probs("q_probs", q, limits.prob_atol)
    if n and (q[torch.arange(n, device=q.device), draft.token_ids.long().to(q.device)] <= 0).any():
        raise DraftError("q_probs", "q gives zero probability to a drafted token (it cannot have been sampled from q)")


def _check_topk_q(draft: DraftBatch, vocab_size: int, limits: DraftLimits) -> None:
    ids, probs, n = draft.q_ids, draft.q_probs, draft.token_ids.numel()
    if ids is None or probs is None or ids.dim() != 2 or tuple(probs.shape) != tuple(ids.shape) or ids.shape[0] != n:
        raise DraftError("q_ids", f"top-K q needs q_ids and q_probs of equal shape [{n}, K]")
    k = ids.shape[1]
    if not 1 <= k <= limits.max_top_k:
        raise DraftError("top_k", f"K = {k} must be in [1, {limits.max_top_k}]")
    if ids.dtype not in (torch.int64, torch.int32):
        raise DraftError("q_ids", f"must be integers, got {ids.dtype}")
    if n:
        lo, hi = _min_max(ids)
        if lo < 0 or hi >= vocab_size:
            raise DraftError("q_ids", f"ids must be in [0, {vocab_size})")
    if n and k > 1:
        srt = ids.sort(dim=-1).values
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise DraftError("q_ids", "duplicate ids within a top-K row")
    _check_probs("q_probs", probs, limits.prob_atol)
    if n:
        q_at_x = (probs * (ids == draft.token_ids.view(-1, 1)).to(probs.dtype)).sum(-1)
        if (q_at_x <= 0).any():
            raise DraftError("token_ids", "a drafted token is not among its top-K ids with positive probability")


def validate_draft(draft: DraftBatch, vocab_size: int, limits: DraftLimits = DraftLimits()) -> None:
    """Raise `DraftError` (a ValueError) naming the field if the draft batch is malformed."""
    if draft.q_mode not in Q_MODES:
        raise DraftError("q_mode", f"must be one of {Q_MODES}, got {draft.q_mode!r}")
    _check_layout(draft, vocab_size, limits)
    if draft.q_mode == "full":
        _check_full_q(draft, vocab_size, limits)
    elif draft.q_mode == "topk":
        _check_topk_q(draft, vocab_size, limits)
    elif draft.q_probs is not None or draft.q_ids is not None:
        raise DraftError("q_probs", "tokens-only drafts carry no q")


# ---------------------------------------------------------------- verification


def _index(draft: DraftBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """seq_of [N] (sequence of each draft token), pos [N] (its position in the block), target_row [N]."""
    gammas = draft.gammas.long()
    n, dev = draft.token_ids.numel(), draft.token_ids.device
    seq_of = torch.repeat_interleave(torch.arange(draft.batch_size, device=dev), gammas, output_size=n)  # no sync for the size
    pos = torch.arange(n, device=dev) - draft.cu_gammas.long()[seq_of]
    return seq_of, pos, torch.arange(n, device=dev) + seq_of


def _num_accepted(accept: torch.Tensor, draft: DraftBatch, seq_of: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Length of the accepted prefix of each block: the position of the first rejection, else γ_i. -> [B]."""
    gammas = draft.gammas.long()
    reject_pos = torch.where(accept, gammas[seq_of], pos)
    return gammas.clone().scatter_reduce(0, seq_of, reject_pos, reduce="amin", include_self=True)


def _dense_q(draft: DraftBatch, rows: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """q at the given flat draft rows as dense [R, V] float32 (renormalised)."""
    x = draft.token_ids.long()[rows]
    if draft.q_mode == "full":
        q = draft.q_probs[rows].float()
    elif draft.q_mode == "topk":
        q = torch.zeros(rows.numel(), vocab_size, device=rows.device).scatter_(1, draft.q_ids[rows].long(), draft.q_probs[rows].float())
    else:
        return torch.nn.functional.one_hot(x, vocab_size).float()
    return q / q.sum(dim=-1, keepdim=True)


def _q_at_tokens(draft: DraftBatch) -> torch.Tensor:
    """q(x) for every drafted token x, renormalised as `_dense_q` does. -> [N] float32."""
    x = draft.token_ids.long()
    if draft.q_mode == "tokens":
        return torch.ones(x.numel(), device=x.device)
    probs = draft.q_probs.float()
    total = probs.sum(-1)
    if draft.q_mode == "full":
        return probs[torch.arange(x.numel(), device=x.device), x] / total
    return (probs * (draft.q_ids.long() == x.view(-1, 1))).sum(-1) / total


def _to_device(draft: DraftBatch, device: torch.device) -> DraftBatch:
    if draft.token_ids.device == device:
        return draft
    move = lambda t: None if t is None else upload(t, device) if t.device.type == "cpu" else t.to(device)  # noqa: E731
    return DraftBatch(move(draft.token_ids), move(draft.cu_gammas), draft.q_mode, move(draft.q_probs), move(draft.q_ids))


def verify_probs(target_probs: torch.Tensor, draft: DraftBatch, generator: torch.Generator) -> VerifyResult:
    """Stochastic verification against target probabilities p [N + B, V] (already validated draft)."""
    draft = _to_device(draft, target_probs.device)
    seq_of, pos, target_row = _index(draft)
    bsz, vocab = draft.batch_size, target_probs.shape[-1]
    x = draft.token_ids.long()
    # 1. accept/reject every drafted position at once: u·q(x) < p(x)
    u = uniform(x.numel(), generator, x.device)
    p_x = target_probs[target_row, x].double()
    accept = u * _q_at_tokens(draft).double() < p_x
    n_acc = _num_accepted(accept, draft, seq_of, pos)
    # 2. distribution of the next token: residual at the first rejection, p itself for the bonus
    cu = draft.cu_gammas.long()
    is_bonus = n_acc == draft.gammas.long()
    p_next = target_probs[cu[:-1] + torch.arange(bsz, device=cu.device) + n_acc].float()  # [B, V]
    dist = p_next
    if x.numel():  # every row's residual at its stop, computed for all rows (no host branch on the verdict)
        stop = (cu[:-1] + n_acc).clamp_max(x.numel() - 1)  # a bonus row's stop is past its block: clamped, unused
        residual = (p_next - _dense_q(draft, stop, vocab)).clamp_min(0)
        mass = residual.sum(-1, keepdim=True)
        # p == q exactly leaves no residual; then a rejection has probability 0 and p is the right fallback
        recovered = torch.where(mass > 1e-12, residual / mass.clamp_min(1e-30), p_next)
        dist = torch.where(is_bonus[:, None], p_next, recovered)
    # 3. one draw per sequence
    next_tokens = sample(dist, generator)
    return VerifyResult(n_acc, next_tokens, is_bonus)


def verify_greedy(target_logits: torch.Tensor, draft: DraftBatch) -> VerifyResult:
    """Greedy verification: accept while x == argmax p; the next token is argmax p at the stop."""
    draft = _to_device(draft, target_logits.device)
    seq_of, pos, target_row = _index(draft)
    best = greedy_tokens(target_logits)  # [N + B]
    accept = draft.token_ids.long() == best[target_row]
    n_acc = _num_accepted(accept, draft, seq_of, pos)
    rows = draft.cu_gammas.long()[:-1] + torch.arange(draft.batch_size, device=n_acc.device) + n_acc
    return VerifyResult(n_acc, best[rows], n_acc == draft.gammas.long())


def verify(
    target_logits: torch.Tensor,
    draft: DraftBatch,
    params: SamplingParams,
    generator: Optional[torch.Generator] = None,
    limits: DraftLimits = DraftLimits(),
) -> VerifyResult:
    """Validate a ragged draft batch and verify it against target logits [N + B, V] under `params`.

    `generator` is required unless `params` is greedy. Raises `DraftError` for malformed drafts.
    """
    validate_draft(draft, target_logits.shape[-1], limits)
    return verify_validated(target_logits, draft, params, generator)


def verify_validated(
    target_logits: torch.Tensor, draft: DraftBatch, params: SamplingParams, generator: Optional[torch.Generator] = None,
) -> VerifyResult:
    """`verify` of a draft batch that `validate_draft` already accepted (e.g. before the target forward was launched)."""
    expected = draft.token_ids.numel() + draft.batch_size
    if target_logits.dim() != 2 or target_logits.shape[0] != expected:
        raise ValueError(f"target_logits must have shape [{expected}, V] (γ_i + 1 rows per sequence), got {tuple(target_logits.shape)}")
    if params.greedy:
        return verify_greedy(target_logits, draft)
    if generator is None:
        raise ValueError("a torch.Generator is required for non-greedy verification")
    return verify_probs(probs_from_logits(target_logits, params), draft, generator)
