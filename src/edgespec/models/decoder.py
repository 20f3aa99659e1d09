"""In-process decoding over `CausalLM`s: autoregressive (AD) and speculative (SD) generation for a batch of prompts.

SD round for every unfinished sequence (ragged: each has its own γ, 0 allowed):
  1. sync: crop each model's cache to the transcript minus its last token; the rest is pending;
  2. draft γ_i tokens with the draft model (pending tokens first), keeping q in the chosen encoding;
  3. verify all blocks in one target forward over Σ(pending_i + γ_i) tokens (`edgespec.spec.verify`);
  4. append accepted + 1 tokens (recovered or bonus), stopping at EOS or the token budget.
The transcript is the truth; both caches are rebuilt lazily from it, so they only ever get cropped.
With `GenerationConfig.coupled` (seeded sampling, `edgespec.spec.coupling`) AD draws by Gumbel-max with each
sequence's position-keyed noise, SD drafts and verifies with the same noise, and both emit the same tokens.

On a GPU the host waits for the device once per draft step (the drafted tokens feed the next step)
and once per round (the verdict); everything else is queued without waiting: the draft is validated
before the target forward is launched, and verification runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch

from edgespec.models.coupled import CoupledDraw
from edgespec.models.runtime import CausalLM, RaggedKV, check_same_tokenizer
from edgespec.spec.coupling import block_noise, coupled_tokens, noise_rows, verify_coupled
from edgespec.spec.sampling import SamplingParams, greedy_tokens, probs_from_logits, sample, sparsify_topk
from edgespec.spec.verify import DraftBatch, DraftLimits, validate_draft, verify_validated

__all__ = ["GenerationConfig", "GenerationResult", "generate_ad", "generate_sd", "draft_blocks", "draft_blocks_coupled", "DraftOutput", "RoundHook"]


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: token budget, sampling settings (define p), and SD's γ and q encoding."""

    max_new_tokens: int = 64
    sampling: SamplingParams = SamplingParams(temperature=0.0)
    gamma: int = 4
    q_mode: str = "full"  # "full" | "topk" | "tokens" (greedy sampling always sends tokens only)
    q_top_k: int = 8
    seed: int = 0
    stop_at_eos: bool = True
    coupled: bool = False  # seeded sampling: Gumbel-max coupling keyed by (seed, position); AD and SD emit the same tokens

    @property
    def is_coupled(self) -> bool:
        """Coupled sampling applies (temperature 0 is greedy whatever the seed)."""
        return self.coupled and not self.sampling.greedy

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.gamma <= DraftLimits().max_gamma:
            raise ValueError(f"gamma must be in [0, {DraftLimits().max_gamma}], got {self.gamma}")
        if self.q_mode not in ("full", "topk", "tokens"):
            raise ValueError(f"q_mode must be full, topk or tokens, got {self.q_mode!r}")
        if self.q_top_k < 1:
            raise ValueError(f"q_top_k must be >= 1, got {self.q_top_k}")


@dataclass
class GenerationResult:
    """One sequence's output and counters; `accepted_per_position[j]` counts rounds that accepted draft position j+1."""

    mode: str
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    num_rounds: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    drafted_per_position: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    ttft_s: float = 0.0
    finished_by: str = "length"  # "length" | "eos"

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(acceptance_rate=self.acceptance_rate, tokens_per_s=self.tokens_per_s)
        return out


@dataclass
class DraftOutput:
    """Blocks drafted for B rows and their q in the flat layout of `DraftBatch`."""

    blocks: list[list[int]]
    q_mode: str
    q_probs: Optional[torch.Tensor] = None  # full [N, V] | topk [N, K]
    q_ids: Optional[torch.Tensor] = None  # topk [N, K]
    max_probs: list[list[float]] = field(default_factory=list)  # draft confidence per drafted token

    def batch(self, rows: Optional[Sequence[int]] = None) -> DraftBatch:
        """The draft batch over `rows` (default: rows with a block or all rows, in order)."""
        rows = list(range(len(self.blocks))) if rows is None else list(rows)
        return DraftBatch.from_blocks([self.blocks[r] for r in rows], self.q_mode, self.q_probs, self.q_ids)


