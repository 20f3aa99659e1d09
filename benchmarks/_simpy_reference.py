"""A SimPy reference model of distributed speculative decoding: the "process per transfer" design issue 5 measures against.

benchmarks/sim_speed.py times it next to `edgespec.sim.run.simulate` on the same `SimConfig`
(examples/sim_benchmark.toml, loaded through `edgespec.sim.scenario.load_sim_config`), so the speed
ratio is measured in one run on one machine. It is the straightforward SimPy model of the same system,
written with processes and resources, not with our callback kernel (edgespec.sim.kernel):

- **Arrivals**: one process draws Poisson arrivals (the workload's rate) and sends each to a drafter node
  chosen by its group's `weight`, from the same seeded stream as our simulator (so the arrivals agree).
- **Sessions**: one process per request loops rounds until the answer is complete: draft γ tokens (the
  static `[sim] gamma`, capped at remaining − 1) at `config.draft_cost` scaled by the group's slowdown
  (`edgespec.sim.costs.scaled`), one step per token at the session's context, plus the prompt's prefill
  in the first round; acceptance is i.i.d. α per position (the class's α, else the group's, else the
  scenario's `acceptance`), drawn as one geometric variate per block from the session's own stream;
  send the block up (the first also carries the prompt), wait for the verdict, bring it down, emit
  accepted + 1 tokens. A finished session sends a close message up.
- **Links**: every message is a transfer process (`transfer`) on a `simpy.Resource` of capacity 1 per
  node and direction (FIFO serialisation): it holds the transmitter for size·8/rate — plus, when the
  message is lost, a geometric number of extra transmissions each followed by `retransmit_s`, as
  `edgespec.sim.links.Link` — then releases it and waits latency + exponential jitter (arrival order kept).
- **Verifiers**: a session is routed when its first block is sent, join-shortest-queue on the verifiers'
  actual queue lengths (ties: fewer open sessions, then the lower index), and stays there. Each verifier
  is a process: when drafts are queued it waits until the oldest has waited `window_s` (2 ms) — or less
  when the queued drafts fill `max_batch_tokens` or every open session has one queued, as the real
  scheduler does — then takes the queue FIFO within the token limit and holds for
  `config.verify_cost.step_s(batch, longest γ + 1, mean context)` plus the prefill of new sessions'
  prompts; each verdict then travels the node's downlink as its own transfer process.

Simplifications (differences from `edgespec.sim`): KV admission is ignored (examples/sim_benchmark.toml's
budget of 200,000 tokens per verifier holds ~690 sessions; our simulator refuses none there); sessions on
one node draft independently rather than in one batched pass (a small drafter's batch step costs about
what a single step does); routing sees the verifiers' true queues rather than the load hints verdicts
carry; the batch is filled FIFO rather than round-robin across nodes (no batch-size limit, so it takes
the queue either way); each verdict is its own downlink message rather than one per node and batch.
Only `sd` mode, the static γ policy and Poisson workloads are modelled (anything else is a ValueError).

Like `simulate`, a run disables the cycle collector while the event loop runs (so the comparison measures
the designs, not the GC setting). Run on its own: .venv/bin/python benchmarks/_simpy_reference.py [--requests N]
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import simpy

from edgespec.sim.config import SimConfig
from edgespec.sim.costs import StepCost, scaled
from edgespec.sim.links import LinkModel
from edgespec.sim.streams import stream

__all__ = ["SessionRecord", "SimpyRun", "simulate_simpy"]

SCENARIO = Path(__file__).resolve().parents[1] / "examples" / "sim_benchmark.toml"
_EPS_S = 1e-12  # tolerance when comparing the clock with a batch deadline (env.now + (deadline − now) may round below it)


@dataclass
class SessionRecord:
    """One finished request, as the SimPy model saw it."""

    key: int
    node: int
    arrival_s: float
    first_token_s: float = -1.0
    finish_s: float = -1.0
    emitted: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s


@dataclass
class SimpyRun:
    """What a SimPy run leaves behind: the sessions, the simulated end time, SimPy's scheduled events and the wall time."""

    sessions: list[SessionRecord]
    end_s: float
    events: int  # events SimPy put on its heap (timeouts, resource grants, process resumptions, conditions)
    wall_s: float
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def mean_e2e_s(self) -> float:
        return statistics.fmean(s.e2e_s for s in self.sessions)

    @property
    def mean_ttft_s(self) -> float:
        return statistics.fmean(s.first_token_s - s.arrival_s for s in self.sessions)


