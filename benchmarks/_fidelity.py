"""The simulator-fidelity machinery shared by benchmarks/sim_fidelity.py and tests/sim/test_sim_fidelity.py.

1. An instrumented loopback deployment. A verifier node (`edgespec.server`) runs in a spawned process of
   its own, a drafter node (`edgespec.edge`) in the calling process, talking the real protocol over
   127.0.0.1 as benchmarks/_serving.py sets them up. Without changing any edgespec module (methods are
   wrapped on the instances) it records:
   - every verification batch (verifier process): drafts, longest γ + 1, prompts prefilled first, the
     target forwards' wall time (`RoundResult.forward_s`), the `verify_batch` call's wall and thread-CPU
     time, and for each draft its wait in the verifier's queue (frame received → its batch started);
   - every draft pass (drafter, on the draft thread): each job's γ, the rows fed a prompt, start and end,
     thread-CPU time;
   - every round (drafter): the previous verdict applied (or the request submitted), the block sent, its
     verdict applied, and the verdict's `RoundTiming` (server time, forwards, busy wait).
2. `calibrate()`: what one run says about the costs the simulator takes, per round and per forward
   (documented on `Calibration`).
3. `write_scenario()` / `simulate_mean()`: the same workload as a simulator scenario (TOML + pair profile)
   and its simulated figures averaged over seeds.
4. The workflow both callers run: `fidelity_grid()` + `measure_profile()`, `run_real()`, `simulate_versions()`,
   `rows_of()` (real vs simulated figures and relative errors per S).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import _serving
from _serving import LOOPBACK, cpu_s, edge_config

LOOPBACK_BPS = 10e9  # loopback rate for the scenario's links: a stated figure (memory copies); messages are ~100 B, so 1e10 vs 1e11 changes nothing

# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class BatchRecord:
    """One verification batch on the verifier (perf_counter seconds of the verifier process)."""

    drafts: int
    max_new: int  # longest γ + 1 in the batch
    prefill_rows: int  # sessions whose prompt was prefilled before the verification forward
    prefill_tokens: int  # the longest of those prompts (tokens fed in the prefill forward)
    forward_s: float  # target forwards (prefill + verification), wall
    call_s: float  # the whole verify_batch call (forwards, verification rule, crops, KV reclaim), wall
    cpu_s: float  # the worker thread's CPU time over the call
    queue_s: tuple[float, ...] = ()  # per draft: its frame received → this batch started (the batch loop's `_run_batch`)


@dataclass(frozen=True)
class PassRecord:
    """One batched draft pass on the drafter's draft thread (perf_counter seconds of the drafter process)."""

    gammas: tuple[int, ...]  # γ of each job with γ > 0
    new_rows: int  # jobs whose session had no draft KV row yet (its prompt is fed in the first step)
    prompt_tokens: int  # the longest such prompt
    start_s: float
    end_s: float
    cpu_s: float

    @property
    def wall_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class RoundRecord:
    """One round of one session, seen from the drafter (perf_counter seconds of the drafter process)."""

    ready_s: float  # the previous verdict applied, or the request submitted
    sent_s: float  # this block sent (just before encoding)
    applied_s: float  # its verdict applied to the transcript
    server_s: float  # RoundTiming: the draft's frame received → its verdict queued (verifier)
    forward_s: float  # RoundTiming: the target forwards of its batch
    busy_wait_s: float  # RoundTiming: its wait behind other batches' forwards
    first: bool  # the session's first round (its draft phase overlaps the open handshake)


# ----------------------------------------------------------------------------- the verifier process


