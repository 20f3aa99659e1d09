"""The event kernel: a heap of callbacks ordered by (time, priority, sequence), so equal-time events run in a fixed order."""

from __future__ import annotations

import heapq
from typing import Any, Callable

__all__ = ["EventLoop", "SimulationError"]

# Priorities for events at the same instant (lower runs first): deliveries before decisions, so a
# policy deciding at time t sees everything that arrived at t.
DELIVER, DECIDE, TIMER = 0, 1, 2


class SimulationError(RuntimeError):
    """The simulation reached an impossible state (a bug or an inconsistent scenario); the run fails loudly."""


class EventLoop:
    """Discrete-event clock: `at`/`after` schedule `fn(arg)`; `run` executes events in (time, priority, sequence) order.

    Events are plain callbacks with one argument, not coroutines or processes: a round of speculative
    decoding costs a handful of heap operations. Cancelled timers are skipped lazily (`cancel`).
    """

    __slots__ = ("now_s", "_heap", "_seq", "events", "_cancelled")

    def __init__(self) -> None:
        self.now_s = 0.0
        self._heap: list[tuple[float, int, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self.events = 0
        self._cancelled: set[int] = set()

    def at(self, time_s: float, fn: Callable[[Any], None], arg: Any = None, priority: int = DELIVER) -> int:
        """Schedule `fn(arg)` at absolute time `time_s` (never in the past); returns a handle for `cancel`."""
        if not time_s >= self.now_s:  # also refuses NaN
            raise SimulationError(f"event scheduled in the past: {time_s} < now {self.now_s}")
        self._seq += 1
        heapq.heappush(self._heap, (time_s, priority, self._seq, fn, arg))
        return self._seq

    def at_reserved(self, time_s: float, seq: int, fn: Callable[[Any], None], arg: Any = None, priority: int = DELIVER) -> None:
        """Schedule `fn(arg)` at `time_s` under a sequence number taken earlier with `reserve_seq`: it runs exactly
        where an event scheduled at that earlier moment would have (the order is by time, priority, sequence)."""
        if not time_s >= self.now_s:
            raise SimulationError(f"event scheduled in the past: {time_s} < now {self.now_s}")
        heapq.heappush(self._heap, (time_s, priority, seq, fn, arg))

    def reserve_seq(self) -> int:
        """A sequence number as `at` would assign, for callers that order deferred work the way events would run."""
        self._seq += 1
        return self._seq

    def after(self, delay_s: float, fn: Callable[[Any], None], arg: Any = None, priority: int = DELIVER) -> int:
        """Schedule `fn(arg)` `delay_s` seconds from now."""
        return self.at(self.now_s + delay_s, fn, arg, priority)

    def cancel(self, handle: int) -> None:
        """Skip the event with this handle when its time comes."""
        self._cancelled.add(handle)

    def run(self, until_s: float = float("inf"), max_events: int = 0) -> None:
        """Run events until the heap is empty, the next event is after `until_s`, or `max_events` ran (0 = no limit)."""
        heap, pop, cancelled = self._heap, heapq.heappop, self._cancelled
        budget = max_events or -1
        while heap and budget:
            if heap[0][0] > until_s:
                break
            time_s, _, seq, fn, arg = pop(heap)
            if cancelled and seq in cancelled:
                cancelled.discard(seq)
                continue
            self.now_s = time_s
            self.events += 1
            budget -= 1
            fn(arg)
        if until_s != float("inf") and (not heap or heap[0][0] > until_s):
            self.now_s = max(self.now_s, until_s)

    def nothing_else_now(self) -> bool:
        """True when no other event is due at the current instant (the next one is strictly later, or none)."""
        heap = self._heap
        return not heap or heap[0][0] > self.now_s

    @property
    def pending(self) -> int:
        """Events still scheduled (including cancelled ones not yet skipped)."""
        return len(self._heap)
