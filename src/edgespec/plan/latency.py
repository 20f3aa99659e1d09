"""The serving-latency model of SD (and AD) over a wireless edge network, returning breakdowns rather than one number.

Reconstruction of paper 2510.11331's model (its full text was not available; every assumption
is listed in docs/planner.md and marked A1…A12 here):

- A1 Compute per forward step comes from a measured profile when the node has one, else from a
  roofline FLOPs/bytes model: per token per layer 4h² + 4h·kv (attention projections; = 8h² without
  GQA) + 4·ctx·h (attention) + 4h·h_ff (6h·h_ff SwiGLU), plus 2h·V for the LM head;
  T = max(FLOPs / effective_flops, bytes / memory_bandwidth) + step_overhead, where bytes are the
  weights read once per step plus every sequence's KV cache.
- A2 A batch is padded: every sequence is costed at the batch's longest prompt and the mean
  context over the longest generation, ctx = max I + max O / 2 (static batching).
- A3 Rounds per batch: N(γ) = max_k ceil(O_k / E(α_k, γ)) with E the expected tokens per round
  under i.i.d. acceptance (fixed-output-length, expected-value model; no variance).
- A4 One SD round of a group of g sequences: draft γ steps (batch g, 1 new token each), send the
  drafts (latency + bytes / rate), verify (batch g, γ+1 new tokens each), return verdicts
  (latency + bytes / rate). The drafter's catch-up on the bonus token is neglected.
- A5 Pipelining (the paper's draft/verify overlap): a batch of n ≥ 2 may be split into two groups
  of ceil(n/2) that alternate, so one group drafts while the other is sent, verified and answered.
  With d the draft time and s = transfer + verify + downlink of a group, the exact two-group
  schedule takes d + s + (2N − 1)·max(d, s) (both groups costed at the larger group's size).
- A6 AD (γ = 0): the verifier decodes the batch N = max O_k times; tokens stream back to the
  drafter node without stalling the verifier, so only the last downlink is on the critical path.
- A7 Prefill: the drafter node forwards the prompts to the verifier (latency + bytes / rate); the
  draft and target prefills run in parallel, prefill = max(draft prefill, forward + target prefill).
- A8 Batches run one after another in plan order; batch m starts when the previous one has ended
  and all its prompts have been uploaded. A task completes when its batch completes.
- A13 Serving terms (a serving profile, `ServingSystem.serving`; each measured, each zero changes nothing):
  forwards as the serving processes run them (their tables replace the nodes' step times); per round, the
  drafter node's and the wire's framework time (per sequence, on the draft stage) and the verifier's
  (per batch, on the verify stage); the session open as a round trip of its own (the prompt goes up with
  the open, the first block leaves when `session opened` is back), plus its measured handling; the user's
  HTTP request; the target's prefill in the first verification (not beside the draft prefill).
- A14 Several drafter nodes (`node_latencies`): devices that share CPU cores share them by processor sharing,
  each capped by its quota, starting their passes when their verdicts arrive (`shared_core_durations_s`); the
  number of rounds is random (`rounds_distribution`), which gives the p90 as well as the mean.
- A15 The shared verifier (`verifier_queue`): one session per node in closed loop; a batch takes in the drafts
  that arrived during the last one (Poisson), a draft waits for the rest of the batch it finds running.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from edgespec.plan.profile import profile_prefill_time_s, profile_step_time_s
from edgespec.plan.scenario import LinkSpec, ModelShape, NodeSpec, ServingSystem, SpecConfig, Task

__all__ = [
    "param_count",
    "weight_bytes",
    "kv_bytes_per_token",
    "flops_per_token",
    "step_time_s",
    "prefill_time_s",
    "batch_memory_bytes",
    "draft_bytes_per_token",
    "expected_tokens",
    "rounds_needed",
    "RoundTimes",
    "draft_step_s",
    "verify_step_s",
    "round_times",
    "serve_time_s",
    "batch_prefill_s",
    "batch_cost_s",
    "effective_pipelined",
    "BatchBreakdown",
    "batch_breakdown",
    "PlannedBatch",
    "Breakdown",
    "TaskLatency",
    "BatchTiming",
    "PlanLatency",
    "evaluate_plan",
    "rounds_distribution",
    "shared_core_durations_s",
    "DeviceNode",
    "NodeLatency",
    "VerifierQueue",
    "verifier_queue",
    "node_latencies",
]


# ----------------------------------------------------------------------------- compute (A1)


def param_count(model: ModelShape) -> float:
    """Parameters of the attention and FFN matrices plus embeddings (norms and biases neglected)."""
    h, kv, ff = model.hidden, model.kv_width, model.ffn_hidden
    per_layer = 2 * h * h + 2 * h * kv + (3 if model.swiglu else 2) * h * ff
    embeddings = model.vocab * h * (1 if model.tied_embeddings else 2)
    return float(model.n_layers * per_layer + embeddings)


def weight_bytes(model: ModelShape) -> float:
    """Bytes of weights read per forward step."""
    return param_count(model) * model.dtype_bytes


def kv_bytes_per_token(model: ModelShape) -> float:
    """KV-cache bytes per token of context: K and V of width kv for every layer."""
    return 2.0 * model.n_layers * model.kv_width * model.dtype_bytes


def flops_per_token(model: ModelShape, context_tokens: Any) -> np.ndarray:
    """Forward FLOPs per new token at a given context: DESIGN §4's per-layer count plus the LM head."""
    h, kv, ff = model.hidden, model.kv_width, model.ffn_hidden
    ctx = np.asarray(context_tokens, dtype=float)
    ffn = (6 if model.swiglu else 4) * h * ff
    per_layer = 4 * h * h + 4 * h * kv + 4 * ctx * h + ffn
    return model.n_layers * per_layer + 2.0 * h * model.vocab