# ---------------------------------------------------------------- helpers


def sync_row(lm: CausalLM, kv: RaggedKV, row: int, transcript: Sequence[int]) -> list[int]:
    """Crop `row` to at most len(transcript) − 1 tokens; return the tokens to feed (those the cache lacks).

    Valid because a row only ever holds a prefix of the transcript followed by drafted tokens, and the
    drafted tokens that survive verification are exactly the next transcript tokens.
    """
    keep = min(kv.length(row), len(transcript) - 1)
    lm.crop(kv, row, keep)
    return list(transcript[keep:])


def _draw(logits: torch.Tensor, params: SamplingParams, q_mode: str, top_k: int, gen: torch.Generator):
    """Sample one draft token per row of logits [R, V]; returns tokens [R], q rows, q ids, max prob [R]."""
    if params.greedy:
        probs = torch.softmax(logits, dim=-1)
        return greedy_tokens(logits), None, None, probs.max(-1).values
    probs = probs_from_logits(logits, params)
    if q_mode == "topk":
        ids, kept = sparsify_topk(probs, top_k)
        choice = sample(kept, gen).unsqueeze(1)  # [R, 1]
        return ids.gather(1, choice).squeeze(1), kept, ids, kept.max(-1).values
    tokens = sample(probs, gen)
    return tokens, (probs if q_mode == "full" else None), None, probs.max(-1).values


@dataclass
class DraftRows:
    """Per-row output of `draft_loop`: drafted tokens, confidence, and q rows / q ids as the draw produced them."""

    tokens: list[list[int]]
    confidence: list[list[float]]
    q_rows: list[list[torch.Tensor]]
    id_rows: list[list[torch.Tensor]]


RoundHook = Callable[[int, int, int], None]  # (sequence index, γ drafted this round, accepted)
Draw = Callable[[torch.Tensor], tuple]  # logits [R, V] -> (tokens [R], q [R, ·] | None, q ids [R, K] | None, confidence [R])


def draft_loop(draft: CausalLM, kv: RaggedKV, transcripts: Sequence, gammas: Sequence[int], draw: Draw) -> DraftRows:
    """Draft γ_b tokens extending transcripts[b] for every row b (γ_b = 0 leaves the row alone); one batched draft forward per step."""
    rows = len(gammas)
    out = DraftRows([[] for _ in range(rows)], [[] for _ in range(rows)], [[] for _ in range(rows)], [[] for _ in range(rows)])
    feeds = [sync_row(draft, kv, b, transcripts[b]) if gammas[b] > 0 else [] for b in range(rows)]
    for step in range(max(gammas, default=0)):
        live = [b for b in range(rows) if gammas[b] > step]
        logits = draft.forward(kv, feeds, [1 if gammas[b] > step else 0 for b in range(rows)])  # [len(live), V]
        tokens, q, qi, top = draw(logits)
        host_tokens, host_top = torch.stack([tokens.double(), top.double()]).tolist()  # one transfer per step
        feeds = [[] for _ in range(rows)]
        for j, b in enumerate(live):
            tok = int(host_tokens[j])
            out.tokens[b].append(tok)
            out.confidence[b].append(host_top[j])
            if q is not None:
                out.q_rows[b].append(q[j])
            if qi is not None:
                out.id_rows[b].append(qi[j])
            if gammas[b] > step + 1:
                feeds[b] = [tok]
    return out


def draft_blocks(
    draft: CausalLM,
    kv: RaggedKV,
    transcripts: Sequence[list[int]],
    gammas: Sequence[int],
    params: SamplingParams,
    q_mode: str,
    q_top_k: int,
    gen: torch.Generator,
) -> DraftOutput:
    """Draft γ_b tokens for every row b (γ_b = 0 skips the row), with q in the flat layout of `DraftBatch`."""
    q_mode = "tokens" if params.greedy else q_mode
    rows = draft_loop(draft, kv, transcripts, gammas, lambda logits: _draw(logits, params, q_mode, q_top_k, gen))
    flat_q = [t for row in rows.q_rows for t in row]
    flat_ids = [t for row in rows.id_rows for t in row]
    width = draft.vocab_size if q_mode == "full" else min(q_top_k, draft.vocab_size)
    q_probs = torch.stack(flat_q) if flat_q else (None if q_mode == "tokens" else torch.zeros(0, width))
    q_ids = torch.stack(flat_ids) if flat_ids else (torch.zeros(0, width, dtype=torch.long) if q_mode == "topk" else None)
    return DraftOutput(rows.tokens, q_mode, q_probs, q_ids, rows.confidence)


