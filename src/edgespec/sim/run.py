"""Build a simulated deployment from a `SimConfig`, drive its workload through the event loop, and return the raw records."""

from __future__ import annotations

import bisect
import gc
import itertools
import random
import time
from dataclasses import dataclass
from typing import Optional

from edgespec.policy.gamma import make_gamma_policy
from edgespec.policy.routing import make_routing
from edgespec.sim.config import SimConfig
from edgespec.sim.cores import SharedCores
from edgespec.sim.costs import scaled
from edgespec.sim.entities import DrafterNode, Session, VerifierNode, World
from edgespec.sim.kernel import EventLoop, SimulationError
from edgespec.sim.links import Link
from edgespec.sim.streams import stream

__all__ = ["SimRun", "simulate"]


@dataclass
class SimRun:
    """What a run leaves behind: finished sessions, the nodes (with their counters), the clock, and the wall time it took."""

    config: SimConfig
    sessions: list[Session]
    drafters: list[DrafterNode]
    verifiers: list[VerifierNode]
    end_s: float
    events: int
    wall_s: float


class _Arrivals:
    """Creates sessions: which node and class, their γ policy and acceptance stream, open- or closed-loop."""

    def __init__(self, world: World, config: SimConfig) -> None:
        self.world, self.config = world, config
        self.rng = stream(config.seed, "workload")
        self.ids = itertools.count()
        classes = config.classes
        self.class_cum = list(itertools.accumulate(c.weight for c in classes))
        weights = [config.drafters[n.group].weight for n in world.drafters]
        self.node_cum = list(itertools.accumulate(weights))
        self.issued = 0
        self.user_rng: dict[tuple[int, int], random.Random] = {}  # closed loop with requests_per_user: per (node, user)
        self.user_left: dict[tuple[int, int], int] = {}  # requests each user has yet to issue
        self.node_state: dict[int, dict] = {}  # per drafter node: what its sessions' γ policies pool (as the real node does)

    def _pick(self, cum: list[float], rng: Optional[random.Random] = None) -> int:
        return bisect.bisect_right(cum, (rng or self.rng).random() * cum[-1])

    def new_session(self, node: DrafterNode, user: int = -1) -> Session:
        cfg = self.config
        per_user = cfg.workload.requests_per_user
        if per_user:  # the user's own streams and a key fixed by (node, user, j): the same requests under every policy
            rng = self.user_rng[node.index, user]
            j = per_user - self.user_left[node.index, user]
            self.user_left[node.index, user] -= 1
            key = (node.index * cfg.workload.users_per_node + user) * per_user + j
        else:
            rng, key = self.rng, next(self.ids)
        k = min(self._pick(self.class_cum, rng), len(cfg.classes) - 1)
        klass, group = cfg.classes[k], cfg.drafters[node.group]
        alpha = klass.alpha if klass.alpha is not None else group.alpha
        mix = cfg.speculation.acceptance_mix
        if alpha is not None:
            curve = (alpha,)
        elif mix:  # the request's prompt: one of the measured prompts' curves, from a stream of its own
            curve = mix[stream(cfg.seed, "prompt", key).randrange(len(mix))]
        else:
            curve = cfg.speculation.acceptance
        spec = cfg.speculation
        policy = None
        if spec.mode == "sd" and cfg.policy_factory is not None:
            policy = cfg.policy_factory(klass, group)
        elif spec.mode == "sd":
            policy = make_gamma_policy(spec.gamma_policy, spec.gamma, spec.max_gamma, spec.confidence_threshold,
                                       node_state=self.node_state.setdefault(node.index, {}), request_class=klass.name,
                                       load_aware=spec.load_aware, probe_every=spec.probe_every)
        s = Session(key, k, node, self.world.loop.now_s, klass.input_tokens, klass.output_tokens, policy, curve,
                    stream(cfg.seed, "session", key), user)
        if cfg.record_rounds:
            s.round_log = []
        self.issued += 1
        return s

    # ------------------------------------------------------------ open loop

    def start_open(self) -> None:
        w = self.config.workload
        if w.kind == "trace":
            times = sorted(w.trace_s)[: w.requests] if w.requests else sorted(w.trace_s)
            for t in times:
                self.world.loop.at(t, self._arrive)
            return
        self.world.loop.at(0.0, self._arrive)

    def _arrive(self, _=None) -> None:
        nodes = self.world.drafters
        node = nodes[min(self._pick(self.node_cum), len(nodes) - 1)]
        node.start(self.new_session(node))
        w = self.config.workload
        if w.kind == "poisson" and self.issued < w.requests:
            self.world.loop.after(self.rng.expovariate(w.rate_per_s), self._arrive)

    # ------------------------------------------------------------ closed loop

    def start_closed(self) -> None:
        w = self.config.workload
        self.world.on_finish = self._user_done
        for node in self.world.drafters:
            for user in range(w.users_per_node):
                if w.requests_per_user:
                    self.user_rng[node.index, user] = stream(self.config.seed, "user", node.index, user)
                    self.user_left[node.index, user] = w.requests_per_user
                if self._may_issue(node, user):
                    node.start(self.new_session(node, user))

    def _may_issue(self, node: DrafterNode, user: int) -> bool:
        """Whether the user issues another request: its own quota left, else the run's total not yet reached."""
        if self.config.workload.requests_per_user:
            return self.user_left[node.index, user] > 0
        return self.issued < self.config.workload.requests

    def _user_done(self, s: Session) -> None:
        w = self.config.workload
        if self._may_issue(s.node, s.user):
            self.issued += 1  # reserve the slot now so concurrent finishes do not overshoot
            rng = self.user_rng[s.node.index, s.user] if w.requests_per_user else self.rng
            delay = rng.expovariate(1.0 / w.think_time_s) if w.think_time_s > 0 else 0.0
            self.world.loop.after(delay, self._next_request, (s.node, s.user))

    def _next_request(self, arg) -> None:
        node, user = arg
        self.issued -= 1
        node.start(self.new_session(node, user))