def _verifier_child(conn, target_dir: Optional[str], config: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from edgespec.models.bundle import bundled_path
    from edgespec.models.runtime import CausalLM
    from edgespec.server import VerifierConfig, VerifierNode

    target = CausalLM.load(Path(target_dir) if target_dir else bundled_path("target"))
    batches: list[BatchRecord] = []

    def instrument(node) -> None:
        runner, run_batch = node.runner, node._run_batch
        original = runner.verify_batch
        current: dict = {}

        async def _run_batch(batch, _original=run_batch):  # the batch loop's step: its start ends each draft's queueing
            start = time.perf_counter()
            current["queue"] = tuple(start - q.received_s for q in batch)
            await _original(batch)

        def verify_batch(items, _original=original):
            prefill = [runner.pending_tokens(item.key) - 1 for item in items if runner.is_open(item.key)]
            prefill = [p for p in prefill if p > 0]
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            results = _original(items)
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            forward = max((r.forward_s for r in results if r is not None), default=0.0)
            batches.append(BatchRecord(len(items), max(item.gamma for item in items) + 1, len(prefill), max(prefill, default=0),
                                       forward, wall, cpu, current.pop("queue", ())))
            return results

        node._run_batch, runner.verify_batch = _run_batch, verify_batch

    async def main() -> None:
        node = VerifierNode(VerifierConfig(host=LOOPBACK, port=0, **config), target=target)
        await node.start()
        instrument(node)
        conn.send(node.port)
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            if cmd == "stop":
                break
            if cmd == "batches":
                conn.send({"batches": list(batches), "cpu_s": cpu_s()})
                batches.clear()
            else:
                conn.send({"error": f"unknown command {cmd!r}"})
        await node.stop()
        conn.send("stopped")

    asyncio.run(main())


class VerifierProcess(_serving.VerifierProcess):
    """_serving's verifier process, but its node logs its batches (`take_batches()`) and may load another target.

    `target_dir` None loads the bundled target; `config` goes to `edgespec.server.VerifierConfig`.
    Spawned processes import the caller's main module: callers need an `if __name__ == "__main__":` guard.
    """

    def __init__(self, target_dir: Optional[Path] = None, threads: int = 1, **config):  # not super().__init__: that spawns _serving's child
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_verifier_child, args=(child, str(target_dir) if target_dir else None, config, threads), daemon=True)
        self._proc.start()
        if not self._conn.poll(120):
            self.stop()
            raise RuntimeError("the verifier process did not start")
        self.port = self._conn.recv()
        self.address = f"{LOOPBACK}:{self.port}"

    def take_batches(self) -> tuple[list[BatchRecord], float]:
        """The batches since the last call, and the process's CPU seconds so far."""
        self._conn.send("batches")
        reply = self._conn.recv()
        return reply["batches"], reply["cpu_s"]


# ----------------------------------------------------------------------------- the drafter side


class DrafterProbe:
    """Records a drafter engine's draft passes and rounds (wraps `_draft`, `submit` and `on_verdict` on the instance)."""

    def __init__(self, engine):
        self.engine = engine
        self.passes: list[PassRecord] = []
        self.rounds: list[RoundRecord] = []
        self._ready: dict[int, tuple[float, bool]] = {}  # session key -> (its last verdict applied / it was submitted, no round yet)
        draft, submit, on_verdict = engine._draft, engine.submit, engine.on_verdict

        def _draft(jobs, releases, _original=draft):  # the draft thread
            known = set(engine._rows.keys())
            new = [job for job in jobs if job.gamma > 0 and job.session.key not in known]
            start, cpu0 = time.perf_counter(), time.thread_time()
            out = _original(jobs, releases)
            self.passes.append(PassRecord(tuple(job.gamma for job in jobs if job.gamma > 0), len(new),
                                          max((len(job.transcript) for job in new), default=0), start, time.perf_counter(),
                                          time.thread_time() - cpu0))
            return out

        def _submit(request, _original=submit):
            handle = _original(request)
            self._ready[handle._session.key] = (handle._session.started_at, True)
            return handle

        def _on_verdict(key, verdict, _original=on_verdict):
            s = engine._sessions.get(key)
            block = s.inflight if s is not None else None
            _original(key, verdict)
            if block is None or not verdict.HasField("timing") or key not in self._ready:
                return
            now = time.perf_counter()
            ready, first = self._ready[key]
            t = verdict.timing
            self.rounds.append(RoundRecord(ready, block.sent_at, now, t.server_us / 1e6, t.forward_us / 1e6, t.busy_wait_us / 1e6, first))
            self._ready[key] = (now, False)

        engine._draft, engine.submit, engine.on_verdict = _draft, _submit, _on_verdict

    def reset(self) -> None:
        """Forget what was recorded (between runs, with no request in flight)."""
        self.passes.clear()
        self.rounds.clear()
        self._ready.clear()