def step_time_s(node: NodeSpec, batch_size: Any, new_tokens: Any, context_tokens: Any) -> np.ndarray:
    """Wall time of one forward over `batch_size` sequences adding `new_tokens` each (profile, else roofline)."""
    if node.profile is not None:
        return profile_step_time_s(node.profile, batch_size, new_tokens)
    n = np.asarray(batch_size, dtype=float)
    t = np.asarray(new_tokens, dtype=float)
    ctx = np.asarray(context_tokens, dtype=float)
    flops = n * t * flops_per_token(node.model, ctx)
    mem = weight_bytes(node.model) + n * ctx * kv_bytes_per_token(node.model)
    return np.maximum(flops / node.effective_flops, mem / node.memory_bandwidth_bytes_per_s) + node.step_overhead_s


def prefill_time_s(node: NodeSpec, batch_size: Any, prompt_tokens: Any) -> np.ndarray:
    """Wall time to prefill `batch_size` prompts of `prompt_tokens` tokens (mean attention context prompt/2)."""
    if node.profile is not None:
        return profile_prefill_time_s(node.profile, batch_size, prompt_tokens)
    p = np.asarray(prompt_tokens, dtype=float)
    return step_time_s(node, batch_size, p, p / 2.0)


def batch_memory_bytes(node: NodeSpec, batch_size: Any, context_tokens: Any) -> np.ndarray:
    """Device memory a batch needs: weights plus the KV cache of every sequence at its full context."""
    n = np.asarray(batch_size, dtype=float)
    return weight_bytes(node.model) + n * np.asarray(context_tokens, dtype=float) * kv_bytes_per_token(node.model)


# ----------------------------------------------------------------------------- wire format


def draft_bytes_per_token(spec: SpecConfig, vocab: int) -> float:
    """Bytes on the link per drafted token: the token id plus q (top-K pairs, the full vector, or nothing)."""
    if spec.q_mode == "topk":
        return spec.id_bytes + spec.top_k * (spec.id_bytes + spec.prob_bytes)
    if spec.q_mode == "full":
        return spec.id_bytes + vocab * spec.prob_bytes
    return spec.id_bytes


# ----------------------------------------------------------------------------- rounds (A3)


def expected_tokens(alpha: Any, gamma: Any) -> np.ndarray:
    """Vectorised E(γ) = (1 − α^(γ+1)) / (1 − α) (see edgespec.spec.theory.expected_tokens_per_round)."""
    a = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma, dtype=float)
    return (1.0 - a ** (g + 1.0)) / (1.0 - a)


def rounds_needed(output_tokens: Any, alpha: Any, gamma: Any) -> np.ndarray:
    """Rounds for one sequence to emit `output_tokens` tokens: ceil(O / E(α, γ)) (tiny slack against rounding)."""
    o = np.asarray(output_tokens, dtype=float)
    return np.ceil(o / expected_tokens(alpha, gamma) - 1e-9)