def _finish(result: GenerationResult, emitted: list[int], cfg: GenerationConfig, eos: Optional[int]) -> bool:
    """Append emitted tokens up to the budget and EOS; True when the sequence is finished."""
    for tok in emitted:
        result.token_ids.append(tok)
        if cfg.stop_at_eos and eos is not None and tok == eos:
            result.finished_by = "eos"
            return True
        if len(result.token_ids) >= cfg.max_new_tokens:
            result.finished_by = "length"
            return True
    return False


def _texts(lm: CausalLM, results: list[GenerationResult]) -> list[GenerationResult]:
    for r in results:
        r.text = lm.detokenize(r.token_ids)
    return results


# ---------------------------------------------------------------- AD


def generate_ad(target: CausalLM, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, seeds: Optional[Sequence[int]] = None) -> list[GenerationResult]:
    """Autoregressive decoding: one target forward per token, sampling from p = probs_from_logits(·, cfg.sampling).

    `seeds` (coupled sampling only): one per sequence instead of cfg.seed for all.
    """
    _check_prompts(prompts)
    seeds = _seeds(cfg, seeds, len(prompts))
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    results = [GenerationResult("ad", list(p)) for p in prompts]
    kv = target.new_kv(len(prompts))
    logits = target.prefill(kv, prompts)  # [B, V]
    live = list(range(len(prompts)))
    while live:
        if cfg.sampling.greedy:
            tokens = greedy_tokens(logits)
        elif cfg.is_coupled:
            noise = noise_rows([seeds[b] for b in live], [len(prompts[b]) + len(results[b].token_ids) for b in live], logits.shape[-1], logits.device)
            tokens = coupled_tokens(probs_from_logits(logits, cfg.sampling), noise)
        else:
            tokens = sample(probs_from_logits(logits, cfg.sampling), gen)
        tokens = tokens.tolist()  # the one wait per step
        still = []
        for j, b in enumerate(live):
            results[b].num_rounds += 1
            if results[b].num_rounds == 1:
                results[b].ttft_s = time.perf_counter() - start
            if not _finish(results[b], [tokens[j]], cfg, target.eos_token_id):
                still.append(b)
        live = still
        if live:
            feeds = [[results[b].token_ids[-1]] if b in live else [] for b in range(len(prompts))]
            logits = target.forward(kv, feeds, [len(f) for f in feeds])
    wall = time.perf_counter() - start
    for r in results:
        r.wall_s = wall
    return _texts(target, results)


# ---------------------------------------------------------------- SD


