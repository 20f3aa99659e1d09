"""The drafting loop of a drafter node: for all active sessions, pick γ, draft in batched passes, send drafts, apply verdicts, stream text.

Per session the transcript (prompt + emitted tokens) is the truth and the only thing verdicts change:
a verdict (accepted n, next token t) appends the first n drafted tokens and t, exactly what the
verifier decided, so the output is lossless by construction. Drafted blocks are bookkept as
`_Block`s that say which transcript they extend (`base_len` + `assumed` tokens); a block is sent only
if it extends the current transcript, so stale or speculative work can never reach the wire.

The loop: whenever woken, plan a round (every session without a draft in flight and without a usable
block gets a fresh job; with `pipeline`, every session *with* a draft in flight gets a speculative job
that assumes the whole block is accepted plus the draft's most likely bonus token), run all jobs in one
batched draft pass per sampling setting on a worker thread (the event loop keeps receiving verdicts),
then send what can be sent. A speculative block is kept for a hit (the verdict accepted everything and
the bonus was the guess: it is sent the moment the verdict arrives) and dropped on a miss. Sessions
whose verdicts come back while the draft model is busy form the next round's batch, so with many
sessions the groups alternate and draft model and verifier work at the same time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import AsyncIterator, Callable, NamedTuple, Optional, Union

import torch

from edgespec.edge.client import ClientConfig, RemoteSession, VerifierPool
from edgespec.edge.drafting import DraftedBlock, draft_rows, draft_rows_coupled
from edgespec.edge.kvrows import KVRows
from edgespec.edge.policies import make_gamma_policy
from edgespec.edge.text import TextAssembler
from edgespec.models.runtime import CausalLM
from edgespec.policy.gamma import RoundObservation
from edgespec.policy.pipelining import PipelineGate
from edgespec.protocol import Q_MODES, ErrorCode, Sampling
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol.messages import verifier_hints
from edgespec.spec.sampling import GREEDY, SamplingParams

__all__ = [
    "EngineConfig",
    "GenerationRequest",
    "RequestStats",
    "EngineStats",
    "TextDelta",
    "Finished",
    "Failed",
    "GenerationFailed",
    "RequestHandle",
    "RunningRequest",
    "DraftEngine",
]

log = logging.getLogger(__name__)

MAX_GAMMA = 32  # the protocol's default limit; verifiers may announce less
OVERHEAD_SAMPLES = 8192  # recent rounds whose framework overhead `EngineStats` keeps


@dataclass(frozen=True)
class EngineConfig:
    """How the drafter drafts: q encoding on the wire, γ policy, pipelining and the draft sampler's seed."""

    q_mode: str = "topk"  # "full" | "topk" | "tokens" (temperature 0 always sends tokens only)
    top_k: int = 8  # K for q_mode "topk"
    gamma_policy: str = "adaptive"  # AWC behind the speculation gate: γ = 0 where the verifier's load makes drafting lose
    gamma: int = 4  # static γ, or the starting γ of the adaptive policies
    load_aware: bool = False  # put any other policy behind the speculation gate too ("adaptive" always is)
    probe_every: int = 0  # while the gate is closed, speculate once every this many AD rounds (0: never)
    max_gamma: int = 16
    confidence_threshold: float = 0.3  # SLED's c_th for the "confidence" policy
    pipeline: bool = False
    pipeline_min_hit_rate: float = 0.5  # a session speculates while the draft pass has other work only at this hit rate (0: always)
    seed: int = 0  # the draft sampler's generator (drafts only; the verifier's randomness decides the output)
    max_draft_rejections: int = 2  # consecutive rejected drafts of a session before it falls back to γ = 0

    def __post_init__(self) -> None:
        if self.q_mode not in Q_MODES:
            raise ValueError(f"q_mode must be one of {', '.join(Q_MODES)}, got {self.q_mode!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.max_gamma <= MAX_GAMMA:
            raise ValueError(f"max_gamma must be in [0, {MAX_GAMMA}], got {self.max_gamma}")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0, got {self.probe_every}")
        if not 0.0 <= self.pipeline_min_hit_rate <= 1.0:
            raise ValueError(f"pipeline_min_hit_rate must be in [0, 1], got {self.pipeline_min_hit_rate}")
        make_gamma_policy(self.gamma_policy, self.gamma, self.max_gamma, self.confidence_threshold)  # validates


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: prompt token ids, token budget, sampling settings (define p), stop strings."""

    prompt_ids: tuple[int, ...]
    max_tokens: int = 16
    sampling: SamplingParams = SamplingParams()
    seed: Optional[int] = None  # passed to the verifier (its randomness decides the output)
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    coupled: bool = False  # seeded sampling: the output is a function of (seed, prompt), equal to AD with that seed (needs a seed)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt has no tokens")
        if self.coupled and self.seed is None:
            raise ValueError("coupled (seeded) sampling needs a seed")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class RequestStats:
    """Speculative-decoding counters of one request."""

    rounds: int = 0
    ad_rounds: int = 0  # rounds without drafts (γ = 0: the speculation gate closed, the last token, or after rejected drafts)
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    pipeline_hits: int = 0
    pipeline_misses: int = 0
    draft_rejections: int = 0
    interruptions: int = 0  # times the verifier lost the session (it was resumed from the transcript)
    verifier: str = ""
    ttft_s: float = 0.0
    wall_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["acceptance_rate"] = self.acceptance_rate
        out["tokens_per_round"] = (self.accepted_tokens + self.rounds) / self.rounds if self.rounds else 0.0
        return out


@dataclass(frozen=True)
class TextDelta:
    """New text for the user (may be empty when only tokens were added); `completion_tokens` so far."""

    text: str
    completion_tokens: int


@dataclass(frozen=True)
class Finished:
    """The request is complete."""

    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...]
    stats: RequestStats


@dataclass(frozen=True)
class Failed:
    """The request could not be completed (no verifier, shutdown, ...)."""

    message: str


Event = Union[TextDelta, Finished, Failed]


class GenerationFailed(RuntimeError):
    """Raised by `RequestHandle.result()` when the request failed."""


@dataclass
class _Block:
    """A drafted block and the transcript it extends: transcript[:base_len] followed by `assumed` tokens."""

    drafted: DraftedBlock
    base_len: int
    assumed: tuple[int, ...] = ()
    draft_time_s: float = 0.0
    sent_at: float = 0.0

    @property
    def position(self) -> int:
        return self.base_len + len(self.assumed)

    @property
    def gamma(self) -> int:
        return self.drafted.gamma

    def valid_for(self, transcript: list[int]) -> bool:
        return len(transcript) == self.position and tuple(transcript[self.base_len :]) == self.assumed


@dataclass
class _Session:
    key: int
    request: GenerationRequest
    remote: RemoteSession
    policy: object
    assembler: TextAssembler
    queue: asyncio.Queue
    started_at: float
    stats: RequestStats = field(default_factory=RequestStats)
    open: bool = False
    inflight: Optional[_Block] = None
    prepared: Optional[_Block] = None
    spec_for: Optional[_Block] = None  # the in-flight block a speculative job was planned for
    drafting: bool = False
    done: bool = False
    rejections_in_row: int = 0
    pipeline_gate: PipelineGate = field(default_factory=PipelineGate)

    @property
    def transcript(self) -> list[int]:
        return self.remote.transcript

    @property
    def completion_tokens(self) -> int:
        return len(self.remote.transcript) - self.remote.num_prompt_tokens


@dataclass
class _Job:
    session: _Session
    transcript: list[int]  # a copy: transcript[:base_len] + assumed (the bonus guess is added while drafting)
    base_len: int
    assumed: tuple[int, ...]
    gamma: int
    top_k: int
    speculative: bool = False


class RequestHandle:
    """A submitted request: iterate its events (`async for event in handle`) or await `result()`; `cancel()` to abandon it."""

    def __init__(self, engine: "DraftEngine", session: _Session):
        self._engine, self._session = engine, session

    @property
    def prompt_tokens(self) -> int:
        return len(self._session.request.prompt_ids)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._session.queue.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return

    async def result(self) -> Finished:
        async for event in self:
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise GenerationFailed(event.message)
        raise GenerationFailed("no result")  # pragma: no cover

    def cancel(self) -> None:
        self._engine._cancel(self._session)


@dataclass
class EngineStats:
    """Counters of a drafter node since it started (all requests)."""

    requests_finished: int = 0
    requests_failed: int = 0
    completion_tokens: int = 0
    rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    pipeline_hits: int = 0
    draft_passes: int = 0  # batched draft passes run
    drafted_blocks: int = 0  # blocks drafted in them (mean batch = drafted_blocks / draft_passes)
    draft_time_s: float = 0.0
    # per recent round with a verdict that carried RoundTiming, aligned: the round's time outside model forwards
    # (sent → verdict applied, less the verifier's forwards and its wait behind other batches' forwards), and
    # the verifier's share of it (server − forward − busy wait)
    round_overhead_s: deque = field(default_factory=lambda: deque(maxlen=OVERHEAD_SAMPLES), repr=False)
    verifier_overhead_s: deque = field(default_factory=lambda: deque(maxlen=OVERHEAD_SAMPLES), repr=False)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if not isinstance(getattr(self, f.name), deque)}
        out["acceptance_rate"] = self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0
        out["mean_gamma"] = self.drafted_tokens / self.rounds if self.rounds else 0.0
        out["mean_draft_batch"] = self.drafted_blocks / self.draft_passes if self.draft_passes else 0.0
        overhead = sorted(self.round_overhead_s)
        out["round_overhead_samples"] = len(overhead)
        out["round_overhead_ms_p50"] = _percentile_ms(overhead, 0.5)
        out["round_overhead_ms_p90"] = _percentile_ms(overhead, 0.9)
        out["verifier_overhead_ms_p50"] = _percentile_ms(sorted(self.verifier_overhead_s), 0.5)
        return out


def _draws_deterministically(request: GenerationRequest) -> bool:
    """Greedy and seeded (coupled) sessions draft the verifier's own choice when they agree, so a pipelined block's
    bonus guess is simply their next drafted token."""
    return request.sampling.greedy or request.coupled


def _percentile_ms(ordered: list[float], q: float) -> Optional[float]:
    """The q-quantile (nearest rank) of ascending seconds, in milliseconds; None without samples."""
    if not ordered:
        return None
    return 1000.0 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class RunningRequest(NamedTuple):
    """A request being generated, as `DraftEngine.running()` reports it."""

    key: int
    stats: RequestStats
    completion_tokens: int


class DraftEngine:
    """Drafts for every active session of a drafter node and talks to the verifiers through a `VerifierPool`."""

    def __init__(self, draft: CausalLM, config: EngineConfig, client_config: ClientConfig):
        self.draft = draft
        self.config = config
        self.pool = VerifierPool(client_config, self)
        self._rows = KVRows(draft)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgespec-draft")
        self._gen = torch.Generator().manual_seed(config.seed)
        self._sessions: dict[int, _Session] = {}
        self._policy_state: dict = {}  # what this node's sessions' γ policies pool (AWC: acceptance, wire floor, shared γ)
        self._observed: list[tuple[object, RoundObservation]] = []  # verdicts' observations, fed to the policies at the next plan
        self._settling: list[tuple[_Session, _Block, pb.Verdict, float]] = []  # verdicts whose tokens are out, the rest of their handling due (`_settle`)
        self._last_hints: tuple = (b"", None)  # (serialized LoadHints, parsed): a batch's verdicts share theirs
        self._keys = itertools.count(1)
        self._releases: list[int] = []
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self.stats = EngineStats()
        self.on_round: Optional[Callable[[int, int, float], None]] = None  # (γ, accepted, round trip s) per verdict, e.g. EdgeMetrics.observe_round

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        self._wake = asyncio.Event()
        await self.pool.start()
        self._task = asyncio.create_task(self._loop(), name="edgespec-draft-loop")

    async def stop(self) -> None:
        for s in list(self._sessions.values()):
            self._abort(s, "the drafter node is shutting down")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.pool.stop()
        self._executor.shutdown(wait=True)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    def running(self) -> list[RunningRequest]:
        """The requests being generated, oldest first."""
        return [RunningRequest(s.key, s.stats, s.completion_tokens) for s in self._sessions.values()]

    # ------------------------------------------------------------ requests

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Start generating for `request`; events arrive on the returned handle."""
        key = next(self._keys)
        coupled = request.coupled and not request.sampling.greedy  # temperature 0 is greedy whatever the seed
        sampling = Sampling(request.sampling.temperature, request.sampling.top_k, request.sampling.top_p, request.seed, coupled)
        remote = RemoteSession(key, list(request.prompt_ids), len(request.prompt_ids), sampling, request.max_tokens)
        cfg = self.config
        policy = make_gamma_policy(cfg.gamma_policy, cfg.gamma, cfg.max_gamma, cfg.confidence_threshold, node_state=self._policy_state,
                                   load_aware=cfg.load_aware, probe_every=cfg.probe_every)
        session = _Session(key, request, remote, policy, TextAssembler(self.draft.detokenize, request.stop), asyncio.Queue(), time.perf_counter(),
                           pipeline_gate=PipelineGate(min_hit_rate=cfg.pipeline_min_hit_rate))
        self._sessions[key] = session
        self.pool.open(remote)
        self._wake.set()
        return RequestHandle(self, session)

    def _cancel(self, s: _Session) -> None:
        if not s.done:
            self._retire(s)

    def _retire(self, s: _Session) -> None:
        s.done = True
        s.inflight = s.prepared = None
        self.pool.close(s.key)
        self._sessions.pop(s.key, None)
        self._releases.append(s.key)
        self._wake.set()

    def _abort(self, s: _Session, message: str) -> None:
        if not s.done:
            self._retire(s)
            self.stats.requests_failed += 1
            s.queue.put_nowait(Failed(message))

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # first send what the last pass drafted and read the verdicts that came meanwhile
            self._wake.clear()
            jobs = self._plan()
            releases, self._releases = self._releases, []
            if not jobs and not releases:
                continue
            for job in jobs:
                job.session.drafting = True
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._draft, jobs, releases)
            except Exception as exc:  # noqa: BLE001 — a failed draft pass fails its requests, not the node
                log.exception("draft pass failed")
                for job in jobs:
                    job.session.drafting = False
                    self._abort(job.session, f"drafting failed: {exc}")
                continue
            elapsed = time.perf_counter() - start
            self.stats.draft_passes += 1
            self.stats.drafted_blocks += sum(1 for job in jobs if job.gamma > 0)
            self.stats.draft_time_s += elapsed
            for job, (block, guess) in zip(jobs, results):
                job.session.drafting = False
                self._drafted(job, block, guess, elapsed)
            self._wake.set()  # sessions whose verdicts arrived meanwhile

    def _gamma(self, s: _Session, length: int) -> int:
        """γ for a block extending a transcript of `length` tokens (0 = an AD round)."""
        remaining = s.request.max_tokens - (length - s.remote.num_prompt_tokens)
        if remaining <= 1 or s.rejections_in_row >= self.config.max_draft_rejections:
            return 0
        gamma = s.policy.gamma(time.monotonic())
        limits = self.pool.limits(s.key)
        if limits is not None and limits.max_gamma:
            gamma = min(gamma, limits.max_gamma)
        return max(0, min(gamma, remaining - 1, MAX_GAMMA))

    def _top_k(self, s: _Session) -> int:
        limits = self.pool.limits(s.key)
        k = min(self.config.top_k, self.draft.vocab_size)
        return min(k, limits.max_top_k) if limits is not None and limits.max_top_k else k

    def _plan(self) -> list[_Job]:
        """Jobs for this pass: a fresh block for every session that needs one, then (pipelining) speculative blocks its gate allows."""
        observed, self._observed = self._observed, []
        for policy, obs in observed:  # the verdicts' lessons, before any γ is chosen (one node-wide γ update for all of them)
            policy.observe(obs)
        jobs, waiting = [], []
        for s in self._sessions.values():
            if s.done or s.drafting:
                continue
            transcript = s.transcript
            if s.inflight is None:
                if s.prepared is not None and s.prepared.valid_for(transcript):
                    continue  # drafted, waiting for the session to be (re)opened
                s.prepared = None
                gamma = self._gamma(s, len(transcript))
                jobs.append(_Job(s, list(transcript), len(transcript), (), gamma, self._top_k(s)))
            elif self.config.pipeline and s.prepared is None and s.spec_for is not s.inflight:
                waiting.append(s)
        busy = any(job.gamma > 0 for job in jobs)  # the pass drafts for other sessions anyway: speculation takes their compute
        for s in waiting:
            block = s.inflight
            s.spec_for = block
            if not s.pipeline_gate.allow(busy):
                continue
            gamma = self._gamma(s, len(s.transcript) + block.gamma + 1)
            if gamma >= 1:
                tokens = block.drafted.tokens
                jobs.append(_Job(s, list(s.transcript) + list(tokens), len(s.transcript), tuple(tokens), gamma, self._top_k(s), speculative=True))
        return jobs

    def _draft(self, jobs: list[_Job], releases: list[int]) -> list[tuple[DraftedBlock, Optional[int]]]:
        """Worker thread: release finished rows, then draft every job (one batched pass per sampling setting)."""
        for key in releases:
            self._rows.release(key)
        out: list[tuple[DraftedBlock, Optional[int]]] = [(DraftedBlock(()), None)] * len(jobs)
        work = [i for i, job in enumerate(jobs) if job.gamma > 0]
        if not work:
            return out
        rows = {i: self._rows.row(jobs[i].session.key) for i in work}
        size = self._rows.size
        transcripts = {i: jobs[i].transcript for i in work}
        guesses: dict[int, int] = {}
        # 1. pipelined jobs guess the bonus token: the draft's most likely next token (sampled sessions only;
        #    greedy and seeded sessions draft it, deterministically, as the first token of their own pass below)
        sampled_spec = [i for i in work if jobs[i].speculative and not _draws_deterministically(jobs[i].session.request)]
        if sampled_spec:
            ts, gs = [None] * size, [0] * size
            for i in sampled_spec:
                ts[rows[i]], gs[rows[i]] = transcripts[i], 1
            drafted = draft_rows(self.draft, self._rows.kv, ts, gs, GREEDY, "tokens", 1, self._gen)
            for i in sampled_spec:
                guesses[i] = drafted[rows[i]].tokens[0]
                transcripts[i] = transcripts[i] + [guesses[i]]
        # 2. one pass per sampling setting
        groups: dict[tuple, list[int]] = {}
        for i in work:
            request = jobs[i].session.request
            coupled = request.coupled and not request.sampling.greedy
            q_mode = "tokens" if request.sampling.greedy or coupled else self.config.q_mode
            groups.setdefault((request.sampling, q_mode, jobs[i].top_k if q_mode == "topk" else 0, coupled), []).append(i)
        for (params, q_mode, top_k, coupled), members in groups.items():
            ts, gs, seeds = [None] * size, [0] * size, [0] * size
            lead = {i: 1 if jobs[i].speculative and i not in guesses else 0 for i in members}
            for i in members:
                ts[rows[i]], gs[rows[i]], seeds[rows[i]] = transcripts[i], jobs[i].gamma + lead[i], jobs[i].session.request.seed or 0
            if coupled:
                drafted = draft_rows_coupled(self.draft, self._rows.kv, ts, gs, params, seeds)
            else:
                drafted = draft_rows(self.draft, self._rows.kv, ts, gs, params, q_mode, max(top_k, 1), self._gen)
            for i in members:
                block = drafted[rows[i]]
                if lead[i]:  # greedy or seeded: the first drafted token is the bonus guess
                    guesses[i] = block.tokens[0]
                    block = DraftedBlock(block.tokens[1:], "tokens", None, None, block.confidence[1:])
                out[i] = (block, guesses.get(i))
        return out

    def _drafted(self, job: _Job, drafted: DraftedBlock, guess: Optional[int], elapsed_s: float) -> None:
        s = job.session
        if s.done:
            return
        for j, confidence in enumerate(drafted.confidence):  # SLED: stop at the first unconfident token
            if s.policy.should_stop(confidence):
                drafted = drafted.truncate(j)
                break
        assumed = job.assumed + ((guess,) if job.speculative else ())
        block = _Block(drafted, job.base_len, assumed, elapsed_s)
        if s.prepared is not None and s.prepared.valid_for(s.transcript) and not block.valid_for(s.transcript):
            return  # keep the usable block (a draft that was in flight when the verifier was lost)
        s.prepared = block
        self._try_send(s)

    def _try_send(self, s: _Session) -> bool:
        """Send the prepared block if it extends the transcript and the session is open; drop it if it is stale."""
        if s.done or s.inflight is not None or s.prepared is None or not s.open:
            return False
        block = s.prepared
        if not block.valid_for(s.transcript):
            if block.assumed:
                s.stats.pipeline_misses += 1
                s.pipeline_gate.observe(False)
            s.prepared = None
            self._wake.set()
            return False
        limits = self.pool.limits(s.key)
        if limits is not None:
            if limits.max_gamma and block.gamma > limits.max_gamma:
                block.drafted = block.drafted.truncate(limits.max_gamma)
            if block.drafted.q_ids is not None and limits.max_top_k and block.drafted.q_ids.shape[1] > limits.max_top_k:
                s.prepared = None  # drafted for a verifier with a larger K limit: redraft
                self._wake.set()
                return False
        block.sent_at = time.perf_counter()  # before encoding: the round's overhead includes it
        if not self.pool.send_draft(s.key, block.position, block.drafted):
            return False
        if block.assumed:
            s.stats.pipeline_hits += 1
            s.pipeline_gate.observe(True)
            self.stats.pipeline_hits += 1
        s.prepared, s.inflight = None, block
        return True

    # ------------------------------------------------------------ applying verdicts

    def _emit(self, s: _Session, tokens: list[int]) -> None:
        """Append emitted tokens to the transcript up to EOS / max_tokens / a stop string; stream the new text."""
        eos = self.draft.eos_token_id
        one_by_one = s.assembler.has_stop_strings  # else the text of the whole verdict is decoded at once
        reason, text_tokens = None, []
        for tok in tokens:
            s.transcript.append(tok)
            if s.stats.ttft_s == 0.0:
                s.stats.ttft_s = time.perf_counter() - s.started_at
            if s.request.stop_at_eos and eos is not None and tok == eos:
                reason = "stop"
            elif not one_by_one:
                text_tokens.append(tok)
            elif s.assembler.push(tok):
                reason = "stop"
            if reason is None and s.completion_tokens >= s.request.max_tokens:
                reason = "length"
            if reason is not None:
                break
        if text_tokens:
            s.assembler.extend(text_tokens)
        delta = s.assembler.delta()
        if delta:
            s.queue.put_nowait(TextDelta(delta, s.completion_tokens))
        if reason is not None:
            self._finish(s, reason)

    def _finish(self, s: _Session, reason: str) -> None:
        rest = s.assembler.final_delta()
        if rest:
            s.queue.put_nowait(TextDelta(rest, s.completion_tokens))
        s.stats.wall_s = time.perf_counter() - s.started_at
        s.stats.verifier = self.pool.verifier_of(s.key) or s.stats.verifier
        completion = tuple(s.transcript[s.remote.num_prompt_tokens :])
        self.stats.requests_finished += 1
        self.stats.completion_tokens += len(completion)
        self._retire(s)
        s.queue.put_nowait(Finished(s.assembler.final_text(), reason, s.remote.num_prompt_tokens, len(completion), completion, s.stats))

    # ------------------------------------------------------------ SessionListener (called by the pool)

    def on_opened(self, key: int) -> None:
        s = self._sessions.get(key)
        if s is None:
            return
        s.open = True
        s.stats.verifier = self.pool.verifier_of(key) or ""
        if not self._try_send(s):
            self._wake.set()

    def on_verdict(self, key: int, verdict: pb.Verdict) -> None:
        s = self._sessions.get(key)
        if s is None or s.done:
            return
        block = s.inflight
        if block is None or verdict.position != block.position:
            log.warning("session %d: verdict for position %d does not match the draft in flight", key, verdict.position)
            return
        s.inflight = None
        n = int(verdict.accepted)
        rtt_s = time.perf_counter() - block.sent_at
        s.stats.ad_rounds += block.gamma == 0
        for stats in (s.stats, self.stats):
            stats.rounds += 1
            stats.drafted_tokens += block.gamma
            stats.accepted_tokens += n
        s.rejections_in_row = 0
        self._settling.append((s, block, verdict, rtt_s))
        if len(self._settling) == 1:  # once per burst, ahead of the readers this wakes: it runs after the frame's other verdicts
            asyncio.get_running_loop().call_soon(self._settle)
        self._emit(s, list(block.drafted.tokens[:n]) + [int(verdict.next_token_id)])
        if verdict.HasField("timing"):
            self._record_overhead(time.perf_counter() - block.sent_at, verdict.timing)

    def _settle(self) -> None:
        """The rest of each verdict applied since the last call: what the γ policy learns, the round callback, the next send."""
        settling, self._settling = self._settling, []
        for s, block, verdict, rtt_s in settling:
            self._learn(s, block, verdict, rtt_s)
            if not s.done and not self._try_send(s):
                self._wake.set()

    def _learn(self, s: _Session, block: _Block, verdict: pb.Verdict, rtt_s: float) -> None:
        """Queue the round's observation for the session's γ policy (it learns at the next plan) and report the round."""
        n = int(verdict.accepted)
        verify_s = verdict.load.verify_ms / 1000.0 if verdict.HasField("load") and verdict.load.verify_ms > 0 else None
        timing = verdict.timing if verdict.HasField("timing") else None
        if timing is not None:
            upload_s: Optional[float] = max(0.0, rtt_s - timing.server_us / 1e6)
        else:
            upload_s = max(0.0, rtt_s - verify_s) if verify_s is not None else None
        load = self._hints(verdict.load) if verdict.HasField("load") else None
        self._observed.append((s.policy, RoundObservation(  # the policy learns at the next plan, off the verdict path
            drafted=block.gamma,
            accepted=n,
            now_s=time.monotonic(),
            draft_time_s=block.draft_time_s if block.gamma else None,
            upload_time_s=upload_s,
            verify_time_s=verify_s,
            rtt_s=rtt_s,
            queue_depth=load.queue_depth if load is not None else None,
            forward_s=timing.forward_us / 1e6 if timing is not None else None,
            busy_wait_s=timing.busy_wait_us / 1e6 if timing is not None else None,
            hints=load,
        )))
        if self.on_round is not None:
            self.on_round(block.gamma, n, rtt_s)

    def _hints(self, hints: pb.LoadHints):
        """The verdict's load hints as `VerifierHints`; the verdicts of one batch carry the same, parsed once."""
        raw = hints.SerializeToString()
        if raw != self._last_hints[0]:
            self._last_hints = (raw, verifier_hints(hints))
        return self._last_hints[1]

    def _record_overhead(self, round_s: float, timing: pb.RoundTiming) -> None:
        """One round's time outside model forwards (sent → applied, less forwards and waiting behind them) and the verifier's share."""
        model_s = (timing.forward_us + timing.busy_wait_us) / 1e6
        self.stats.round_overhead_s.append(max(0.0, round_s - model_s))
        self.stats.verifier_overhead_s.append(max(0.0, timing.server_us / 1e6 - model_s))

    def on_draft_rejected(self, key: int, error) -> None:
        s = self._sessions.get(key)
        if s is None:
            return
        if error.code == ErrorCode.BUSY:  # the verifier has enough of this node's drafts in flight: the block is fine, resend it later
            self._resend_later(s, error.retry_after_ms / 1000.0 or self.pool.config.busy_retry_s)
            return
        log.warning("session %d: draft rejected: %s", key, error)
        s.inflight = None
        s.rejections_in_row += 1
        s.stats.draft_rejections += 1
        if not self._try_send(s):
            self._wake.set()

    def _resend_later(self, s: _Session, delay_s: float) -> None:
        """Keep the refused in-flight block (it still extends the transcript) and send it again after `delay_s`."""
        log.info("session %d: verifier busy, resending the draft in %.0f ms", s.key, 1000 * delay_s)
        if s.inflight is not None:
            s.prepared, s.inflight, s.spec_for = s.inflight, None, None
        asyncio.get_running_loop().call_later(delay_s, self._resend, s)

    def _resend(self, s: _Session) -> None:
        if not self._try_send(s):
            self._wake.set()

    def on_interrupted(self, key: int) -> None:
        s = self._sessions.get(key)
        if s is None:
            return
        s.open = False
        s.stats.interruptions += 1
        if s.inflight is not None:  # no verdict came: the block still extends the transcript, resend it after the resume
            s.prepared, s.inflight = s.inflight, None
        s.spec_for = None
        self._wake.set()

    def on_failed(self, key: int, error: Exception) -> None:
        s = self._sessions.get(key)
        if s is not None:
            self._abort(s, str(error))