# ----------------------------------------------------------------------------- one round (A4)


@dataclass(frozen=True)
class RoundTimes:
    """Times of one round of one group (floats or broadcast arrays)."""

    draft_s: Any
    transfer_s: Any
    verify_s: Any
    downlink_s: Any


def draft_step_s(system: ServingSystem, group_size: Any, context_tokens: Any) -> np.ndarray:
    """One draft step of a group: the serving profile's pass per drafted token when there is one (A13), else the drafter's."""
    if system.serving is not None:
        return profile_step_time_s(system.serving.draft_step, group_size, 1)
    return step_time_s(system.drafter, group_size, 1, context_tokens)


def verify_step_s(system: ServingSystem, group_size: Any, new_tokens: Any, context_tokens: Any) -> np.ndarray:
    """One verification of a group: the serving process's forwards plus its framework time per batch (A13), else the verifier's step."""
    sv = system.serving
    if sv is not None:
        return profile_step_time_s(sv.target_forward, group_size, new_tokens) + sv.verifier_framework.at(group_size)
    return step_time_s(system.verifier, group_size, new_tokens, context_tokens)


def round_times(system: ServingSystem, group_size: Any, gamma: Any, context_tokens: Any) -> RoundTimes:
    """Draft, draft-transfer, verify and verdict-downlink times of one round for a group (A4, A6 for γ = 0, A13)."""
    g = np.asarray(group_size, dtype=float)
    gam = np.asarray(gamma, dtype=float)
    link, spec = system.link, system.speculation
    sd = gam > 0
    draft = gam * draft_step_s(system, g, context_tokens)
    if system.serving is not None:  # the drafter node's and the wire's time per round of a group drafted together (A13)
        draft = draft + np.where(sd, system.serving.drafter_framework.at(g), 0.0)
    payload_bytes = g * gam * draft_bytes_per_token(spec, system.verifier.model.vocab) + spec.message_overhead_bytes
    transfer = np.where(sd, link.latency_s + 8.0 * payload_bytes / link.uplink_bps, 0.0)
    verify = verify_step_s(system, g, gam + 1.0, context_tokens)
    verdict_bytes = g * spec.verdict_bytes + spec.message_overhead_bytes
    downlink = link.latency_s + 8.0 * verdict_bytes / link.downlink_bps + 0.0 * g
    return RoundTimes(draft, transfer, verify, downlink)


def effective_pipelined(batch_size: Any, gamma: Any, pipelined: Any) -> np.ndarray:
    """Pipelining needs two groups and something to draft: n ≥ 2 and γ ≥ 1."""
    return np.asarray(pipelined, dtype=bool) & (np.asarray(batch_size) >= 2) & (np.asarray(gamma) >= 1)


def serve_time_s(rt: RoundTimes, rounds: Any, gamma: Any, pipelined: Any) -> np.ndarray:
    """Time to run all rounds of a batch after prefill: AD (A6), sequential SD, or two-group pipelined SD (A5)."""
    n_rounds = np.asarray(rounds, dtype=float)
    gam = np.asarray(gamma)
    s = rt.transfer_s + rt.verify_s + rt.downlink_s
    sequential = n_rounds * (rt.draft_s + s)
    piped = rt.draft_s + s + (2.0 * n_rounds - 1.0) * np.maximum(rt.draft_s, s)
    ad = n_rounds * rt.verify_s + rt.downlink_s
    return np.where(gam == 0, ad, np.where(np.asarray(pipelined, dtype=bool), piped, sequential))


def batch_prefill_s(system: ServingSystem, batch_size: Any, max_input: Any, sum_input: Any, gamma: Any) -> np.ndarray:
    """Prefill of a batch (A7): forward prompts and prefill the target, in parallel with the draft prefill (SD only).

    With serving terms (A13): the user's HTTP request, then the later of the draft prefill and the open's
    round trip less the first round's draft (the first block waits for `session opened`), then the target's
    prefill in the serving process (it runs in the first verification).
    """
    link, spec = system.link, system.speculation
    forward = link.latency_s + 8.0 * (np.asarray(sum_input, dtype=float) * spec.id_bytes + spec.message_overhead_bytes) / link.uplink_bps
    draft = prefill_time_s(system.drafter, batch_size, max_input)
    sv = system.serving
    if sv is None:
        target = forward + prefill_time_s(system.verifier, batch_size, max_input)
        return np.where(np.asarray(gamma) > 0, np.maximum(draft, target), target)
    opened = forward + sv.open_s + link.latency_s + 8.0 * (spec.verdict_bytes + spec.message_overhead_bytes) / link.downlink_bps
    first_draft = round_times(system, batch_size, gamma, max_input).draft_s
    target = profile_prefill_time_s(sv.target_forward, batch_size, max_input)
    sd = np.maximum(draft, opened - first_draft) + target
    return sv.request_s + np.where(np.asarray(gamma) > 0, sd, opened + target)