def _build(config: SimConfig) -> World:
    loop = EventLoop()
    world = World(loop, config)
    serving = config.serving
    core = None  # devices sharing cores: passes at full speed there, each device capped by its quota
    if config.device_cores:
        core = SharedCores(loop, config.device_cores, serving.core_efficiency if serving is not None else 1.0)
    index = 0
    for g, group in enumerate(config.drafters):
        cost = config.draft_cost if core is not None else scaled(config.draft_cost, group.slowdown)
        cap = serving.cap(group.slowdown) if serving is not None else 1.0 / group.slowdown
        for i in range(group.count):
            up = Link(group.uplink, stream(config.seed, "uplink", index))
            down = Link(group.downlink, stream(config.seed, "downlink", index))
            routing = make_routing(config.routing, stream(config.seed, "routing", index))
            world.drafters.append(DrafterNode(world, index, g, cost, up, down, routing, core, cap,
                                              1.0 if core is not None else group.slowdown))
            index += 1
    world.verifiers = [VerifierNode(world, v, config.verifiers, config.verify_cost) for v in range(config.verifiers.count)]
    for node in world.drafters:
        node.hints = [[0, 0, 0] for _ in world.verifiers]
    return world


def simulate(config: SimConfig, max_events: int = 0) -> SimRun:
    """Run the scenario until every request has finished; raises SimulationError if requests are left unfinished."""
    started = time.perf_counter()
    world = _build(config)
    arrivals = _Arrivals(world, config)
    if config.workload.kind == "closed":
        arrivals.start_closed()
    else:
        arrivals.start_open()
    # The run allocates many short-lived, acyclic objects (events, queued drafts): reference counting frees
    # them, and the cycle collector would only rescan the growing set of finished sessions.
    collecting = gc.isenabled()
    gc.disable()
    try:
        world.loop.run(max_events=max_events)
    finally:
        if collecting:
            gc.enable()
    expected = arrivals.issued
    if len(world.finished) != expected:
        raise SimulationError(f"{expected - len(world.finished)} of {expected} requests did not finish (the run stalled)")
    return SimRun(config, world.finished, world.drafters, world.verifiers, world.loop.now_s, world.loop.events,
                  time.perf_counter() - started)