class _LinkDirection:
    """One direction of a node's link: the transmitter (a capacity-1 resource), the model, its random stream and arrival order."""

    def __init__(self, env: simpy.Environment, model: LinkModel, rng) -> None:
        self.transmitter = simpy.Resource(env, capacity=1)
        self.model, self.rng = model, rng
        self.log_loss = math.log(model.loss) if model.loss > 0 else None
        self.last_arrival_s = 0.0


def transfer(env: simpy.Environment, link: _LinkDirection, size_bytes: float):
    """A process: one message over one link direction (FIFO transmitter, retransmissions, latency, jitter, order kept)."""
    model = link.model
    with link.transmitter.request() as granted:
        yield granted
        wire_s = 8.0 * size_bytes / model.rate_bps
        if link.log_loss is not None:  # attempts until one gets through: each failure costs a transmission and a timeout
            failures = int(math.log(1.0 - link.rng.random()) / link.log_loss)
            wire_s += failures * (wire_s + model.retransmit_s)
        yield env.timeout(wire_s)
    arrival_s = env.now + model.latency_s
    if model.jitter_s:
        arrival_s -= model.jitter_s * math.log(1.0 - link.rng.random())  # exponential, mean jitter_s
    if arrival_s < link.last_arrival_s:
        arrival_s = link.last_arrival_s
    link.last_arrival_s = arrival_s
    yield env.timeout(arrival_s - env.now)


@dataclass
class _Draft:
    """A block queued at a verifier; `verified` succeeds when its batch ends."""

    record: SessionRecord
    arrival_s: float
    gamma: int
    context_tokens: int
    cost_tokens: int  # target positions: γ + 1, plus the prompt on a session's first block
    prefill_tokens: int  # the prompt on a session's first block, else 0
    verified: simpy.Event


class _Verifier:
    """A verifier node: a FIFO queue of drafts and a process that closes window batches and holds for their verify cost."""

    def __init__(self, env: simpy.Environment, index: int, config: SimConfig) -> None:
        self.env, self.index = env, index
        self.cost: StepCost = config.verify_cost
        self.window_s = config.verifiers.window_s
        self.max_batch_tokens = config.verifiers.max_batch_tokens
        self.queue: list[_Draft] = []
        self.queued_tokens = 0
        self.open_sessions = 0  # sessions whose first block has arrived and whose close has not
        self.wakeup = env.event()
        self.batch_sizes: list[int] = []
        env.process(self.run())

    def poke(self) -> None:
        if not self.wakeup.triggered:
            self.wakeup.succeed()

    def put(self, draft: _Draft) -> None:
        if draft.prefill_tokens:
            self.open_sessions += 1
        self.queue.append(draft)
        self.queued_tokens += draft.cost_tokens
        self.poke()

    def close(self) -> None:
        self.open_sessions -= 1
        self.poke()

    def _take_batch(self) -> list[_Draft]:
        """FIFO within the token limit (a draft that does not fit waits for the next batch; the first always goes)."""
        batch, kept, tokens = [], [], 0
        for d in self.queue:
            if batch and tokens + d.cost_tokens > self.max_batch_tokens:
                kept.append(d)
            else:
                batch.append(d)
                tokens += d.cost_tokens
        self.queue = kept
        self.queued_tokens -= tokens
        return batch

    def run(self):
        env = self.env
        while True:
            if not self.queue:
                self.wakeup = env.event()
                yield self.wakeup
                continue
            deadline_s = self.queue[0].arrival_s + self.window_s
            if (env.now < deadline_s - _EPS_S and self.queued_tokens < self.max_batch_tokens
                    and len(self.queue) < self.open_sessions):
                self.wakeup = env.event()
                yield env.timeout(deadline_s - env.now) | self.wakeup
                continue
            batch = self._take_batch()
            max_new = max(d.gamma for d in batch) + 1
            context = sum(d.context_tokens for d in batch) // len(batch)
            cost_s = self.cost.step_s(len(batch), max_new, context)
            prompts = [d.prefill_tokens for d in batch if d.prefill_tokens]
            if prompts:
                cost_s += self.cost.prefill_s(len(prompts), max(prompts))
            self.batch_sizes.append(len(batch))
            yield env.timeout(cost_s)
            for d in batch:
                d.verified.succeed()