@dataclass
class RealRun:
    """One closed-loop run of the real deployment: per-request figures and everything the probes recorded."""

    sessions: int
    wall_s: float
    e2e_s: list[float]
    ttft_s: list[float]
    tokens: list[int]
    drafted: int
    accepted: int
    rounds_total: int
    batches: list[BatchRecord] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    drafter_cpu_s: float = 0.0
    verifier_cpu_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / self.wall_s

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_batch(self) -> float:
        return _mean(b.drafts for b in self.batches)

    @property
    def mean_pass(self) -> float:
        return _mean(len(p.gammas) for p in self.passes if p.gammas)

    def write_json(self, path: Path) -> None:
        """Everything recorded, as JSON (records as lists in their fields' order)."""
        from dataclasses import astuple

        data = {k: v for k, v in self.__dict__.items() if k not in ("batches", "passes", "rounds")}
        for name in ("batches", "passes", "rounds"):
            records = getattr(self, name)
            data[name] = {"fields": list(type(records[0]).__dataclass_fields__) if records else [], "rows": [astuple(r) for r in records]}
        path.write_text(json.dumps(data), encoding="utf-8")


async def closed_loop(engine, prompts: Sequence[Sequence[int]], sessions: int, requests_per_session: int, max_tokens: int):
    """`sessions` clients each send `requests_per_session` greedy requests of `max_tokens` tokens (EOS ignored) back to back.

    Client i's j-th request uses prompt (i + j·sessions) mod len(prompts), so when sessions × requests_per_session
    is a multiple of len(prompts) every prompt is sent equally often. Returns (Finished results, wall seconds).
    """
    from edgespec.edge.engine import GenerationRequest
    from edgespec.spec.sampling import SamplingParams

    outs = []

    async def client(i: int) -> None:
        for j in range(requests_per_session):
            k = i + j * sessions
            request = GenerationRequest(tuple(prompts[k % len(prompts)]), max_tokens, SamplingParams(0.0), seed=k, stop_at_eos=False)
            outs.append(await engine.submit(request).result())

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(sessions)))
    return outs, time.perf_counter() - t0


async def measure_real(node, verifier: VerifierProcess, probe: DrafterProbe, prompts, sessions: int, requests_per_session: int,
                       max_tokens: int) -> RealRun:
    """One closed-loop run on a started drafter node; the probes are emptied first and read after."""
    _, vcpu0 = verifier.take_batches()
    probe.reset()
    cpu0 = cpu_s()
    outs, wall = await closed_loop(node.engine, prompts, sessions, requests_per_session, max_tokens)
    batches, vcpu1 = verifier.take_batches()
    return RealRun(sessions, wall, [o.stats.wall_s for o in outs], [o.stats.ttft_s for o in outs], [o.completion_tokens for o in outs],
                   sum(o.stats.drafted_tokens for o in outs), sum(o.stats.accepted_tokens for o in outs), sum(o.stats.rounds for o in outs),
                   batches, list(probe.passes), list(probe.rounds), cpu_s() - cpu0, vcpu1 - vcpu0)


# ----------------------------------------------------------------------------- calibration


def _mean(xs) -> float:
    xs = list(xs)
    return statistics.fmean(xs) if xs else 0.0