def batch_cost_s(
    system: ServingSystem,
    batch_size: Any,
    max_input: Any,
    max_output: Any,
    sum_input: Any,
    rounds: Any,
    gamma: Any,
    pipelined: Any,
) -> np.ndarray:
    """Prefill + serve time of batches (vectorised; inf where a batch does not fit in device memory)."""
    n = np.asarray(batch_size, dtype=float)
    gam = np.asarray(gamma)
    piped = effective_pipelined(n, gam, pipelined)
    group = np.where(piped, np.ceil(n / 2.0), n)
    ctx = np.asarray(max_input, dtype=float) + np.asarray(max_output, dtype=float) / 2.0
    rt = round_times(system, group, gam, ctx)
    total = batch_prefill_s(system, n, max_input, sum_input, gam) + serve_time_s(rt, rounds, gam, piped)
    full_ctx = np.asarray(max_input, dtype=float) + np.asarray(max_output, dtype=float) + gam + 1.0
    fits = (batch_memory_bytes(system.verifier, n, full_ctx) <= system.verifier.memory_bytes) & (
        (gam == 0) | (batch_memory_bytes(system.drafter, n, full_ctx) <= system.drafter.memory_bytes)
    )
    return np.where(fits, total, np.inf)


# ----------------------------------------------------------------------------- one batch, readable


@dataclass(frozen=True)
class BatchBreakdown:
    """Latency of one batch from its start, seen by any of its tasks; serve = draft + transfer + verify + downlink + stall."""

    batch_size: int
    gamma: int
    pipelined: bool
    rounds: int
    group_size: int
    context_tokens: float
    prefill_s: float
    draft_compute_s: float
    draft_transfer_s: float
    verify_compute_s: float
    downlink_s: float
    pipeline_stall_s: float
    serve_s: float
    total_s: float
    fits_memory: bool


def batch_breakdown(system: ServingSystem, tasks: Sequence[Task], gamma: int, pipelined: bool) -> BatchBreakdown:
    """Breakdown of one batch: a task's own N rounds of each stage, plus the stall while the other group holds a stage."""
    n = len(tasks)
    if n == 0:
        raise ValueError("a batch needs at least one task")
    max_in = max(t.input_tokens for t in tasks)
    max_out = max(t.output_tokens for t in tasks)
    sum_in = sum(t.input_tokens for t in tasks)
    rounds = int(max(rounds_needed(t.output_tokens, t.alpha, gamma) for t in tasks))
    piped = bool(effective_pipelined(n, gamma, pipelined))
    group = math.ceil(n / 2) if piped else n
    ctx = max_in + max_out / 2.0
    rt = round_times(system, group, gamma, ctx)
    d, x, v, y = (float(np.asarray(val)) for val in (rt.draft_s, rt.transfer_s, rt.verify_s, rt.downlink_s))
    serve = float(serve_time_s(rt, rounds, gamma, piped))
    prefill = float(batch_prefill_s(system, n, max_in, sum_in, gamma))
    total = float(batch_cost_s(system, n, max_in, max_out, sum_in, rounds, gamma, piped))
    downlink = y if gamma == 0 else rounds * y
    stall = serve - rounds * (d + x + v) - downlink
    return BatchBreakdown(
        batch_size=n, gamma=int(gamma), pipelined=piped, rounds=rounds, group_size=group, context_tokens=ctx,
        prefill_s=prefill, draft_compute_s=rounds * d, draft_transfer_s=rounds * x, verify_compute_s=rounds * v,
        downlink_s=downlink, pipeline_stall_s=max(stall, 0.0), serve_s=serve, total_s=total,
        fits_memory=math.isfinite(total),
    )


# ----------------------------------------------------------------------------- a whole plan (A8)