def generate_sd(
    draft: CausalLM,
    target: CausalLM,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    gammas: Optional[Sequence[int]] = None,
    on_round: Optional[RoundHook] = None,
    seeds: Optional[Sequence[int]] = None,
) -> list[GenerationResult]:
    """Speculative decoding, lossless w.r.t. `cfg.sampling`; `gammas` overrides cfg.gamma per sequence, `seeds`
    cfg.seed per sequence (coupled sampling only).

    `on_round(sequence, gamma, accepted)` is called after every verified round of every sequence
    (γ as drafted that round, after the budget cap); it only observes.
    """
    _check_prompts(prompts)
    check_same_tokenizer(draft, target)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    bsz = len(prompts)
    seeds = _seeds(cfg, seeds, bsz)
    base_gamma = list(gammas) if gammas is not None else [cfg.gamma] * bsz
    results = [GenerationResult("sd", list(p)) for p in prompts]
    for r, g in zip(results, base_gamma):
        r.accepted_per_position = [0] * g
        r.drafted_per_position = [0] * g
    kv_d, kv_t = draft.new_kv(bsz), target.new_kv(bsz)
    transcripts = [list(p) for p in prompts]
    live = list(range(bsz))
    while live:
        # 1-2. draft (γ capped by the remaining budget: the last token needs no draft)
        round_gamma = [0] * bsz
        for b in live:
            round_gamma[b] = min(base_gamma[b], cfg.max_new_tokens - len(results[b].token_ids) - 1)
        if cfg.is_coupled:
            drafted = draft_blocks_coupled(draft, kv_d, transcripts, round_gamma, cfg.sampling, seeds)
        else:
            drafted = draft_blocks(draft, kv_d, transcripts, round_gamma, cfg.sampling, cfg.q_mode, cfg.q_top_k, gen)
        # 3. verify every live block in one target forward (the draft checked before the forward is queued)
        batch = drafted.batch(live)
        validate_draft(batch, target.vocab_size)
        feeds = [[] for _ in range(bsz)]
        for b in live:
            feeds[b] = sync_row(target, kv_t, b, transcripts[b]) + drafted.blocks[b]
        logits = target.forward(kv_t, feeds, [round_gamma[b] + 1 if b in live else 0 for b in range(bsz)])
        if cfg.is_coupled:
            verdict = _verify_coupled(logits, batch, cfg.sampling, [seeds[b] for b in live], [len(transcripts[b]) for b in live])
        else:
            verdict = verify_validated(logits, batch, cfg.sampling, gen)
        accepted, next_tokens = torch.stack([verdict.num_accepted, verdict.next_tokens]).tolist()  # the one wait per round
        # 4. apply
        still = []
        for j, b in enumerate(live):
            n = accepted[j]
            emitted = drafted.blocks[b][:n] + [next_tokens[j]]
            _count_round(results[b], round_gamma[b], n)
            if on_round is not None:
                on_round(b, round_gamma[b], n)
            if results[b].num_rounds == 1:
                results[b].ttft_s = time.perf_counter() - start
            done = _finish(results[b], emitted, cfg, target.eos_token_id)
            transcripts[b] = list(prompts[b]) + results[b].token_ids
            if not done:
                still.append(b)
        live = still
    wall = time.perf_counter() - start
    for r in results:
        r.wall_s = wall
    return _texts(target, results)


def draft_blocks_coupled(
    draft: CausalLM, kv: RaggedKV, transcripts: Sequence[list[int]], gammas: Sequence[int], params: SamplingParams, seeds: Sequence[int]
) -> DraftOutput:
    """Draft γ_b tokens for every row b by Gumbel-max with row b's seed at its transcript positions (tokens only, no q)."""
    draw = CoupledDraw(params, seeds, [len(t) for t in transcripts], gammas)
    rows = draft_loop(draft, kv, transcripts, gammas, draw)
    return DraftOutput(rows.tokens, "tokens", None, None, rows.confidence)


def _verify_coupled(logits: torch.Tensor, batch: DraftBatch, params: SamplingParams, seeds: list[int], positions: list[int]):
    """Coupled verification of the live blocks: logits [N + B, V], block i starting at transcript position positions[i]."""
    validate_draft(batch, logits.shape[-1])
    noise = block_noise(batch, seeds, positions, logits.shape[-1], logits.device)
    return verify_coupled(probs_from_logits(logits, params), batch, noise)


def _seeds(cfg: GenerationConfig, seeds: Optional[Sequence[int]], count: int) -> list[int]:
    if seeds is None:
        return [cfg.seed] * count
    if len(seeds) != count:
        raise ValueError(f"need one seed per prompt ({count}), got {len(seeds)}")
    return [int(s) for s in seeds]


def _count_round(result: GenerationResult, gamma: int, accepted: int) -> None:
    result.num_rounds += 1
    result.num_draft_tokens += gamma
    result.num_accepted_tokens += accepted
    for j in range(gamma):
        result.drafted_per_position[j] += 1
        if j < accepted:
            result.accepted_per_position[j] += 1


def _check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    if not prompts:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token (e.g. the BOS/EOS token)")
