"""Verifier batching policies: when to close a batch of pending verification requests, and the live DP plan.

`WindowBatching` and `MaxBatching` decide from the pending requests and the current time, which
the caller passes in (no clock is read). `DpPlanPolicy` wraps the planner's DP
(edgespec.plan.dp) for live use: given the tasks in flight it returns the batches to run in
order, with γ and pipelining per batch; a scheduler runs the first and asks again later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

from edgespec.plan.dp import SearchSpace, plan_batches
from edgespec.plan.latency import PlannedBatch
from edgespec.plan.scenario import ServingSystem, Task

__all__ = ["Pending", "BatchDecision", "WindowBatching", "MaxBatching", "TaskState", "DpPlanPolicy"]


@dataclass(frozen=True)
class Pending:
    """A verification request waiting at the verifier."""

    request_id: Hashable
    arrival_s: float
    new_tokens: int = 1  # positions to verify (γ + 1), for policies that weigh requests


@dataclass(frozen=True)
class BatchDecision:
    """Batches to dispatch now (oldest first) and when to ask again if nothing new arrives (None: on arrival only)."""

    batches: tuple[tuple[Pending, ...], ...]
    wake_at_s: Optional[float]


def _by_arrival(pending: Sequence[Pending]) -> list[Pending]:
    """Oldest first; requests that arrived at the same instant in the order of their ids (so input order never matters)."""
    queue = sorted(pending, key=_arrival)
    if any(a.arrival_s == b.arrival_s for a, b in zip(queue, queue[1:])):  # ties are rare: pay for the full key only then
        queue.sort(key=lambda p: (p.arrival_s, str(p.request_id)))
    return queue


def _arrival(p: Pending) -> float:
    return p.arrival_s


def _chunks(items: Sequence[Pending], size: int) -> list[tuple[Pending, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class WindowBatching:
    """Close a batch when it reaches `max_batch_size`, or when its oldest request has waited `window_s`."""

    window_s: float
    max_batch_size: int

    def __post_init__(self) -> None:
        if self.window_s < 0 or self.max_batch_size < 1:
            raise ValueError("need window_s >= 0 and max_batch_size >= 1")

    def select(self, pending: Sequence[Pending], now_s: float) -> BatchDecision:
        """Dispatch full batches at once and the remainder when the window of its oldest request has expired."""
        queue = _by_arrival(pending)
        full = len(queue) - len(queue) % self.max_batch_size
        batches = _chunks(queue[:full], self.max_batch_size)
        rest = queue[full:]
        if not rest:
            return BatchDecision(tuple(batches), None)
        deadline = rest[0].arrival_s + self.window_s
        if now_s >= deadline:
            return BatchDecision(tuple(batches) + (tuple(rest),), None)
        return BatchDecision(tuple(batches), deadline)


@dataclass(frozen=True)
class MaxBatching:
    """Dispatch everything pending at once, in batches of at most `max_batch_size` (0 = unlimited)."""

    max_batch_size: int = 0

    def select(self, pending: Sequence[Pending], now_s: float) -> BatchDecision:
        queue = _by_arrival(pending)
        if not queue:
            return BatchDecision((), None)
        return BatchDecision(tuple(_chunks(queue, self.max_batch_size or len(queue))), None)


@dataclass(frozen=True)
class TaskState:
    """A task in flight, as the live planner sees it."""

    task_id: int
    context_tokens: int  # prompt plus tokens generated so far
    remaining_tokens: int  # output tokens still to generate
    alpha: float
    ready_s: float = 0.0  # absolute time its input is available at the drafter node


class DpPlanPolicy:
    """The DP planner as a live policy: tasks in flight → batches in order, γ and pipelining per batch.

    Cost per call grows as K·min(K, max batch)·|γ range| (a few ms for tens of tasks). The plan
    is optimal for the latency model over contiguous batches of tasks sorted by expected rounds
    (see edgespec.plan.dp for when that is optimal over all partitions).
    """

    def __init__(self, system: ServingSystem, space: SearchSpace) -> None:
        self.system, self.space = system, space

    def plan(self, tasks: Sequence[TaskState], now_s: float) -> tuple[PlannedBatch, ...]:
        """All batches for the current tasks, in execution order (empty when there is nothing to do)."""
        active = [t for t in tasks if t.remaining_tokens > 0]
        if not active:
            return ()
        as_tasks = [
            Task(t.task_id, max(t.context_tokens, 1), t.remaining_tokens, t.alpha, upload_bytes=1.0,
                 spectral_efficiency_bps_per_hz=1.0)
            for t in active
        ]
        ready = [max(t.ready_s - now_s, 0.0) for t in active]
        return plan_batches(self.system, as_tasks, ready, self.space).batches

    def next_batch(self, tasks: Sequence[TaskState], now_s: float) -> Optional[PlannedBatch]:
        """The batch to run now: the first of the current plan (None when there is nothing to do)."""
        batches = self.plan(tasks, now_s)
        return batches[0] if batches else None