@dataclass(frozen=True)
class Calibration:
    """What one real run says about the costs the simulator takes (means over the run, seconds).

    Per round, the real time splits into what the simulator models — the draft pass that drafted the block
    and any wait for an earlier pass still running, the wait in the verifier's queue (batching window and
    earlier batches), the verifying call — and framework time it does not:
    - `wire_s`: round − server (RoundTiming): the drafter's encode, send, receive and apply, both loopback
      trips, the verdict's wait in the verifier's outbox;
    - `verifier_loop_s`: server − queue wait − the verifying call: the verifier's event loop and thread
      hand-offs (decode, validation, scheduling, `asyncio.to_thread`, building the verdict);
    - `drafter_loop_s`: the drafter's turnaround outside draft passes: verdict applied → the pass that drafts
      the next block starts (less any wait for a pass still running), plus that pass's end → the block sent
      (executor hand-offs, planning, `_try_send`). First rounds are left out (they overlap the open handshake).
    Their sum, `framework_s`, is what a round costs beyond the modelled parts; the calibrated scenario puts
    half of it on each direction of the link. Per verifying call, `verifier_extra_s` = call − forwards (the
    verification rule, crops, KV reclaim) keeps the verifier busy too: it is added to every verification.
    Compute: `verify_ratio` / `draft_ratio` = in-run forward (pass) wall time / the pair profile's prediction
    for the same batches (passes); the `*_cpu_ratio`s use the thread's CPU time instead, so wall/CPU is the
    share lost to waiting for a core (contention) and CPU/profile the work the profile's plain forwards lack
    (ragged, masked forwards over every live row, sampling, crops, a different context length).
    """

    wire_s: float
    verifier_loop_s: float
    drafter_loop_s: float
    verifier_extra_s: float
    verify_ratio: float
    draft_ratio: float
    verify_cpu_ratio: float
    draft_cpu_ratio: float
    rounds: int

    @property
    def framework_s(self) -> float:
        return self.wire_s + self.verifier_loop_s + self.drafter_loop_s

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["framework_s"] = self.framework_s
        return out


def _drafter_loop_s(run: RealRun) -> float:
    """Mean drafter turnaround outside draft passes (see `Calibration`), over rounds after each session's first."""
    passes = sorted((p for p in run.passes if p.gammas), key=lambda p: p.start_s)
    starts = [p.start_s for p in passes]
    out = []
    for r in run.rounds:
        if r.first:
            continue
        i = bisect.bisect_left(starts, r.ready_s)  # the first pass after the verdict was applied drafted the block
        if i >= len(passes) or passes[i].end_s > r.sent_s:
            continue
        running_end = passes[i - 1].end_s if i > 0 and passes[i - 1].end_s > r.ready_s else r.ready_s
        out.append(max(0.0, passes[i].start_s - running_end) + (r.sent_s - passes[i].end_s))
    return _mean(out)


def calibrate(run: RealRun, profile) -> Calibration:
    """In-run costs of `run` against the pair profile `profile` (`edgespec.plan.pairprofile.PairProfile`)."""
    from edgespec.plan.profile import profile_prefill_time_s, profile_step_time_s

    def verify_pred(b: BatchRecord) -> float:
        t = float(profile_step_time_s(profile.target, b.drafts, b.max_new))
        if b.prefill_rows:
            t += float(profile_prefill_time_s(profile.target, b.prefill_rows, b.prefill_tokens))
        return t

    def draft_pred(p: PassRecord) -> float:  # as the simulator costs a pass (edgespec.sim.costs.StepCost.draft_pass_s)
        ordered = sorted(p.gammas, reverse=True)
        t = sum(float(profile_step_time_s(profile.draft, sum(1 for g in ordered if g >= s), 1)) for s in range(1, ordered[0] + 1))
        if p.new_rows:
            t += float(profile_prefill_time_s(profile.draft, p.new_rows, p.prompt_tokens))
        return t

    batches = [b for b in run.batches if b.drafts]
    passes = [p for p in run.passes if p.gammas]
    v_pred, d_pred = sum(verify_pred(b) for b in batches), sum(draft_pred(p) for p in passes)
    # per round (weighted by drafts): the verifying call and the queue wait of the draft's own batch
    call_per_round = _mean(b.call_s for b in batches for _ in range(b.drafts))
    queue_per_round = _mean(q for b in batches for q in b.queue_s)
    return Calibration(
        wire_s=_mean(r.applied_s - r.sent_s - r.server_s for r in run.rounds),
        verifier_loop_s=max(0.0, _mean(r.server_s for r in run.rounds) - queue_per_round - call_per_round),
        drafter_loop_s=_drafter_loop_s(run),
        verifier_extra_s=_mean(b.call_s - b.forward_s for b in batches),
        verify_ratio=sum(b.forward_s for b in batches) / v_pred if v_pred else 1.0,
        draft_ratio=sum(p.wall_s for p in passes) / d_pred if d_pred else 1.0,
        verify_cpu_ratio=sum(b.cpu_s for b in batches) / v_pred if v_pred else 1.0,
        draft_cpu_ratio=sum(p.cpu_s for p in passes) / d_pred if d_pred else 1.0,
        rounds=len(run.rounds),
    )


