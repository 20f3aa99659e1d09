"""DpBatching: the planner's DP as the verifier's batching policy, on small cases checked by hand and against brute force."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plan"))
from plan_helpers import toy_system, toy_task  # noqa: E402

from edgespec.plan.dp import SearchSpace, brute_force_all_partitions  # noqa: E402
from edgespec.plan.latency import batch_breakdown  # noqa: E402
from edgespec.plan.scenario import LinkSpec, NodeSpec  # noqa: E402
from edgespec.policy.batching import DpBatching, DpBatchingConfig, MaxBatching, TaskState  # noqa: E402
from edgespec.server.scheduler import QueuedDraft, Scheduler, SchedulerConfig  # noqa: E402

EXACT = DpBatchingConfig(context_quantum_tokens=1, remaining_quantum_tokens=1)  # no rounding: hand-checkable states


@dataclass(frozen=True)
class Req:
    """A queued draft with the task state the adapter reads (a stand-in for a server's DraftItem)."""

    key: int
    context_tokens: int
    remaining_tokens: int
    alpha: float
    gamma: int
    arrival_s: float = 0.0

    @property
    def request_id(self) -> int:
        return self.key


def state_of(p) -> TaskState:
    r = p.item if isinstance(p, QueuedDraft) else p
    return TaskState(r.key, r.context_tokens, r.remaining_tokens, r.alpha, gamma=r.gamma)


def ids(decision) -> list[list[int]]:
    return [[p.request_id for p in b] for b in decision.batches]


def test_nothing_queued_and_one_draft():
    policy = DpBatching(toy_system(), state_of, EXACT)
    assert policy.select([], 0.0).batches == ()
    d = policy.select([Req(7, 4, 6, 0.5, 2)], now_s=1.0)
    assert ids(d) == [[7]] and d.wake_at_s is None


def test_a_nearly_done_session_is_verified_alone_first_when_the_verifier_is_compute_bound():
    # Toy verifier: pure compute, so a batch of 2 costs twice a batch of 1. The long task (64 tokens, α 0.5, γ 1:
    # E = 1.5, 43 rounds) would pay double for all 43 rounds if the 1-token task rode along; served alone first,
    # the short one costs one round (0.78 s) and the long one its 43 single rounds (36.5 s), against 72.2 s together.
    system = toy_system()
    short, long_ = toy_task(0, 4, 1, 0.5), toy_task(1, 4, 64, 0.5)
    together = batch_breakdown(system, [short, long_], 1, False).total_s
    apart = batch_breakdown(system, [short], 1, False).total_s + batch_breakdown(system, [long_], 1, False).total_s
    assert apart < together / 1.9
    policy = DpBatching(system, state_of, replace(EXACT, pipeline=False))
    d = policy.select([Req(10, 4, 64, 0.5, 1, arrival_s=0.0), Req(11, 4, 1, 0.5, 1, arrival_s=0.1)], now_s=0.2)
    assert ids(d) == [[11], [10]]  # the short one first (the DP's sort by expected rounds), the older long one next


def test_a_memory_bound_verifier_takes_everything_at_once_like_max_batching():
    # Fixed cost per forward (infinite FLOP/s and memory bandwidth, 10 ms overhead) and a fast link: batching is
    # free, so every split only adds rounds.
    base = toy_system()
    flat = replace(base, drafter=NodeSpec("d", base.drafter.model, step_overhead_s=0.002),
                   verifier=NodeSpec("v", base.verifier.model, step_overhead_s=0.010),
                   link=LinkSpec(uplink_bps=1e12, downlink_bps=1e12, latency_s=0.005))
    queue = [Req(i, 16 + 8 * i, 4 + 20 * i, 0.3 + 0.1 * i, 4, arrival_s=0.01 * i) for i in range(6)]
    d = DpBatching(flat, state_of, EXACT).select(queue, now_s=1.0)
    assert ids(d) == ids(MaxBatching().select(queue, 1.0)) == [[0, 1, 2, 3, 4, 5]]
    # Capped at 4 (ids are also the order of expected rounds): max batching serves 0–3 (as long as task 3) then 4–5
    # (as long as 5); the DP serves the two shortest first and the four longest together, as long as 1 and then 5.
    capped = DpBatching(flat, state_of, replace(EXACT, max_batch_size=4)).select(queue, now_s=1.0)
    assert ids(MaxBatching(4).select(queue, 1.0)) == [[0, 1, 2, 3], [4, 5]]
    assert ids(capped) == [[0, 1], [2, 3, 4, 5]]


def test_a_pipelined_plan_dispatches_its_first_group_now():
    # Slow drafter (1 kFLOP/s, like the verifier): drafting a round takes as long as verifying it, so the DP
    # alternates two groups of 2 (A5: d + s + (2N−1)·max(d, s) with half-size groups beats N·(d + s)).
    system = toy_system(draft_flops=1e3)
    tasks = [toy_task(i, 4, 16, 0.5) for i in range(4)]
    assert batch_breakdown(system, tasks, 2, True).total_s < batch_breakdown(system, tasks, 2, False).total_s
    queue = [Req(i, 4, 16, 0.5, 2, arrival_s=0.01 * i) for i in range(4)]
    d = DpBatching(system, state_of, EXACT).select(queue, now_s=1.0)
    assert [len(b) for b in d.batches] == [2, 2] and sorted(sum(ids(d), [])) == [0, 1, 2, 3]
    assert ids(d)[0] == [0, 1]  # equal tasks: the older two first
    no_pipe = DpBatching(system, state_of, replace(EXACT, pipeline=False)).select(queue, now_s=1.0)
    assert ids(no_pipe) == [[0, 1, 2, 3]]


def test_decisions_match_the_brute_force_optimum_on_small_queues():
    system = toy_system()
    queue = [Req(0, 4, 30, 0.6, 2), Req(1, 6, 2, 0.5, 2, 0.1), Req(2, 4, 12, 0.8, 1, 0.2), Req(3, 5, 3, 0.4, 2, 0.3)]
    policy = DpBatching(system, state_of, replace(EXACT, pipeline=False))
    d = policy.select(queue, now_s=1.0)
    tasks = [toy_task(r.key, r.context_tokens, r.remaining_tokens, r.alpha) for r in queue]
    best = brute_force_all_partitions(system, tasks, [0.0] * 4, SearchSpace((2,), (False,)))  # γ = the longest draft's
    chosen = sum(batch_breakdown(system, [tasks[p.request_id] for p in b], 2, False).total_s for b in d.batches)
    assert chosen == pytest.approx(best.makespan_s, rel=1e-9)  # all tasks ready: the makespan is the sum of batch costs


def test_gamma_is_the_longest_draft_and_defaults_when_unknown():
    system = toy_system(draft_flops=1e3)
    policy = DpBatching(system, state_of, EXACT)
    queue = [Req(i, 4, 16, 0.5, g) for i, g in enumerate((1, 3))]
    policy.select(queue, 0.0)
    assert [key[0] for key in policy._plans] == [3]
    unknown = DpBatching(system, lambda p: TaskState(p.key, 4, 16, 0.5), replace(EXACT, default_gamma=5))
    unknown.select(queue, 0.0)
    assert [key[0] for key in unknown._plans] == [5]


def test_only_the_oldest_max_tasks_are_planned_the_rest_follow_in_arrival_order():
    system = toy_system(draft_flops=1e3)
    queue = [Req(i, 4, 16, 0.5, 2, arrival_s=0.5 - 0.1 * i) for i in range(5)]  # id 4 is the oldest
    d = DpBatching(system, state_of, replace(EXACT, max_tasks=3, max_batch_size=0)).select(queue, now_s=1.0)
    planned = sorted(sum(ids(d)[:-1], []))
    assert planned == [2, 3, 4] and ids(d)[-1] == [1, 0]


def test_plans_are_cached_by_rounded_state_and_input_order_does_not_matter():
    system = toy_system()
    policy = DpBatching(system, state_of)  # default quanta: 64-token contexts, 16-token remainders
    a = [Req(0, 100, 30, 0.7, 4), Req(1, 20, 5, 0.5, 4, 0.1), Req(2, 60, 17, 0.6, 4, 0.2)]
    d1 = policy.select(a, 1.0)
    assert policy.plans_computed == 1
    d2 = policy.select(list(reversed(a)), 1.0)
    assert ids(d2) == ids(d1) and policy.plans_computed == 1
    b = [Req(0, 101, 31, 0.7, 4), Req(1, 21, 6, 0.5, 4, 0.1), Req(2, 62, 18, 0.6, 4, 0.2)]  # same rounded states
    assert ids(policy.select(b, 1.0)) == ids(d1) and policy.plans_computed == 1
    policy.select([Req(0, 300, 100, 0.7, 4)] + b[1:], 1.0)
    assert policy.plans_computed == 2


def test_no_feasible_plan_falls_back_to_max_batching():
    system = toy_system(memory_bytes=100.0)  # the weights alone are 64 bytes: a 40-token context does not fit
    queue = [Req(i, 40, 8, 0.5, 2, arrival_s=0.1 * i) for i in range(3)]
    d = DpBatching(system, state_of, replace(EXACT, max_batch_size=2)).select(queue, 1.0)
    assert ids(d) == [[0, 1], [2]]


def test_the_scheduler_runs_the_size_of_the_first_planned_batch():
    system = toy_system(draft_flops=1e3)  # the pipelined case above: 2 of 4 now
    scheduler = Scheduler(SchedulerConfig(max_batch_tokens=1000), DpBatching(system, state_of, EXACT))
    for i in range(4):
        scheduler.submit(QueuedDraft(Req(i, 4, 16, 0.5, 2), node=i, arrival_s=0.01 * i, cost_tokens=3))
    batch, wake = scheduler.next_batch(now_s=1.0)
    assert len(batch) == 2 and wake is None and scheduler.depth == 2


def test_config_is_validated():
    with pytest.raises(ValueError):
        DpBatchingConfig(max_tasks=0)
    with pytest.raises(ValueError):
        DpBatchingConfig(remaining_quantum_tokens=0)
    assert math.isclose(DpBatchingConfig().alpha_quantum, 0.01)