@dataclass(frozen=True)
class PlannedBatch:
    """One batch of a plan: which tasks (by task_id), its speculation length and whether it is pipelined."""

    task_ids: tuple[int, ...]
    gamma: int
    pipelined: bool


@dataclass(frozen=True)
class Breakdown:
    """Latency components that add up to `total_s` (see TaskLatency and PlanLatency for what each means)."""

    upload_s: float
    queue_s: float
    prefill_s: float
    draft_compute_s: float
    draft_transfer_s: float
    verify_compute_s: float
    downlink_s: float
    pipeline_stall_s: float
    total_s: float


@dataclass(frozen=True)
class TaskLatency:
    """One task's latency: its own upload, the queue until its batch starts, then its batch's breakdown."""

    task_id: int
    batch_index: int
    breakdown: Breakdown


@dataclass(frozen=True)
class BatchTiming:
    """When a batch runs: it starts at max(previous end, last upload of its tasks)."""

    start_s: float
    end_s: float
    ready_s: float
    detail: BatchBreakdown


@dataclass(frozen=True)
class PlanLatency:
    """Predicted latency of a plan: makespan (the objective), per-batch timings and per-task breakdowns.

    `breakdown` is the critical path of the makespan: `upload_s` is the time the servers waited
    for uploads (before the first batch and between batches), `queue_s` is 0, and the rest are
    sums over batches.
    """

    makespan_s: float
    mean_task_latency_s: float
    breakdown: Breakdown
    batches: tuple[BatchTiming, ...]
    tasks: tuple[TaskLatency, ...]


def evaluate_plan(
    system: ServingSystem, tasks: Sequence[Task], batches: Sequence[PlannedBatch], upload_s: Sequence[float]
) -> PlanLatency:
    """Timeline of a plan (A8): batches in order, each starting when the previous ends and its uploads are done.

    `upload_s[i]` is the upload time of `tasks[i]`; every task must appear in exactly one batch.
    """
    by_id = {t.task_id: i for i, t in enumerate(tasks)}
    seen = [tid for b in batches for tid in b.task_ids]
    if sorted(seen) != sorted(by_id):
        raise ValueError("a plan must place every task in exactly one batch")
    end = 0.0
    waited = 0.0
    timings: list[BatchTiming] = []
    per_task: list[TaskLatency] = []
    for m, batch in enumerate(batches):
        members = [tasks[by_id[tid]] for tid in batch.task_ids]
        detail = batch_breakdown(system, members, batch.gamma, batch.pipelined)
        ready = max(float(upload_s[by_id[tid]]) for tid in batch.task_ids)
        start = max(end, ready)
        waited += start - end
        end = start + detail.total_s
        timings.append(BatchTiming(start, end, ready, detail))
        for tid in batch.task_ids:
            up = float(upload_s[by_id[tid]])
            per_task.append(TaskLatency(tid, m, _task_breakdown(up, start - up, detail, end)))
    per_task.sort(key=lambda t: t.task_id)
    parts = [t.detail for t in timings]
    total = Breakdown(
        upload_s=waited,
        queue_s=0.0,
        prefill_s=sum(p.prefill_s for p in parts),
        draft_compute_s=sum(p.draft_compute_s for p in parts),
        draft_transfer_s=sum(p.draft_transfer_s for p in parts),
        verify_compute_s=sum(p.verify_compute_s for p in parts),
        downlink_s=sum(p.downlink_s for p in parts),
        pipeline_stall_s=sum(p.pipeline_stall_s for p in parts),
        total_s=end,
    )
    mean = sum(t.breakdown.total_s for t in per_task) / len(per_task)
    return PlanLatency(end, mean, total, tuple(timings), tuple(per_task))


def _task_breakdown(upload: float, queue: float, d: BatchBreakdown, end: float) -> Breakdown:
    return Breakdown(
        upload_s=upload,
        queue_s=queue,
        prefill_s=d.prefill_s,
        draft_compute_s=d.draft_compute_s,
        draft_transfer_s=d.draft_transfer_s,
        verify_compute_s=d.verify_compute_s,
        downlink_s=d.downlink_s,
        pipeline_stall_s=d.pipeline_stall_s,
        total_s=end,
    )


# ----------------------------------------------------------------------------- several drafter nodes (A14)