def cost_by_size(run: RealRun, profile) -> dict:
    """Median in-run wall time by batch size against the profile (ms): {"verify": {b: (n, real, profile)}, "draft": {…}}.

    Verification batches without a prefill (γ + 1 tokens; the profile's step time at the batch's longest γ + 1) and
    draft passes without new rows and all at one γ (the profile's γ draft steps of that batch).
    """
    from edgespec.plan.profile import profile_step_time_s

    verify: dict = {}
    draft: dict = {}
    for b in run.batches:
        if b.drafts and not b.prefill_rows:
            verify.setdefault((b.drafts, b.max_new), []).append(b.forward_s)
    for p in run.passes:
        if p.gammas and not p.new_rows and len(set(p.gammas)) == 1:
            draft.setdefault((len(p.gammas), p.gammas[0]), []).append(p.wall_s)
    out = {"verify": {}, "draft": {}}
    for (n, new), xs in sorted(verify.items()):
        if new == max(k[1] for k in verify):
            out["verify"][n] = (len(xs), 1000 * statistics.median(xs), 1000 * float(profile_step_time_s(profile.target, n, new)))
    for (n, g), xs in sorted(draft.items()):
        if g == max(k[1] for k in draft):
            out["draft"][n] = (len(xs), 1000 * statistics.median(xs), 1000 * g * float(profile_step_time_s(profile.draft, n, 1)))
    return out


def real_breakdown(run: RealRun, cal: Calibration) -> dict:
    """Mean seconds per request in the simulator's phases, from the real run's rounds (draft, link, queue, verify).

    draft = previous verdict applied → block sent, less the drafter's framework turnaround; link = the rest
    of the framework time; queue = server − the call − the verifier's loop; verify = the verifying call.
    """
    per_request = len(run.e2e_s) or 1
    rounds = len(run.rounds)
    draft = sum(r.sent_s - r.ready_s for r in run.rounds) - cal.drafter_loop_s * rounds
    server = sum(r.server_s for r in run.rounds)
    call = _mean(b.call_s for b in run.batches for _ in range(b.drafts)) * rounds
    queue = server - call - cal.verifier_loop_s * rounds
    link = (cal.wire_s + cal.verifier_loop_s + cal.drafter_loop_s) * rounds
    return {k: v / per_request for k, v in (("draft_s", draft), ("link_s", link), ("queue_s", queue), ("verify_s", call))}


# ----------------------------------------------------------------------------- the simulator side


def scaled_pair_profile(pp, draft_ratio: float = 1.0, verify_ratio: float = 1.0, verify_extra_s: float = 0.0):
    """`pp` with the draft tables × draft_ratio and the target tables × verify_ratio (+ verify_extra_s per verification step)."""
    import numpy as np

    from edgespec.plan.profile import StepTable

    def scale(table, ratio, extra=0.0):
        return None if table is None else StepTable(table.batch_sizes, table.tokens, np.asarray(table.time_s) * ratio + extra)

    draft = replace(pp.draft, step=scale(pp.draft.step, draft_ratio), prefill=scale(pp.draft.prefill, draft_ratio))
    target = replace(pp.target, step=scale(pp.target.step, verify_ratio, verify_extra_s), prefill=scale(pp.target.prefill, verify_ratio))
    meta = dict(pp.meta, calibrated={"draft_ratio": draft_ratio, "verify_ratio": verify_ratio, "verify_extra_s": verify_extra_s})
    return replace(pp, draft=draft, target=target, meta=meta)


