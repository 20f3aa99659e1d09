"""Simulated actors: sessions, drafter nodes and verifier nodes, driven by the event loop and deciding through the real policies.

A round of distributed SD, as the real nodes run it: the drafter node drafts a block for every
ready session in one batched pass (γ per session from its γ policy), each block travels the
node's uplink, the verifier queues it in the real `Scheduler` (batching policy, fairness across
drafter nodes, token limit), verifies a batch in one costed forward, and each verdict (accepted
count + one token) travels the downlink; the session emits accepted + 1 tokens and, unless done,
is ready to draft again — rejected positions are drafted again next round. Acceptance is drawn per
position from the session's acceptance curve when the block is drafted (the verifier's decision
does not depend on timing), so SLED's confidence rule can see a signal correlated with it.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Optional

from edgespec.policy.gamma import GammaPolicy, RoundObservation
from edgespec.policy.load import CALIBRATION_CONTEXT_TOKENS, CALIBRATION_SHAPES, ForwardCostFit, VerifierHints, computed_positions
from edgespec.policy.routing import VerifierLoad
from edgespec.server.scheduler import QueuedDraft, Scheduler, SchedulerConfig
from edgespec.sim.batching import make_batching
from edgespec.sim.config import SimConfig, VerifierConfig
from edgespec.sim.cores import SharedCores
from edgespec.sim.costs import StepCost
from edgespec.sim.kernel import DECIDE, TIMER, EventLoop, SimulationError
from edgespec.sim.links import Link

__all__ = ["Session", "DrafterNode", "VerifierNode", "World"]

_log, _NEG_INF = math.log, -math.inf


class Session:
    """One request: its transcript counters, γ policy, acceptance stream, timestamps and time breakdown."""

    __slots__ = (
        "key", "klass", "node", "verifier", "arrival_s", "prompt_tokens", "output_tokens", "emitted", "policy", "curve",
        "rng", "admitted", "new_at_verifier", "new_at_drafter", "gamma", "accept_n", "mark_s", "verify_cost_s",
        "first_token_s", "finish_s", "rounds", "drafted", "accepted", "draft_s", "upload_s", "queue_s", "verify_s",
        "downlink_s", "admission_s", "pending_tokens", "hint", "round_log", "user", "draft_cost_s", "upload_cost_s",
        "observes", "log_alpha", "marks", "sent_s", "arrival_seq", "finishing", "opened", "busy_mark_s", "busy_wait_cost_s",
        "opened_s", "overlapped",
    )

    def __init__(self, key: int, klass: int, node: "DrafterNode", arrival_s: float, prompt_tokens: int, output_tokens: int,
                 policy: Optional[GammaPolicy], curve: tuple[float, ...], rng: random.Random, user: int = -1) -> None:
        self.key, self.klass, self.node, self.user = key, klass, node, user
        self.verifier: Optional[int] = None
        self.arrival_s, self.prompt_tokens, self.output_tokens = arrival_s, prompt_tokens, output_tokens
        self.emitted = 0
        self.policy, self.curve, self.rng = policy, curve, rng
        # fast paths: policies that ignore feedback get none; i.i.d. acceptance without SLED is one geometric draw
        self.observes = policy is not None and type(policy).observe is not GammaPolicy.observe
        simple = len(curve) == 1 and (policy is None or type(policy).should_stop is GammaPolicy.should_stop)
        self.log_alpha = (math.log(curve[0]) if curve[0] > 0 else -math.inf) if simple and curve[0] < 1 else None
        self.admitted, self.new_at_verifier, self.new_at_drafter = False, True, True
        self.gamma = self.accept_n = self.pending_tokens = 0
        self.mark_s = arrival_s  # start of the phase being timed
        self.verify_cost_s = self.draft_cost_s = self.upload_cost_s = 0.0
        self.first_token_s = self.finish_s = -1.0
        self.rounds = self.drafted = self.accepted = 0
        self.draft_s = self.upload_s = self.queue_s = self.verify_s = self.downlink_s = self.admission_s = 0.0
        self.hint = (0, 0, None)  # (queue depth, active sessions, VerifierHints or None) of the last verdict
        self.busy_mark_s = self.busy_wait_cost_s = 0.0  # the verifier's busy seconds done when the block arrived; its wait behind them
        self.round_log: Optional[list] = None  # when tracing: (draft start, sent, at verifier, batch start, batch end, verdict, γ, accepted)
        self.marks = [0.0] * 5
        self.sent_s = 0.0
        self.arrival_seq = 0  # sequence number of the block's arrival (orders the verifier's inbox like events)
        self.finishing = False  # the block in flight completes the answer (known when drafted: acceptance is drawn then)
        self.opened = False  # admitted at a verifier and not yet finished (counted in its node's `open_sessions`)
        self.opened_s = -1.0  # with the open handshake: when `session opened` reaches the node (the prompt went with the open)
        self.overlapped = False  # its draft arrived while the verifier was busy (serving profile: costs `overlap_s`)

    @property
    def remaining(self) -> int:
        return self.output_tokens - self.emitted

    def draw_block(self, gamma: int, noise: float) -> int:
        """Draft up to `gamma` tokens: draw each position's acceptance; SLED's rule may stop early. Sets gamma and accept_n."""
        if self.log_alpha is not None:  # P(n >= i) = α^i: n = floor(log(u) / log(α)), capped at γ
            if gamma <= 0:
                self.gamma = self.accept_n = 0
                return 0
            la = self.log_alpha
            n = gamma if la == 0.0 else (0 if la == _NEG_INF else int(_log(1.0 - self.rng.random()) / la))
            self.gamma, self.accept_n = gamma, (n if n < gamma else gamma)
            return gamma
        curve, last = self.curve, len(self.curve) - 1
        rng, policy = self.rng, self.policy
        accepted, rejected = 0, False
        drafted = 0
        for i in range(gamma):
            u = rng.random()
            if policy is not None and policy.should_stop(1.0 - ((1.0 - noise) * u + noise * rng.random())):
                break
            drafted += 1
            if not rejected and u < curve[i if i < last else last]:
                accepted += 1
            else:
                rejected = True
        self.gamma, self.accept_n = drafted, accepted
        return drafted


class World:
    """Shared run state: the loop, the config, every node, the finished sessions, and the hook for closed-loop users."""

    def __init__(self, loop: EventLoop, config: SimConfig) -> None:
        self.loop, self.config = loop, config
        spec = config.speculation
        # verifiers send load hints with their forward-time model when a γ policy may read them
        self.publish_hints = config.policy_factory is not None or spec.gamma_policy == "adaptive" or spec.load_aware
        self.drafters: list[DrafterNode] = []
        self.verifiers: list[VerifierNode] = []
        self.finished: list[Session] = []
        self.on_finish: Optional[Callable[[Session], None]] = None

    def finish(self, s: Session, now_s: float) -> None:
        """The user has the last token: record, close the session on its verifier, let a closed-loop user go on."""
        s.finish_s = now_s
        s.rng = None  # its acceptance stream is spent: keep finished sessions small (a generator's state is 2.5 kB)
        self.finished.append(s)
        node = s.node
        node.live -= 1
        if s.opened:
            s.opened = False
            node.open_sessions -= 1
        if s.finishing:
            s.finishing = False
            node.finishing -= 1
        s.node.send_close(s)
        if self.on_finish is not None:
            self.on_finish(s)


def _nothing(_=None) -> None:
    return None


class DrafterNode:
    """A device (or edge server) hosting a draft model: batched draft passes over its ready sessions, an uplink and a downlink."""

    send_ahead = True  # a pass's blocks go on the uplink at pass start when nothing can precede them (False: a pass-done event; same results)

    def __init__(self, world: World, index: int, group: int, cost: StepCost, uplink: Link, downlink: Link, routing,
                 core: Optional[SharedCores] = None, cap: float = 1.0, framework_scale: float = 1.0) -> None:
        """`core`: the cores this device shares with others (its passes and framework work are jobs there, at most `cap`
        cores at a time); None: a core of its own, with `cost` already scaled to the device. `framework_scale` multiplies
        the serving profile's per-round framework work (the slowdown when the device has a core of its own)."""
        self.world, self.loop, self.index, self.group = world, world.loop, index, group
        self.cost, self.uplink, self.downlink, self.routing = cost, uplink, downlink, routing
        self.core, self.cap = core, cap
        self.ready: list[Session] = []
        self.busy = False
        self.busy_until_s = -1.0  # end of a pass sent ahead while no pass-done event exists, else -1
        self.pass_seq = 0  # the sequence number that pass's pass-done event would have had (ordering at equal times)
        self.flush_pending = False
        self.live = 0  # sessions at this node, from arrival to finish
        self.open_sessions = 0  # of those, admitted at a verifier
        self.finishing = 0  # of those, with a block in flight that completes the answer
        self.busy_s = 0.0
        self.passes = 0
        self.hints: list[list[int]] = []  # per verifier: [queue depth, active sessions, placed since]
        spec = world.config.speculation
        self.mode, self.noise = spec.mode, spec.confidence_noise
        self.block_overhead, self.per_token_bytes = spec.message_overhead_bytes, spec.draft_bytes_per_token
        self.prompt_bytes = spec.prompt_bytes_per_token
        serving = world.config.serving
        self.handshake = serving is not None and self.mode == "sd"  # the open is a round trip of its own
        self.framework = serving.drafter_framework if serving is not None else None
        self.framework_scale = framework_scale
        self.background_s = serving.drafter_background_s if serving is not None and core is not None else 0.0
        self.request_s = serving.request_s if serving is not None else 0.0
        self.open_s = serving.open_s if serving is not None else 0.0
        self.verdict_bytes = spec.verdict_bytes
        # blocks go on the uplink at pass start only when the pass's end is known then and nothing else can precede them
        self.send_ahead = DrafterNode.send_ahead and core is None and not self.handshake

    # -------------------------------------------------------------- drafting

    def start(self, s: Session) -> None:
        """A new request arrives at this node (the serving profile's `request_s` later: the user's HTTP request)."""
        if self.request_s > 0.0:
            self.loop.after(self.request_s, self._arrive, s)
        else:
            self._arrive(s)

    def _arrive(self, s: Session) -> None:
        self.live += 1
        if self.mode == "ad":
            self._send(s, self.block_overhead + s.prompt_tokens * self.prompt_bytes)
            return
        if self.handshake:  # the open (with the prompt) goes up now; the first block leaves once `session opened` is back
            now = self.loop.now_s
            at_verifier = self.uplink.send(now, self.block_overhead + s.prompt_tokens * self.prompt_bytes)
            s.opened_s = self.downlink.send(at_verifier + self.open_s, self.verdict_bytes)
        s.mark_s = self.loop.now_s
        self.ready.append(s)
        if not self.flush_pending:  # requests arriving at one instant (a closed loop's start) share a pass
            self.flush_pending = True
            self.loop.after(0.0, self._flush, None, DECIDE)

    def _flush(self, _=None) -> None:
        self.flush_pending = False
        self._maybe_start()

    def _maybe_start(self) -> None:
        """Start a pass over the ready sessions if the draft model is free, else make sure one follows the current pass."""
        if not self.ready:
            return
        now = self.loop.now_s
        if self.busy and 0.0 <= self.busy_until_s < now:  # the pass sent ahead is over
            self.busy, self.busy_until_s = False, -1.0
        if not self.busy:
            self._start_pass()
        elif self.busy_until_s >= 0.0:  # a pass sent ahead (no pass-done event): start after it, where that event would run
            self.loop.at_reserved(self.busy_until_s, self.pass_seq, self._after_sent_pass)
            self.busy_until_s = -1.0

    def _after_sent_pass(self, _=None) -> None:
        self.busy = False
        if self.ready:
            self._start_pass()

    def _start_pass(self, _=None) -> None:
        if len(self.ready) == 1 and self.mode == "sd":
            self._start_single()
            return
        batch, self.ready = self.ready, []
        gammas = []
        prefill = [s.prompt_tokens for s in batch if s.new_at_drafter]
        context = 0
        for s in batch:
            s.new_at_drafter = False
            context += s.prompt_tokens + s.emitted
            if self.mode == "device":
                gammas.append(1)
                continue
            cap = s.remaining - 1
            g = s.policy.gamma(self.loop.now_s) if s.policy is not None else 0
            gammas.append(s.draw_block(g if g < cap else (cap if cap > 0 else 0), self.noise))
            self._mark_finishing(s)
        cost = self.cost.draft_pass_s([g for g in gammas if g], context // len(batch))
        if prefill:
            cost += self.cost.prefill_s(len(prefill), max(prefill))
        if self.framework is not None:
            cost += self.framework.at(len(batch)) * self.framework_scale  # per round of the pass, measured against sessions per pass
        self._run_pass(batch, cost, self.mode == "sd" and self._nothing_precedes(batch))

    def _mark_finishing(self, s: Session) -> None:
        if s.accept_n + 1 >= s.output_tokens - s.emitted:
            s.finishing = True
            self.finishing += 1

    def _nothing_precedes(self, batch: list[Session]) -> bool:
        """True when no other message of this node can go on its uplink before this pass ends, so its blocks can be sent now.

        Other sessions of the node can only queue for the next pass, unless one closes (its block in
        flight completes its answer) or retries after a KV refusal (it is not admitted): neither may exist.
        """
        if not self.send_ahead or self.open_sessions != self.live:
            return False
        own = 0
        for s in batch:
            if not s.admitted:
                return False
            own += s.finishing
        return self.finishing == own

    def _run_pass(self, batch: list[Session], cost: float, send_ahead: bool = False) -> None:
        """Charge the pass to its sessions and finish it `cost` seconds from now.

        With `send_ahead` (`_nothing_precedes`: no other message of this node can reach its uplink before
        the pass ends) the blocks are put on the uplink now for the pass's end time, which is exact, and
        no pass-done event is needed; `busy_until_s` and `pass_seq` let a session that becomes ready
        meanwhile start its pass where that event would have run (a pass ending exactly now is over
        only then, so equal-time events keep their order).
        """
        now = self.loop.now_s
        if self.core is not None:  # its end depends on what else runs on the shared cores
            self.busy = True
            self.passes += 1
            self.core.run(cost, self.cap, self._shared_pass_done, (batch, now))
            return
        for s in batch:
            s.draft_s += now - s.mark_s + cost
            s.draft_cost_s = cost
            if s.round_log is not None:
                s.marks[0], s.marks[1] = now, now + cost
        self.busy = True
        self.busy_s += cost
        self.passes += 1
        if send_ahead:
            self.busy_until_s = end_s = now + cost
            self.pass_seq = self.loop.reserve_seq()
            for s in batch:
                self._send(s, self._block_bytes(s), end_s)
        else:
            self.loop.at(now + cost, self._pass_done, batch)

    def _shared_pass_done(self, arg: tuple[list[Session], float]) -> None:
        """A pass on shared cores got its work: charge its sessions what it took, then as `_pass_done`."""
        batch, started_s = arg
        now = self.loop.now_s
        for s in batch:
            s.draft_s += now - s.mark_s
            s.draft_cost_s = now - started_s
            if s.round_log is not None:
                s.marks[0], s.marks[1] = started_s, now
        self.busy_s += now - started_s
        self._pass_done(batch)

    def _start_single(self) -> None:
        """`_start_pass` for the common case of one ready session in SD mode (same result, less work)."""
        s = self.ready.pop()
        now = self.loop.now_s
        cap = s.output_tokens - s.emitted - 1
        g = s.policy.gamma(now)
        g = s.draw_block(g if g < cap else (cap if cap > 0 else 0), self.noise)
        self._mark_finishing(s)
        cost = g * self.cost.step_s(1, 1, s.prompt_tokens + s.emitted) if g else 0.0
        if s.new_at_drafter:
            s.new_at_drafter = False
            cost += self.cost.prefill_s(1, s.prompt_tokens)
        if self.framework is not None:
            cost += self.framework.at(1) * self.framework_scale
        if not (s.admitted and self.send_ahead and self.open_sessions == self.live and self.finishing == s.finishing):
            self._run_pass([s], cost)  # `_nothing_precedes([s])` is False
            return
        # nothing else can use this node or its uplink before the pass ends: `_run_pass(..., send_ahead=True)`, inlined (hot: about 7 % of a run)
        s.draft_s += now - s.mark_s + cost
        s.draft_cost_s = cost
        end_s = now + cost
        if s.round_log is not None:
            s.marks[0], s.marks[1] = now, end_s
        self.busy = True
        self.busy_s += cost
        self.passes += 1
        self.busy_until_s = end_s
        self.pass_seq = self.loop.reserve_seq()
        # `_send(s, bytes, end_s)`, inlined (an admitted session has its verifier)
        s.sent_s = end_s
        arrival_s = self.uplink.send(end_s, self.block_overhead + s.gamma * self.per_token_bytes)
        s.upload_cost_s = arrival_s - end_s
        s.upload_s += s.upload_cost_s
        self.world.verifiers[s.verifier].deliver(s, arrival_s)

    def _pass_done(self, batch: list[Session]) -> None:
        self.busy = False
        self.busy_until_s = -1.0
        if self.mode == "device":
            now = self.loop.now_s
            for s in batch:
                s.pending_tokens = 1
                s.rounds += 1
                self._apply(s, now)
        else:
            now = self.loop.now_s
            for s in batch:
                if s.opened_s > now:  # the open's reply is not back yet: the block waits for it
                    self.loop.at(s.opened_s, self._send_block, s)
                else:
                    self._send(s, self._block_bytes(s))
        if self.ready:
            self._start_pass()

    def _send_block(self, s: Session) -> None:
        self._send(s, self._block_bytes(s))

    # -------------------------------------------------------------- the wire

    def _block_bytes(self, s: Session) -> float:
        """A draft block on the wire; until the session is open at a verifier the open message (with the prompt) rides along."""
        size = self.block_overhead + s.gamma * self.per_token_bytes
        return size if s.admitted or s.opened_s >= 0.0 else size + s.prompt_tokens * self.prompt_bytes

    def _route(self, s: Session) -> int:
        hints = self.hints
        loads = [VerifierLoad(h[0], h[1], h[2]) for h in hints]
        v = self.routing.choose(loads) if len(loads) > 1 else 0
        hints[v][2] += 1
        return v

    def _send(self, s: Session, size_bytes: float, at_s: float = -1.0) -> None:
        """Put a message for the session's verifier on the uplink (now, or at `at_s` when sent ahead)."""
        loop = self.loop
        if s.verifier is None:
            s.verifier = self._route(s)
        now = at_s if at_s >= 0.0 else loop.now_s
        s.sent_s = now
        arrival_s = self.uplink.send(now, size_bytes)
        s.upload_cost_s = arrival_s - now
        s.upload_s += s.upload_cost_s
        self.world.verifiers[s.verifier].deliver(s, arrival_s)

    def send_close(self, s: Session) -> None:
        if s.verifier is None or not s.admitted:
            return
        loop = self.loop
        loop.at(self.uplink.send(loop.now_s, self.block_overhead), self.world.verifiers[s.verifier].on_close, s)

    def refused(self, s: Session) -> None:
        """The verifier had no KV room: wait, then route again (maybe elsewhere) and resend the block."""
        loop = self.loop
        v = s.verifier
        self.hints[v][0] = self.hints[v][0] + 1  # treat as loaded
        s.verifier = None
        s.mark_s = loop.now_s
        loop.after(self.world.config.verifiers.busy_retry_s, self._retry, s)

    def _retry(self, s: Session) -> None:
        s.admission_s += self.loop.now_s - s.mark_s
        self._send(s, self._block_bytes(s))

    # -------------------------------------------------------------- verdicts

    def on_verdicts(self, group: list[Session]) -> None:
        """The verdicts of one batch for this node's sessions arrive (one message); then one draft pass for all that go on."""
        now = self.loop.now_s
        if self.background_s > 0.0:  # the device's work nobody waits for (streaming, the user's client): it loads the shared cores
            self.core.run(self.background_s * len(group), self.cap, _nothing)
        hints, ready = self.hints, self.ready
        for s in group:
            h, hint = hints[s.verifier], s.hint
            h[0], h[1], h[2] = hint[0], hint[1], 0
            s.downlink_s += now - s.mark_s
            if s.observes:
                s.policy.observe(RoundObservation(s.gamma, s.accept_n, now, s.draft_cost_s if s.gamma else None,
                                                  s.upload_cost_s, s.verify_cost_s, now - s.sent_s, hint[0],
                                                  s.verify_cost_s, s.busy_wait_cost_s, hint[2]))
            self._apply(s, now)
        if not ready:
            return
        if len(ready) == 1 and self.mode == "sd" and (not self.busy or 0.0 <= self.busy_until_s < now):
            self.busy, self.busy_until_s = False, -1.0  # a pass sent ahead is over: `_maybe_start`, inlined
            self._start_single()
        else:
            self._maybe_start()

    def _apply(self, s: Session, now: float) -> None:
        """Emit the round's tokens; finish, or draft again (the caller starts the pass once for everyone)."""
        s.emitted += s.pending_tokens
        if s.first_token_s < 0:
            s.first_token_s = now
        if s.round_log is not None:
            s.round_log.append((*s.marks, now, s.gamma, s.accept_n))
        if s.emitted >= s.output_tokens:
            self.world.finish(s, now)
        else:
            s.mark_s = now
            self.ready.append(s)


class VerifierNode:
    """A verifier: admission against a KV budget, the real `Scheduler` for batching and fairness, one costed forward per batch."""

    batch_inbox = True  # submit drafts that arrive during a batch when it ends (False: an event each; same results, slower)
    inline_decide = True  # decide within the event that asks, when nothing else is due at that instant (False: a DECIDE event each)

    def __init__(self, world: World, index: int, config: VerifierConfig, cost: StepCost) -> None:
        self.world, self.loop, self.index, self.config, self.cost = world, world.loop, index, config, cost
        policy = make_batching(config, world.config)
        self.scheduler = Scheduler(SchedulerConfig(config.max_batch_tokens, config.max_batch_size, config.window_s), policy)
        self.busy = False
        self.decide_pending = False
        self.timer: Optional[int] = None
        self.timer_at = float("inf")
        self.active = 0
        self.reserved_tokens = 0
        self.busy_s = 0.0
        self.batch_sizes: list[int] = []
        self.queue_depths: list[int] = []
        self.refusals = 0
        self.inbox: list[tuple[float, int, Session]] = []  # (arrival, seq, session): drafts that arrived during the running batch
        self.later: list[tuple[float, int, Session]] = []  # (arrival, seq, session): drafts arriving after the running batch ends
        self.busy_until_s = 0.0
        self.spans: Optional[list] = [] if world.config.record_rounds else None  # (start, end, size) per batch, when tracing
        self.peak_reserved_tokens = 0
        self.mode = world.config.speculation.mode
        self.verdict_bytes = world.config.speculation.verdict_bytes
        # load hints with the forward-time model, as the real node sends them (only when a policy reads them: it costs a fit per batch)
        # and the merge wait set from it (the real node's calibration at start-up, then its fit per forward)
        self.cost_fit: Optional[ForwardCostFit] = None
        prior = None
        if config.merge_share > 0.0 or world.publish_hints:
            points = [(r, w, cost.step_s(r, w, CALIBRATION_CONTEXT_TOKENS)) for r, w in CALIBRATION_SHAPES]
            prior = ForwardCostFit().fit_points(points)
        if world.publish_hints:
            self.cost_fit = ForwardCostFit(prior=prior)
        if config.merge_share > 0.0:
            self.scheduler.merge_wait_s = config.merge_share * prior.base_s
        self.batch_rows = self.batch_width = 0.0  # moving averages over batches, as the real node keeps them
        serving = world.config.serving
        self.framework = serving.verifier_framework if serving is not None else None  # per batch, beyond its forwards
        self.overlap_s = serving.overlap_s if serving is not None else 0.0  # per draft that arrived during a batch
        self.verdict_overlap_s = serving.verdict_overlap_s if serving is not None else 0.0  # per verdict out during the next batch
        self.last_size = 0  # drafts in the batch that ran last

    def deliver(self, s: Session, arrival_s: float) -> None:
        """A block will arrive at `arrival_s`: an event, or — for an open session arriving while a batch runs — the inbox.

        While a batch runs the verifier decides nothing, so a draft that can only queue is submitted
        with its own arrival time when the batch ends (exact, and one event fewer per round).
        """
        loop = self.loop
        if self.batch_inbox and s.admitted and self.busy and arrival_s != self.busy_until_s:
            # its arrival event gets the sequence number it would have now, whenever it is scheduled
            s.arrival_seq = seq = loop.reserve_seq()
            if arrival_s < self.busy_until_s:
                self.inbox.append((arrival_s, seq, s))
            else:  # after this batch: the inbox of the next batch if one covers it, else an event (see `_sort_later`)
                self.later.append((arrival_s, seq, s))
        else:
            s.arrival_seq = loop.at(arrival_s, self.receive, s)

    def _sort_later(self) -> None:
        """Drafts due after the batch that ran: into the inbox of the batch now running where it covers their arrival
        (their arrival events would only join it), the others into the event heap, or kept while a batch runs."""
        later, self.later = self.later, []
        busy, end_s, at = self.busy, self.busy_until_s, self.loop.at_reserved
        for entry in later:
            arrival_s = entry[0]
            if busy and arrival_s < end_s:
                self.inbox.append(entry)
            elif busy and arrival_s > end_s:
                self.later.append(entry)
            else:
                at(arrival_s, entry[1], self.receive, entry[2])

    def receive(self, s: Session) -> None:
        """A block (or, in AD mode, an open) arrives from a drafter node: admission, then the scheduler's queue."""
        now = self.loop.now_s
        if not s.admitted and not self._admit(s, now):
            return
        if self.mode == "ad":
            s.gamma = s.accept_n = 0
        if self.busy:
            s.overlapped = True
        if self.batch_inbox and self.busy:  # join the drafts that arrived during this batch, in arrival order
            self.inbox.append((now, s.arrival_seq, s))
            return
        if s.round_log is not None:
            s.marks[2] = now
        self._submit(s, now)
        self.decide_at_end()

    def _admit(self, s: Session, now: float) -> bool:
        """Reserve the session's KV for its whole life, or refuse it (the drafter node retries later)."""
        need = s.prompt_tokens + s.output_tokens
        budget = self.config.kv_budget_tokens
        if budget and self.reserved_tokens + need > budget:
            self.refusals += 1
            if need > budget:
                raise SimulationError(f"a request of {need} tokens can never fit a KV budget of {budget} tokens")
            self.loop.at(s.node.downlink.send(now, self.verdict_bytes), s.node.refused, s)
            return False
        s.admitted = s.opened = True
        s.node.open_sessions += 1
        self.active += 1
        self.reserved_tokens += need
        if self.reserved_tokens > self.peak_reserved_tokens:
            self.peak_reserved_tokens = self.reserved_tokens
        return True

    def _submit(self, s: Session, now: float) -> None:
        s.mark_s = now
        s.busy_mark_s = self.busy_s - max(0.0, self.busy_until_s - now)
        cost = s.gamma + 1 + (s.prompt_tokens if s.new_at_verifier else 0)
        self.scheduler.submit(QueuedDraft(s, s.node.index, now, cost))

    def on_close(self, s: Session) -> None:
        """The session's close message arrives."""
        if s.admitted:
            self.release(s)
            self.decide_at_end()

    def release(self, s: Session) -> None:
        """The session closed: free its KV reservation (the caller asks for a decision)."""
        if s.admitted:
            s.admitted = False
            self.active -= 1
            self.reserved_tokens -= s.prompt_tokens + s.output_tokens
            self.scheduler.drop_session(s.key)

    def decide_at_end(self) -> None:
        """Called last in an event: decide after every delivery at this instant (a DECIDE event).

        When no other event is due at this instant, that event would run next anyway, so with
        `inline_decide` the decision runs now instead (the same result, one event fewer).
        """
        if self.busy or self.decide_pending:
            return
        loop = self.loop
        if self.inline_decide and loop.nothing_else_now():
            self._decide()
            return
        self.decide_pending = True
        loop.after(0.0, self._decide, None, DECIDE)

    def _on_timer(self, _=None) -> None:
        self.timer, self.timer_at = None, float("inf")
        self.decide_at_end()

    def _decide(self, _=None) -> None:
        self.decide_pending = False
        if self.busy:
            return
        loop = self.loop
        scheduler = self.scheduler
        depth = scheduler.depth
        batch, wake_at = scheduler.next_batch(loop.now_s, self.active)
        if batch:
            self.queue_depths.append(depth)
            self._run(batch)
        elif wake_at is not None and wake_at < self.timer_at:
            if self.timer is not None:
                loop.cancel(self.timer)
            self.timer_at = wake_at
            self.timer = loop.at(wake_at, self._on_timer, None, TIMER)

    def _run(self, batch: list[QueuedDraft]) -> None:
        loop = self.loop
        now = loop.now_s
        sessions = [q.item for q in batch]
        max_new, tokens, context, prefill, overlapped = 1, 0, 0, [], 0
        busy_s = self.busy_s
        for s in sessions:
            if s.overlapped:
                s.overlapped = False
                overlapped += 1
            s.queue_s += now - s.mark_s
            s.busy_wait_cost_s = busy_s - s.busy_mark_s
            s.mark_s = now
            if s.round_log is not None:
                s.marks[3] = now
            if s.gamma + 1 > max_new:
                max_new = s.gamma + 1
            tokens += s.gamma + 1
            context += s.prompt_tokens + s.emitted
            if s.new_at_verifier:
                prefill.append(s.prompt_tokens)
                s.new_at_verifier = False
        rows = len(sessions)
        cost = self.cost.ragged_step_s(rows, tokens, max_new, context // rows)
        if self.cost_fit is not None:
            self._observe_forward(rows, computed_positions(tokens, rows, max_new) / rows, cost)
        if prefill:
            cost += self.cost.prefill_s(len(prefill), max(prefill))
        if self.framework is not None:
            cost += self.framework.at(len(sessions)) + self.overlap_s * overlapped
            if now - self.busy_until_s <= 1e-12:  # back to back: the last batch's verdicts go out during this one
                cost += self.verdict_overlap_s * self.last_size
        self.last_size = len(sessions)
        self.busy = True
        self.busy_until_s = now + cost
        self.busy_s += cost
        self.batch_sizes.append(len(sessions))
        loop.at(now + cost, self._batch_done, sessions)
        if self.later:
            self._sort_later()

    def _observe_forward(self, rows: int, width: float, seconds: float) -> None:
        """The real node's bookkeeping after a verification forward: the forward-time model and the batch-shape averages."""
        self.cost_fit.observe(rows, width, seconds)
        if self.config.merge_share > 0.0:
            self.scheduler.merge_wait_s = self.config.merge_share * self.cost_fit.cost().base_s
        first = not self.batch_rows
        self.batch_rows = rows if first else 0.8 * self.batch_rows + 0.2 * rows
        self.batch_width = width if first else 0.8 * self.batch_width + 0.2 * width

    def _hints(self) -> Optional[VerifierHints]:
        if self.cost_fit is None:
            return None
        return VerifierHints(self.scheduler.depth, self.active, None, self.batch_rows, self.batch_width, self.cost_fit.cost())

    def _batch_done(self, sessions: list[Session]) -> None:
        loop = self.loop
        now = loop.now_s
        self.busy = False
        if self.inbox:
            inbox, self.inbox = self.inbox, []
            if len(inbox) > 1:  # the order their arrival events would have run in: (time, sequence), which is unique
                inbox.sort()
            submit = self.scheduler.submit
            busy_s = self.busy_s - self.busy_until_s  # + arrival: the busy seconds done when it arrived (this batch ends now)
            for arrival_s, _, s in inbox:  # `_submit`, inlined (hot: about 2 % of a run)
                s.overlapped = True  # it arrived while the batch ran
                if s.round_log is not None:
                    s.marks[2] = arrival_s
                s.mark_s = arrival_s
                s.busy_mark_s = busy_s + arrival_s
                submit(QueuedDraft(s, s.node.index, arrival_s, s.gamma + 1 + (s.prompt_tokens if s.new_at_verifier else 0)))
        hint = (self.scheduler.depth, self.active, self._hints())
        if self.spans is not None:
            self.spans.append((sessions[0].mark_s, now, len(sessions)))
        groups: dict = {}  # sessions by drafter node, nodes in order of first appearance
        for s in sessions:
            if s.round_log is not None:
                s.marks[4] = now
            s.verify_cost_s = cost_s = now - s.mark_s
            s.verify_s += cost_s
            tokens = s.accept_n + 1
            remaining = s.output_tokens - s.emitted
            s.pending_tokens = tokens if tokens < remaining else remaining
            s.rounds += 1
            s.drafted += s.gamma
            s.accepted += s.accept_n
            s.hint = hint
            s.mark_s = now
            group = groups.get(s.node)
            if group is None:
                groups[s.node] = [s]
            else:
                group.append(s)
        for node, group in groups.items():  # a node's verdicts leave together, as one write
            arrival_s = node.downlink.send(now, self.verdict_bytes * len(group))
            if self.mode == "ad":
                for s in group:
                    self._ad_token(s, arrival_s)
            else:
                loop.at(arrival_s, node.on_verdicts, group)
        self.scheduler.release([s.key for s in sessions], now)
        self.decide_at_end()
        if self.later and not self.busy:  # no batch started: they arrive at an idle verifier, as events
            self._sort_later()

    def _ad_token(self, s: Session, arrival_s: float) -> None:
        """Server-only AD: the token streams down while the session stays here and decodes again at once.

        Only the last token's downlink is on the request's critical path, so only it counts as downlink time.
        """
        s.emitted += s.pending_tokens
        if s.first_token_s < 0:
            s.first_token_s = arrival_s
        if s.emitted >= s.output_tokens:
            s.downlink_s += arrival_s - s.mark_s
            self.release(s)
            self.loop.at(arrival_s, self._ad_finish, s)
            return
        self._submit(s, s.mark_s)

    def _ad_finish(self, s: Session) -> None:
        self.world.finish(s, self.loop.now_s)