def rounds_distribution(output_tokens: int, per_position: Sequence[float], gamma: int) -> np.ndarray:
    """P(R = r) for r = 0..output_tokens: rounds one sequence needs to emit `output_tokens` tokens.

    Per round, draft position i is accepted with a_i given 1..i−1 were (`per_position`, the last value
    repeating), the round emits accepted + 1 tokens, and γ is capped at the tokens left − 1 (as the drafter
    node does), so the last rounds draft less. Exact under independent rounds (a dynamic programme).
    """
    curve = list(per_position) or [0.0]
    a = [curve[min(i, len(curve) - 1)] for i in range(max(gamma, 0))]
    dist = [np.zeros(output_tokens + 1) for _ in range(output_tokens + 1)]  # dist[t][r]: from t tokens emitted
    dist[output_tokens][0] = 1.0
    for t in range(output_tokens - 1, -1, -1):
        g = max(0, min(gamma, output_tokens - t - 1))
        survive = 1.0
        for k in range(g + 1):  # k draft tokens accepted, then the first rejection (or all g accepted)
            p_k = survive * (1.0 - a[k]) if k < g else survive
            if p_k > 0:
                dist[t][1:] += p_k * dist[min(output_tokens, t + k + 1)][:-1]
            if k < g:
                survive *= a[k]
    return dist[0]


def shared_core_durations_s(starts_s: Sequence[float], work_s: Sequence[float], caps: Sequence[float], cores: float = 1.0,
                            efficiency: float = 1.0) -> np.ndarray:
    """How long each job takes when jobs share `cores` CPU cores by processor sharing (A14).

    Job i starts at `starts_s[i]` with `work_s[i]` seconds of one whole core's work and runs at most at `caps[i]`
    cores (a CPU quota); while more jobs run than there are cores the capacity is `cores · efficiency`, shared
    equally with what a capped job leaves going to the others (water-filling). One job alone takes work/cap.
    """
    from edgespec.sim.cores import share_rates  # the simulator's rule, the same arithmetic

    n = len(starts_s)
    remaining = [max(float(w), 0.0) for w in work_s]
    end = [math.nan] * n
    pending = sorted(range(n), key=lambda i: starts_s[i])
    running: list[int] = []
    now = float(starts_s[pending[0]]) if n else 0.0
    while pending or running:
        while pending and starts_s[pending[0]] <= now + 1e-15:
            running.append(pending.pop(0))
        if not running:
            now = float(starts_s[pending[0]])
            continue
        capacity = cores * (efficiency if len(running) > cores else 1.0)
        rates = share_rates([float(caps[i]) for i in running], capacity)
        to_end = min(remaining[i] / r for i, r in zip(running, rates))
        to_start = float(starts_s[pending[0]]) - now if pending else math.inf
        step = min(to_end, to_start)
        for i, r in zip(running, rates):
            remaining[i] -= r * step
        now += step
        for i in [i for i in running if remaining[i] <= 1e-12 * max(1.0, work_s[i])]:
            end[i] = now
            running.remove(i)
    return np.asarray(end) - np.asarray(starts_s, dtype=float)


@dataclass(frozen=True)
class DeviceNode:
    """One drafter node of several: its name, its link to the verifier and its device's slowdown (a CPU quota on shared cores)."""

    name: str
    link: LinkSpec
    slowdown: float = 1.0


@dataclass(frozen=True)
class NodeLatency:
    """One node's predicted request latency (mean and a quantile), TTFT, and what a round costs there."""

    name: str
    mean_latency_s: float
    quantile_latency_s: float
    ttft_s: float
    round_s: float
    draft_s: float
    verify_s: float
    rounds_mean: float
    rounds_quantile: float


@dataclass(frozen=True)
class VerifierQueue:
    """A15: the shared verifier in steady state — mean batch, batch time, utilisation, and a draft's wait before its batch."""

    batch: float
    batch_s: float
    utilisation: float
    wait_s: float