def _shape(lm) -> dict:
    c = lm.config
    return {"name": lm.path.name if lm.path else "model", "n_layers": int(c.num_hidden_layers), "hidden": int(c.hidden_size),
            "ffn_hidden": int(c.intermediate_size), "vocab": int(c.vocab_size),
            "kv_dim": int(getattr(c, "num_key_value_heads", c.num_attention_heads) * (c.hidden_size // c.num_attention_heads)),
            "dtype_bytes": 4, "tied_embeddings": bool(getattr(c, "tie_word_embeddings", False))}


def _toml_table(name: str, values: dict) -> str:
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    return f"[{name}]\n" + "".join(f"{k} = {fmt(v)}\n" for k, v in values.items())


def write_scenario(path: Path, *, name: str, pair_profile: Path, draft_lm, target_lm, prompt_lengths: Sequence[int], max_tokens: int,
                   sessions: int, requests: int, gamma: int, window_s: float, latency_s: float, alpha: float, seed: int = 0,
                   comment: str = "") -> Path:
    """The real workload as an `edgespec sim` scenario: one drafter node with `sessions` closed-loop users, one verifier, loopback links.

    Costs and the greedy acceptance curve come from `pair_profile` (path relative to the scenario's folder
    or absolute); each prompt length is a task (the simulator draws them with equal weight); `latency_s` is
    the one-way latency of each direction (0 for the plain profile).
    """
    from edgespec.plan.pairprofile import load_pair_profile
    from edgespec.plan.profile import write_profile

    pp = load_pair_profile(pair_profile if pair_profile.is_absolute() else path.parent / pair_profile)
    stem = Path(pair_profile).stem
    write_profile(pp.draft, path.parent / f"{stem}.draft.json")
    write_profile(pp.target, path.parent / f"{stem}.target.json")
    parts = [f"# {line}\n" for line in comment.splitlines()]
    parts.append(_toml_table("scenario", {"name": name, "description": "sim_fidelity: the real loopback deployment's workload"}))
    parts.append("# the planner's wireless user uplink (users → drafter node); required by the format, not used by the simulator\n"
                 + _toml_table("uplink", {"bandwidth_hz": 1e6, "upload_bytes_per_token": 4}))
    parts.append(_toml_table("drafter", {"name": "drafter-cpu", "profile": f"{stem}.draft.json"}))
    parts.append(_toml_table("drafter.model", _shape(draft_lm)))
    parts.append(_toml_table("verifier", {"name": "verifier-cpu", "profile": f"{stem}.target.json"}))
    parts.append(_toml_table("verifier.model", _shape(target_lm)))
    parts.append("# 127.0.0.1; latency_s: half the measured framework time per round (0 for the plain profile)\n"
                 + _toml_table("link", {"uplink_bps": LOOPBACK_BPS, "downlink_bps": LOOPBACK_BPS, "latency_s": latency_s}))
    parts.append(_toml_table("speculation", {"q_mode": "ids", "alpha": min(alpha, 0.999)}))  # greedy drafts travel as token ids
    parts.append(_toml_table("planner", {"gamma_max": gamma, "fixed_gamma": gamma}))
    parts.append("# one task per benchmark prompt (its length in tokens); spectral_efficiency is the planner's user uplink, unused here\n")
    for i, length in enumerate(prompt_lengths):
        parts.append("[[task]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in
                                          {"name": f"prompt{i}", "input_tokens": int(length), "output_tokens": max_tokens,
                                           "spectral_efficiency_bps_per_hz": 1.0}.items()))
    parts.append(_toml_table("sim", {"mode": "sd", "gamma_policy": "static", "gamma": gamma, "max_gamma": gamma, "pair_profile": str(pair_profile),
                                     "profile_q_mode": "tokens", "profile_temperature": 0.0, "routing": "round_robin", "seed": seed,
                                     "drafter_nodes": 1}))
    parts.append(_toml_table("sim.verifiers", {"count": 1, "batching": "window", "window_s": window_s, "max_batch_size": 0,
                                               "max_batch_tokens": 2048}))
    parts.append(_toml_table("sim.workload", {"kind": "closed", "requests": requests, "users_per_node": sessions, "think_time_s": 0.0}))
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


@dataclass(frozen=True)
class SimFigures:
    """Simulated figures averaged over seeds (seconds, tokens/s), with their spread across seeds."""

    e2e_s: float
    ttft_s: float
    tokens_per_s: float
    acceptance: float
    mean_batch: float
    mean_pass: float  # blocks per draft pass
    e2e_sd_s: float
    breakdown_s: dict
    seeds: int


def simulate_mean(scenario: Path, seeds: int = 20) -> SimFigures:
    """Run the scenario with seeds 0..seeds−1 (acceptance draws differ) and average the figures."""
    from edgespec.sim.metrics import summarize
    from edgespec.sim.run import simulate
    from edgespec.sim.scenario import load_sim_config

    reports, passes = [], []
    for seed in range(seeds):
        run = simulate(load_sim_config(scenario, seed=seed))
        reports.append(summarize(run))
        passes.append(sum(s.rounds for s in run.sessions) / max(1, sum(d.passes for d in run.drafters)))
    e2e = [r.e2e_s.mean for r in reports]
    keys = reports[0].breakdown_s.keys()
    return SimFigures(statistics.fmean(e2e), statistics.fmean(r.ttft_s.mean for r in reports),
                      statistics.fmean(r.throughput_tok_per_s for r in reports), statistics.fmean(r.acceptance for r in reports),
                      statistics.fmean(r.batch_size.mean for r in reports), statistics.fmean(passes), statistics.pstdev(e2e),
                      {k: statistics.fmean(r.breakdown_s[k] for r in reports) for k in keys}, seeds)


# ----------------------------------------------------------------------------- the workflow

VERSIONS = ("profile", "+framework", "calibrated")


def fidelity_grid(sessions: Sequence[int], gamma: int, max_tokens: int, mean_prompt: float, quick: bool = False):
    """The profile grid the workload needs: batch sizes 1, 2, 4, … up to max S (and every S), verification of 1 and γ + 1
    tokens, prefill of 8/16/32-token prompts, step times at the mean context (mean prompt + max_tokens / 2), and the greedy
    acceptance curve at γ from `max_tokens` new tokens per prompt."""
    from edgespec.models.profiling import AcceptanceSetting, ProfileGrid

    top = max(sessions)
    batches = sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= top} | set(sessions))
    prefill_batches = sorted({b for b in (1, 2, 4, 8) if b <= top} | {top})
    return ProfileGrid(batch_sizes=tuple(batches), draft_tokens=(1,), verify_tokens=tuple(sorted({1, gamma + 1})),
                       prefill_batch_sizes=tuple(prefill_batches), prefill_tokens=(8, 16, 32),
                       context_tokens=int(round(mean_prompt + max_tokens / 2)), warmup=1 if quick else 2, repeats=5 if quick else 9,
                       settings=(AcceptanceSetting("tokens", 0.0),), max_gamma=gamma, new_tokens=max_tokens)