class _Model:
    """The SimPy world: drafter nodes (links, draft cost), verifiers, the arrival process and one process per session."""

    def __init__(self, env: simpy.Environment, config: SimConfig) -> None:
        spec, w = config.speculation, config.workload
        if spec.mode != "sd" or spec.gamma_policy != "static" or w.kind != "poisson":
            raise ValueError("the SimPy reference models sd mode, the static γ policy and Poisson arrivals only")
        self.env, self.config = env, config
        self.node_group, self.node_cost, self.uplinks, self.downlinks = [], [], [], []
        index = 0
        for g, group in enumerate(config.drafters):
            cost = scaled(config.draft_cost, group.slowdown)
            for _ in range(group.count):
                self.node_group.append(g)
                self.node_cost.append(cost)
                self.uplinks.append(_LinkDirection(env, group.uplink, stream(config.seed, "uplink", index)))
                self.downlinks.append(_LinkDirection(env, group.downlink, stream(config.seed, "downlink", index)))
                index += 1
        self.verifiers = [_Verifier(env, v, config) for v in range(config.verifiers.count)]
        self.finished: list[SessionRecord] = []
        self.rng = stream(config.seed, "workload")  # the same stream, drawn in the same order, as edgespec.sim.run._Arrivals
        self.node_cum = list(itertools.accumulate(config.drafters[g].weight for g in self.node_group))
        self.class_cum = list(itertools.accumulate(c.weight for c in config.classes))

    def _pick(self, cum: list[float]) -> int:
        return bisect.bisect_right(cum, self.rng.random() * cum[-1])

    def arrivals(self):
        """A process: Poisson arrivals, each to a node chosen by group weight, each a session process."""
        env, w = self.env, self.config.workload
        for key in range(w.requests):
            node = min(self._pick(self.node_cum), len(self.node_group) - 1)
            k = min(self._pick(self.class_cum), len(self.config.classes) - 1)
            env.process(self.session(key, node, k))
            if key + 1 < w.requests:
                yield env.timeout(self.rng.expovariate(w.rate_per_s))

    def _route(self) -> _Verifier:
        return min(self.verifiers, key=lambda v: (len(v.queue), v.open_sessions, v.index))

    def session(self, key: int, node: int, klass_index: int):
        """A process: one request's rounds — draft, upload, verify (queued at its verifier), download — until its answer is complete."""
        env, cfg = self.env, self.config
        spec = cfg.speculation
        klass, group = cfg.classes[klass_index], cfg.drafters[self.node_group[node]]
        alpha = klass.alpha if klass.alpha is not None else group.alpha
        curve = (alpha,) if alpha is not None else spec.acceptance
        rng = stream(cfg.seed, "session", key)
        log_alpha = (math.log(curve[0]) if curve[0] > 0 else -math.inf) if len(curve) == 1 and curve[0] < 1 else None
        draft_cost, uplink, downlink = self.node_cost[node], self.uplinks[node], self.downlinks[node]
        rec = SessionRecord(key, node, env.now)
        prompt, answer = klass.input_tokens, klass.output_tokens
        verifier = None
        while rec.emitted < answer:
            context = prompt + rec.emitted
            cap = answer - rec.emitted - 1
            gamma = spec.gamma if spec.gamma < cap else max(cap, 0)
            accepted = 0
            if gamma and log_alpha is not None:  # P(accepted >= i) = α^i: one geometric draw per block
                accepted = gamma if log_alpha == 0.0 else (0 if log_alpha == -math.inf else int(math.log(1.0 - rng.random()) / log_alpha))
                accepted = min(accepted, gamma)
            elif gamma:  # a per-position curve: position i accepted with a_i until the first rejection
                last = len(curve) - 1
                while accepted < gamma and rng.random() < curve[min(accepted, last)]:
                    accepted += 1
            first = verifier is None
            draft_s = gamma * draft_cost.step_s(1, 1, context) + (draft_cost.prefill_s(1, prompt) if first else 0.0)
            yield env.timeout(draft_s)
            size_bytes = spec.message_overhead_bytes + gamma * spec.draft_bytes_per_token
            if first:
                verifier = self._route()
                size_bytes += prompt * spec.prompt_bytes_per_token
            yield env.process(transfer(env, uplink, size_bytes))
            draft = _Draft(rec, env.now, gamma, context, gamma + 1 + (prompt if first else 0), prompt if first else 0, env.event())
            verifier.put(draft)
            yield draft.verified
            yield env.process(transfer(env, downlink, spec.verdict_bytes))
            rec.emitted += min(accepted + 1, answer - rec.emitted)
            rec.rounds += 1
            rec.drafted += gamma
            rec.accepted += accepted
            if rec.first_token_s < 0:
                rec.first_token_s = env.now
        rec.finish_s = env.now
        self.finished.append(rec)
        env.process(self.close(uplink, verifier))

    def close(self, uplink: _LinkDirection, verifier: _Verifier):
        """A process: the close message travels up; the verifier forgets the session."""
        yield self.env.process(transfer(self.env, uplink, self.config.speculation.message_overhead_bytes))
        verifier.close()


