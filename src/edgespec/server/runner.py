"""The verifier's executor: owns the target model and one KV row per session, and verifies a batch of drafts in one ragged target forward.

Layout: one `RaggedKV` whose rows are slots; a session takes a slot on its first batch (lazy prefill),
a closed session's slot is cropped to 0 tokens and reused, and trailing free slots are dropped. Rows
not in a batch get 0 new tokens, or — when most rows would idle — the batch runs on a cache of just
its rows (`runtime.take_rows`/`put_rows`), since a ragged forward pads every row. A session's prompt is
prefilled in a forward of its own before its first verification, so one long prompt does not widen a
whole batch. The runner keeps each session's transcript (prompt + every token it emitted: it decided
them), so it knows which tokens its cache lacks; a draft at position P must have P == len(transcript).
Rejected draft tokens stay in a row until `reclaim` crops it (the node calls it while no draft waits;
a batch does it first otherwise), so that bookkeeping is not on the verdicts' path.
The cache is only a cache: after a failed forward it is dropped and rebuilt from the transcripts.
Each batch's target forwards are timed: `RoundResult.forward_s`, and `forward_windows` (recent batches).
On a GPU the batch is queued whole (forwards, then verification) and the host waits once, for the
verdicts; the forwards are timed by CUDA events read after that wait (`edgespec.models.device.StepClock`).

Threading: `verify_batch` and `reclaim` run in one worker thread (they alone touch the KV tensors);
`open`, `close` and the queries are called from the event loop and only touch the session table,
under a short lock that is never held across a forward.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import torch

from edgespec.models.device import StepClock
from edgespec.models.runtime import CausalLM, RaggedKV, put_rows, resize_rows, take_rows
from edgespec.policy.load import CALIBRATION_CONTEXT_TOKENS, CALIBRATION_SHAPES
from edgespec.spec.coupling import block_noise, verify_coupled
from edgespec.spec.sampling import SamplingParams, greedy_tokens, probs_from_logits
from edgespec.spec.verify import DraftBatch, verify_probs

__all__ = ["SessionKey", "DraftItem", "RoundResult", "VerifierRunner", "round_seed"]

SessionKey = Hashable  # the node uses (connection id, session id)
_MASK64 = (1 << 64) - 1
FORWARD_WINDOWS = 64  # recent batches whose forward windows `forward_windows` keeps


def round_seed(seed: int, position: int) -> int:
    """The seed of one verification round, from the session's seed and the draft's position (splitmix64).

    Deriving each round's randomness from (seed, position) makes a resumed session continue exactly as
    an uninterrupted one would (edgespec.proto, `Sampling.seed`).
    """
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclass(frozen=True)
class DraftItem:
    """One session's validated draft block: γ tokens at `position` and their q, as a one-row `DraftBatch`."""

    key: SessionKey
    position: int
    draft: DraftBatch  # batch_size 1

    @property
    def gamma(self) -> int:
        return int(self.draft.token_ids.numel())


@dataclass(frozen=True)
class RoundResult:
    """The verdict for one item: accepted draft tokens and the next token; `error` is set instead when it could not be verified."""

    key: SessionKey
    position: int
    gamma: int
    accepted: int = 0
    next_token_id: int = 0
    is_bonus: bool = False
    error: Optional[str] = None
    forward_s: float = 0.0  # the target forwards of its batch (prefill + verification), wall seconds


@dataclass
class _Session:
    params: SamplingParams
    seed: int
    transcript: list[int]
    num_prompt_tokens: int
    row: Optional[int] = None
    cached_tokens: int = 0  # transcript[:cached_tokens] is in the row's KV
    closed: bool = False
    coupled: bool = False  # seeded sampling: Gumbel-max coupling keyed by (seed, position), edgespec.spec.coupling