def measure_profile(draft, target, grid, prompts, path: Path, progress=None, command: str = "") -> Path:
    """Measure the pair on `grid` with the workload's prompts (`edgespec.models.profiling.measure_pair`) and write it to `path`."""
    from edgespec.models.profiling import measure_pair
    from edgespec.plan.pairprofile import write_pair_profile

    write_pair_profile(measure_pair(draft, target, grid, prompts=[list(p) for p in prompts], progress=progress, command=command), path)
    return path


async def run_real(draft, prompts, verifier: VerifierProcess, sessions: Sequence[int], requests: int, max_tokens: int, gamma: int,
                   draft_dir: Optional[Path] = None, on_run=None) -> dict:
    """A drafter node (static γ, greedy, no pipelining) on `verifier`; after a warm-up, one closed-loop run of `requests`
    requests per S. `on_run(run)` is called after each. Returns {S: RealRun}."""
    from edgespec.edge import EdgeNode

    config = edge_config(verifier.address, node_id="edge-fidelity", gamma=gamma, max_gamma=gamma, pipeline=False, draft_dir=draft_dir)
    node = EdgeNode(config, draft=draft)
    await node.start()
    runs = {}
    try:
        if not await node.wait_connected(30.0):
            raise RuntimeError("the drafter node did not connect to the verifier")
        probe = DrafterProbe(node.engine)
        await measure_real(node, verifier, probe, prompts, 2, 1, 16)  # warm-up: threads, allocator, caches
        for s in sessions:
            runs[s] = await measure_real(node, verifier, probe, prompts, s, requests // s, max_tokens)
            if on_run is not None:
                on_run(runs[s])
    finally:
        await node.stop()
    return runs


def simulate_versions(runs: dict, profile_path: Path, draft_lm, target_lm, prompts, *, max_tokens: int, gamma: int, window_s: float,
                      out: Path, seeds: int, on_sim=None) -> tuple[dict, dict]:
    """For each S: calibrate from the real run, write the three scenario versions (`VERSIONS`) into `out`, simulate each
    over `seeds` seeds. Returns ({S: {version: SimFigures}}, {S: Calibration})."""
    from edgespec.plan.pairprofile import acceptance_curve, load_pair_profile, write_pair_profile

    pp = load_pair_profile(profile_path)
    alpha = acceptance_curve(pp, "tokens", 0.0).alpha
    lengths = [len(p) for p in prompts]
    sims, cals = {}, {}
    for s, run in runs.items():
        cal = cals[s] = calibrate(run, pp)
        versions = {
            "profile": (pp, 0.0),
            "+framework": (scaled_pair_profile(pp, verify_extra_s=cal.verifier_extra_s), cal.framework_s / 2),
            "calibrated": (scaled_pair_profile(pp, cal.draft_ratio, cal.verify_ratio, cal.verifier_extra_s), cal.framework_s / 2),
        }
        sims[s] = {}
        for name, (profile, latency) in versions.items():
            tag = f"S{s}_{name.strip('+')}"
            ppath = profile_path if profile is pp else out / f"pair_{tag}.json"
            if profile is not pp:
                write_pair_profile(profile, ppath)
            scenario = write_scenario(out / f"fidelity_{tag}.toml", name=f"sim-fidelity-{tag}", pair_profile=Path(ppath.name), draft_lm=draft_lm,
                                      target_lm=target_lm, prompt_lengths=lengths, max_tokens=max_tokens, sessions=s, requests=len(run.e2e_s),
                                      gamma=gamma, window_s=window_s, latency_s=latency, alpha=alpha,
                                      comment=f"benchmarks/sim_fidelity.py: S = {s}, version '{name}' (see its docstring).")
            sims[s][name] = simulate_mean(scenario, seeds)
        if on_sim is not None:
            on_sim(s, run, sims[s], cal)
    return sims, cals


def rel(sim: float, real: float) -> float:
    return sim / real - 1.0 if real else float("nan")


def rows_of(runs: dict, sims: dict) -> list[dict]:
    """Per S: the real figures and each simulated version's, with relative errors (sim / real − 1)."""
    rows = []
    for s, run in runs.items():
        real = {"e2e_ms": 1000 * statistics.fmean(run.e2e_s), "ttft_ms": 1000 * statistics.fmean(run.ttft_s), "tokens_per_s": run.tokens_per_s,
                "acceptance": run.acceptance, "mean_batch": run.mean_batch, "mean_draft_pass": run.mean_pass}
        row = {"sessions": s, "requests": len(run.e2e_s), "real": real}
        for name, f in sims[s].items():
            row[name] = {"e2e_ms": 1000 * f.e2e_s, "ttft_ms": 1000 * f.ttft_s, "tokens_per_s": f.tokens_per_s, "acceptance": f.acceptance,
                         "mean_batch": f.mean_batch, "mean_draft_pass": f.mean_pass, "e2e_sd_across_seeds_ms": 1000 * f.e2e_sd_s,
                         "rel_error_e2e": rel(f.e2e_s, real["e2e_ms"] / 1000), "rel_error_ttft": rel(f.ttft_s, real["ttft_ms"] / 1000),
                         "rel_error_tokens_per_s": rel(f.tokens_per_s, real["tokens_per_s"]),
                         "breakdown_ms": {k.removesuffix("_s"): 1000 * v for k, v in f.breakdown_s.items()}}
        rows.append(row)
    return rows