def simulate_simpy(config: SimConfig) -> SimpyRun:
    """Run the SimPy reference on `config` until every request has finished (wall time includes building the model)."""
    started = time.perf_counter()
    env = simpy.Environment()
    model = _Model(env, config)
    env.process(model.arrivals())
    collecting = gc.isenabled()
    gc.disable()
    try:
        env.run()
    finally:
        if collecting:
            gc.enable()
    wall_s = time.perf_counter() - started
    if len(model.finished) != config.workload.requests:
        raise RuntimeError(f"{config.workload.requests - len(model.finished)} requests did not finish")
    eid = getattr(env, "_eid", None)  # SimPy's event counter (private); -1 when a SimPy version lacks it
    events = next(eid) if eid is not None else -1
    batches = [n for v in model.verifiers for n in v.batch_sizes]
    return SimpyRun(sorted(model.finished, key=lambda r: r.key), env.now, events, wall_s, batches)


def main() -> None:
    from edgespec.sim.run import simulate
    from edgespec.sim.scenario import load_sim_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--scenario", type=Path, default=SCENARIO)
    args = ap.parse_args()
    config = load_sim_config(args.scenario)
    config = replace(config, workload=replace(config.workload, requests=args.requests))
    ref = simulate_simpy(config)
    ours = simulate(config)
    ours_e2e_s = statistics.fmean(s.finish_s - s.arrival_s for s in ours.sessions)
    ours_ttft_s = statistics.fmean(s.first_token_s - s.arrival_s for s in ours.sessions)
    print(f"{args.requests} requests  SimPy: {ref.wall_s:.2f} wall s, {args.requests / ref.wall_s:,.0f} conv/s, "
          f"mean e2e {ref.mean_e2e_s * 1e3:.1f} ms, TTFT {ref.mean_ttft_s * 1e3:.1f} ms, {ref.events / args.requests:.0f} events/request")
    print(f"{args.requests} requests  ours:  {ours.wall_s:.2f} wall s, {args.requests / ours.wall_s:,.0f} conv/s, "
          f"mean e2e {ours_e2e_s * 1e3:.1f} ms, TTFT {ours_ttft_s * 1e3:.1f} ms, {ours.events / args.requests:.0f} events/request")


if __name__ == "__main__":
    main()