class VerifierRunner:
    """Executes verification: the target model, per-session transcripts and KV rows, one ragged forward per batch."""

    def __init__(self, target: CausalLM) -> None:
        self.target = target
        self.vocab_size = target.vocab_size
        self._kv: RaggedKV = target.new_kv(0)
        self._owner: list[Optional[_Session]] = []  # per row
        self._released: list[int] = []  # rows of closed sessions, still holding KV until `reclaim`
        self._pending_keep: dict[int, int] = {}  # row -> kept prefix: rejected draft tokens still in the cache until `reclaim`
        self._sessions: dict[SessionKey, _Session] = {}
        self._lock = threading.Lock()
        self._tokens_in_use = 0
        self.forward_windows: deque[tuple[float, float]] = deque(maxlen=FORWARD_WINDOWS)  # (start, end) perf_counter seconds of recent batches' forwards
        self.last_verify: Optional[tuple[int, float, float]] = None  # the last batch's verification forward: (rows, width, seconds)
        self._shape = (0, 0.0)  # (rows, positions computed per row) of the last forward `_forward_rows` ran

    # ------------------------------------------------------------------ session table (event loop)

    def open(self, key: SessionKey, token_ids: Sequence[int], params: SamplingParams, seed: int, num_prompt_tokens: Optional[int] = None,
             coupled: bool = False) -> int:
        """Register a session on its prompt (or a resumed transcript); its KV is filled in its first batch. Returns its position.

        `coupled`: verify by position-keyed Gumbel-max coupling under `seed` instead of rejection sampling."""
        if not token_ids:
            raise ValueError("a session needs at least one token")
        with self._lock:
            if key in self._sessions:
                raise KeyError(f"session {key!r} is already open")
            tokens = [int(t) for t in token_ids]
            self._sessions[key] = _Session(params, seed, tokens, num_prompt_tokens or len(tokens), coupled=coupled)
            return len(tokens)

    def resume(self, key: SessionKey, transcript: Sequence[int], num_prompt_tokens: int, params: SamplingParams, seed: int, coupled: bool = False) -> int:
        """Re-open a session from the drafter's transcript (prompt + emitted tokens); its KV is re-prefilled lazily."""
        return self.open(key, transcript, params, seed, num_prompt_tokens, coupled)

    def close(self, key: SessionKey) -> bool:
        """Forget a session; its KV row is freed by the next `reclaim` (or batch). False if it was not open."""
        with self._lock:
            sess = self._sessions.pop(key, None)
            if sess is None:
                return False
            sess.closed = True
            if sess.row is not None:
                self._released.append(sess.row)
            return True

    def is_open(self, key: SessionKey) -> bool:
        return key in self._sessions

    def position(self, key: SessionKey) -> int:
        """Tokens in the session's transcript (where its next draft must start)."""
        return len(self._sessions[key].transcript)

    def transcript(self, key: SessionKey) -> list[int]:
        return list(self._sessions[key].transcript)

    def num_prompt_tokens(self, key: SessionKey) -> int:
        return self._sessions[key].num_prompt_tokens

    def pending_tokens(self, key: SessionKey) -> int:
        """Transcript tokens the session's cache lacks (fed with its next draft): 1 after a round, the prompt before its first."""
        sess = self._sessions.get(key)
        return len(sess.transcript) - sess.cached_tokens if sess else 0

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def kv_tokens_in_use(self) -> int:
        """Tokens held in the KV cache, including rows of closed sessions and rejected draft tokens not yet reclaimed."""
        return self._tokens_in_use

    @property
    def kv_rows(self) -> int:
        return len(self._owner)

    @property
    def needs_reclaim(self) -> bool:
        """Whether `reclaim` has work: rows of closed sessions to free, or rejected draft tokens to crop."""
        return bool(self._released or self._pending_keep)

    # ------------------------------------------------------------------ KV rows (worker thread)

    def reclaim(self) -> None:
        """Crop verified rows to their kept prefixes and closed sessions' rows to 0 tokens, drop trailing free rows (worker thread).

        The node calls it while no draft waits, so this bookkeeping stays off the verdicts' path; the next
        batch does it first otherwise.
        """
        with self._lock:
            self._reclaim_locked()

    def _reclaim_locked(self) -> None:
        """Apply the pending crops, free the released rows and recount the tokens in use (also when a batch then finds no live session)."""
        keep, self._pending_keep = self._pending_keep, {}
        for row in self._released:
            keep[row] = 0
            self._owner[row] = None
        self._released.clear()
        self.target.crop_rows(self._kv, keep)  # one pass over the host bookkeeping, the cache trimmed once
        keep = len(self._owner)
        while keep and self._owner[keep - 1] is None:
            keep -= 1
        if keep < len(self._owner):
            self._set_rows(keep)
        self._tokens_in_use = int(self._kv.lengths.sum())

    def _allocate_rows(self, sessions: list[_Session]) -> None:
        """Give each session without a row the lowest free row, growing the cache by as many rows as needed."""
        need = [s for s in sessions if s.row is None]
        free = [r for r, owner in enumerate(self._owner) if owner is None]
        if len(need) > len(free):
            first_new = len(self._owner)
            self._set_rows(first_new + len(need) - len(free))
            free += list(range(first_new, len(self._owner)))
        for sess, row in zip(need, free):
            sess.row, sess.cached_tokens = row, 0
            self._owner[row] = sess

    def _set_rows(self, rows: int) -> None:
        """Grow the cache with empty rows or drop trailing (free, empty) rows."""
        self._kv = resize_rows(self.target, self._kv, rows)
        self._owner = (self._owner + [None] * rows)[:rows]

    def _forward_rows(self, feeds: dict[int, list[int]], last_n: dict[int, int]) -> torch.Tensor:
        """One forward appending `feeds[row]` to each given row; flat logits of the last `last_n[row]` tokens, rows ascending.

        When at most half the rows take part, run on a cache of just those rows (no padded idle rows).
        """
        rows = sorted(feeds)
        if 2 * len(rows) > self._kv.batch_size:
            every = range(self._kv.batch_size)  # idle rows are padded to the width too
            logits = self.target.forward(self._kv, [feeds.get(r, []) for r in every], [last_n.get(r, 0) for r in every])
            self._shape = (self._kv.batch_size, self.target.last_positions / self._kv.batch_size)
            return logits
        sub = take_rows(self.target, self._kv, rows)
        logits = self.target.forward(sub, [feeds[r] for r in rows], [last_n[r] for r in rows])
        self._kv = put_rows(self.target, self._kv, sub, rows)
        self._shape = (len(rows), self.target.last_positions / len(rows))  # positions computed per row (packed: fewer)
        return logits

    def _reset_kv(self) -> None:
        """Drop the whole cache (after a failed forward); every session re-prefills from its transcript."""
        for sess in self._sessions.values():
            sess.row, sess.cached_tokens = None, 0
        self._released.clear()
        self._pending_keep.clear()
        self._owner = []
        self._kv = self.target.new_kv(0)
        self._tokens_in_use = 0

    # ------------------------------------------------------------------ calibration (worker thread)

    def calibrate(self, shapes: Sequence[tuple[int, int]] = CALIBRATION_SHAPES, context_tokens: int = CALIBRATION_CONTEXT_TOKENS,
                  budget_s: float = 2.0) -> list[tuple[int, int, float]]:
        """Time verification-shaped forwards on a scratch cache: (rows, width, seconds) per shape, the best of two runs.

        Each shape's rows hold `context_tokens` tokens of context, then get `width` new tokens; the
        sessions' cache is not touched. Shapes are run in order until `budget_s` is spent (the first
        always runs), so a slow target calibrates on fewer points rather than delaying start-up.
        """
        points: list[tuple[int, int, float]] = []
        started_s = time.perf_counter()
        for rows, width in shapes:
            if points and time.perf_counter() - started_s > budget_s:
                break
            best = math.inf
            for _ in range(2):
                kv = self.target.new_kv(rows)
                self.target.forward(kv, [[0] * context_tokens] * rows, [0] * rows)
                t0 = time.perf_counter()
                logits = self.target.forward(kv, [[0] * width] * rows)
                if logits.is_cuda:
                    torch.cuda.synchronize(logits.device)
                best = min(best, time.perf_counter() - t0)
            points.append((rows, width, best))
        return points

    # ------------------------------------------------------------------ verification (worker thread)

    def verify_batch(self, items: Sequence[DraftItem]) -> list[Optional[RoundResult]]:
        """Verify one draft per session in one target forward; returns a result per item (None: the session was closed).

        Per session: feed the transcript tokens its cache lacks plus the γ drafted tokens, verify against
        the γ + 1 target distributions under its sampling settings, append accepted + 1 tokens to its
        transcript and leave its row to be cropped to the kept prefix by `reclaim` (or the next batch). Drafts must already be validated (`validate_draft`).
        """
        results: list[Optional[RoundResult]] = [None] * len(items)
        live: list[tuple[int, DraftItem, _Session]] = []
        with self._lock:
            self._reclaim_locked()
            seen = set()
            for i, item in enumerate(items):
                sess = self._sessions.get(item.key)
                if sess is None:
                    continue
                if item.key in seen:
                    results[i] = RoundResult(item.key, item.position, item.gamma, error="a second draft of the session in one batch")
                elif item.position != len(sess.transcript):
                    results[i] = RoundResult(item.key, item.position, item.gamma, error=f"draft at position {item.position}, the transcript has {len(sess.transcript)} tokens")
                else:
                    seen.add(item.key)
                    live.append((i, item, sess))
            self._allocate_rows([sess for _, _, sess in live])
            prefill = {sess.row: sess.transcript[sess.cached_tokens : -1] for _, _, sess in live if len(sess.transcript) - sess.cached_tokens > 1}
            feeds = {sess.row: sess.transcript[-1:] + item.draft.token_ids.tolist() for _, item, sess in live}
            last_n = {sess.row: item.gamma + 1 for _, item, sess in live}
        if not live:
            return results
        started_s = time.perf_counter()
        clock = StepClock(self.target.device)
        try:
            if prefill:  # prompts (or resumed transcripts) first, in a forward of their own, no logits needed
                self._forward_rows(prefill, {row: 0 for row in prefill})
            verify_clock = StepClock(self.target.device)  # the verification forward alone: the forward-time model's data
            logits = self._forward_rows(feeds, last_n)  # [Σ (γ_i + 1), V], rows ascending
            clock.stop()
            verify_clock.stop()
            verdicts = self._verify(logits, live, last_n)  # on a GPU: the batch's one wait (asynchronous errors surface here too)
        except Exception:
            with self._lock:
                self._reset_kv()
            raise
        forward_s = clock.seconds()
        self.forward_windows.append((started_s, started_s + forward_s))
        self.last_verify = (*self._shape, verify_clock.seconds())
        with self._lock:
            keep: dict[int, int] = {}
            for (i, item, sess), (accepted, token, bonus) in zip(live, verdicts):
                results[i] = RoundResult(item.key, item.position, item.gamma, accepted, token, bonus, forward_s=forward_s)
                if sess.closed:  # closed during the forward: its row is in `_released`
                    continue
                keep[sess.row] = kept = item.position + accepted
                sess.cached_tokens = kept
                sess.transcript.extend(item.draft.token_ids[:accepted].tolist())
                sess.transcript.append(token)
            self._pending_keep.update(keep)  # cut back to the kept prefixes by `reclaim`, after the verdicts are out
            self._tokens_in_use = int(self._kv.lengths.sum())
        return results

    def _verify(self, logits: torch.Tensor, live: list[tuple[int, DraftItem, _Session]], last_n: dict[int, int]) -> list[tuple[int, int, bool]]:
        """(accepted, next token, is_bonus) per live item: greedy sessions in one call, sampled ones each with its own generator
        (or, coupled, its own position-keyed noise).

        Every verdict stays on the device until one transfer at the end (a single wait per batch on a GPU).
        """
        starts, offset = {}, 0
        for row in sorted(last_n):
            starts[row], offset = offset, offset + last_n[row]
        order: list[int] = []  # live index of each sampled verdict column
        parts: list[torch.Tensor] = []  # [3, k] (accepted, next token, is_bonus) per sampled call
        greedy = [j for j, (_, _, sess) in enumerate(live) if sess.params.greedy]
        best = greedy_tokens(logits) if greedy else logits.new_zeros(0, dtype=torch.long)  # [Σ (γ_i + 1)] argmax per row
        for j, (_, item, sess) in enumerate(live):
            if sess.params.greedy:
                continue
            start = starts[sess.row]
            probs = probs_from_logits(logits[start : start + item.gamma + 1], sess.params)  # [γ + 1, V]
            if sess.coupled:
                res = verify_coupled(probs, item.draft, block_noise(item.draft, [sess.seed], [item.position], probs.shape[-1], probs.device))
            else:
                gen = torch.Generator().manual_seed(round_seed(sess.seed, item.position))
                res = verify_probs(probs, item.draft, gen)
            order.append(j)
            parts.append(torch.stack([res.num_accepted, res.next_tokens, res.is_bonus.long()]))
        if parts:
            flat = torch.cat([best, torch.cat(parts, dim=1).flatten().to(best.device)]).tolist()  # the one wait
        else:
            flat = best.tolist()
        argmax, k = flat[: best.numel()], len(order)
        out: list[Optional[tuple[int, int, bool]]] = [None] * len(live)
        for j in greedy:  # greedy rule on the host, from the batch's one argmax: accept while x == argmax p, emit argmax p at the stop
            _, item, sess = live[j]
            start, drafted = starts[sess.row], item.draft.token_ids.tolist()
            n = 0
            while n < len(drafted) and drafted[n] == argmax[start + n]:
                n += 1
            out[j] = (n, argmax[start + n], n == len(drafted))
        rest = flat[best.numel():]
        for c, j in enumerate(order):
            out[j] = (rest[c], rest[k + c], bool(rest[2 * k + c]))
        return out  # type: ignore[return-value]