def verifier_queue(cycle_s: Sequence[float], batch_s: Callable[[float, float, float], float]) -> VerifierQueue:
    """A15: one verifier serving one session of each node in closed loop (a fixed point, no constant fitted).

    Node i's draft comes back every `cycle_s[i]` (its round outside the verifier) + wait + batch time, so drafts
    arrive at λ = Σ 1/round_i; a batch takes in the drafts that arrived during the last one, about Poisson(a = λ·v)
    of them, so its mean size is b = E[max(1, N)] = a + e^(−a); the verifier is busy U = λ·v/b of the time, and a
    draft waits on average for the rest of the batch it finds running, U·v/2. `batch_s(b, a, U)` is the time of a
    batch of b drafts during which a drafts arrive, back to back a fraction U of the time.
    """
    b, a, u, wait = 1.0, 0.0, 0.0, 0.0
    v = batch_s(1.0, 0.0, 0.0)
    for _ in range(500):
        lam = sum(1.0 / (c + wait + v) for c in cycle_s)
        a = lam * v
        b = a + math.exp(-a)
        u = min(1.0, a / b)
        v_new = batch_s(b, a, u)
        wait_new = u * v_new / 2.0
        if abs(v_new - v) < 1e-9 and abs(wait_new - wait) < 1e-9:
            break
        v, wait = 0.5 * (v + v_new), 0.5 * (wait + wait_new)
    return VerifierQueue(b, v, u, wait)


def node_latencies(system: ServingSystem, nodes: Sequence[DeviceNode], *, input_tokens: int, output_tokens: int, gamma: int,
                   per_position: Sequence[float], device_cores: int = 0, quantile: float = 0.9,
                   per_prompt: Sequence[Sequence[float]] = ()) -> dict[str, NodeLatency]:
    """The latency model per drafter node when several share one verifier (A14, A15 with A7 and A13 per node).

    Node i's round is its draft (γ steps, plus the serving framework time; on shared cores the processor-sharing
    duration of that work, started when its verdict arrives, next to the device work off its path, else the work ×
    its slowdown), its upload, the wait for the verifier and the verification of the verifier's mean batch (A15),
    and its downlink. Its first round adds the prefill (A7/A13); a request of R rounds takes first round + (R − 1)
    rounds, R from `rounds_distribution` — of `per_position`, or the mixture over `per_prompt` (single prompts'
    measured curves: a request's prompt is one of them, equally likely).
    """
    n, ctx = len(nodes), input_tokens + output_tokens / 2.0
    sv = system.serving
    systems = [replace(system, link=d.link) for d in nodes]
    times = [round_times(s, 1, gamma, ctx) for s in systems]
    work = [float(t.draft_s) for t in times]  # one device's draft stage at a whole core
    if device_cores > 0:  # each node's draft work, and the device work off its path, from its verdict's arrival
        caps = [sv.quota_cap(d.slowdown) if sv is not None else 1.0 / d.slowdown for d in nodes]
        efficiency = sv.core_efficiency(n) if sv is not None else 1.0
        starts = [float(t.downlink_s) for t in times]
        background = [sv.drafter_background_s if sv is not None else 0.0] * n
        draft = shared_core_durations_s(starts + starts, work + background, caps + caps, device_cores, efficiency)[:n]
    else:
        draft = np.array([w * d.slowdown for w, d in zip(work, nodes)])

    def batch_s(b: float, arrivals: float, busy: float) -> float:
        cost = float(verify_step_s(system, b, gamma + 1, ctx))
        if sv is not None:  # drafts arriving and verdicts leaving during the batch (A13)
            cost += sv.overlap_s * arrivals + sv.verdict_overlap_s * b * busy
        return cost

    queue = verifier_queue([float(dr) + float(t.transfer_s) + float(t.downlink_s) for dr, t in zip(draft, times)], batch_s)
    verify = queue.wait_s + queue.batch_s
    curves = list(per_prompt) or [per_position]
    dist = sum(rounds_distribution(output_tokens, c, gamma) for c in curves) / len(curves)
    r_mean = float(np.dot(np.arange(len(dist)), dist))
    r_q = float(np.searchsorted(np.cumsum(dist), quantile - 1e-12))
    out = {}
    for d, s, t, dr in zip(nodes, systems, times, draft):
        round_s = float(dr) + float(t.transfer_s) + verify + float(t.downlink_s)
        prefill = float(batch_prefill_s(s, 1, input_tokens, input_tokens, gamma))
        if sv is None:  # the model's draft prefill runs on the device: the same slowdown as its draft
            prefill = max(prefill, float(prefill_time_s(s.drafter, 1, input_tokens)) * d.slowdown)
        first = prefill + round_s
        out[d.name] = NodeLatency(d.name, first + (r_mean - 1) * round_s, first + (r_q - 1) * round_s, first, round_s, float(dr),
                                  verify, r_mean, r_q)
    return out
