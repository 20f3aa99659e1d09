"""CPU cores that several drafter devices share: processor sharing of their work, each device capped by its CPU quota.

On the testbed every device runs on the cores the verifier does not have, and a device with slowdown s
is held to 1/s of a core by a cgroup quota. A device's work (a draft pass and its per-round framework
work) is given in seconds at a whole core; while k jobs run on c cores, the capacity c (times the
measured `efficiency` when k > c: context switches and caches cost something) is shared equally,
except that no job gets more than its cap, and what a capped job leaves goes to the others
(water-filling). Rates change only when a job starts or ends, so each job's progress is exact.
With one job at a time, a job of work w and cap 1/s takes w · s: the same as a device of its own.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from edgespec.sim.kernel import EventLoop

__all__ = ["SharedCores", "share_rates"]

_EPS_S = 1e-12


def share_rates(caps: list[float], cores: float) -> list[float]:
    """Water-filling: each job's rate (cores) when `cores` of capacity are shared equally, no job above its cap."""
    rates = [0.0] * len(caps)
    left, order = cores, sorted(range(len(caps)), key=caps.__getitem__)
    for done, i in enumerate(order):
        rates[i] = min(caps[i], left / (len(order) - done))
        left -= rates[i]
    return rates


class _Job:
    __slots__ = ("remaining_s", "cap", "rate", "done", "arg")

    def __init__(self, work_s: float, cap: float, done: Callable[[Any], None], arg: Any) -> None:
        self.remaining_s, self.cap, self.rate, self.done, self.arg = work_s, cap, 0.0, done, arg


class SharedCores:
    """`cores` CPU cores shared by devices; `run(work_s, cap, done, arg)` calls `done(arg)` when the job has had its work."""

    def __init__(self, loop: EventLoop, cores: float, efficiency: float = 1.0) -> None:
        if not cores > 0 or not 0 < efficiency <= 1:
            raise ValueError(f"need cores > 0 and efficiency in (0, 1], got {cores}, {efficiency}")
        self.loop, self.cores, self.efficiency = loop, cores, efficiency
        self.jobs: list[_Job] = []
        self._since_s = 0.0
        self._event: Optional[int] = None
        self.busy_s = 0.0  # time with at least one job running

    def run(self, work_s: float, cap: float, done: Callable[[Any], None], arg: Any = None) -> None:
        """Start a job of `work_s` seconds of one whole core's work, at most `cap` cores at a time."""
        self._advance()
        self.jobs.append(_Job(max(work_s, 0.0), cap, done, arg))
        self._reschedule()

    def _advance(self) -> None:
        """Charge every running job the work it did since the last change."""
        now = self.loop.now_s
        elapsed = now - self._since_s
        if elapsed > 0 and self.jobs:
            self.busy_s += elapsed
            for job in self.jobs:
                job.remaining_s -= job.rate * elapsed
        self._since_s = now

    def _reschedule(self) -> None:
        if self._event is not None:
            self.loop.cancel(self._event)
            self._event = None
        if not self.jobs:
            return
        capacity = self.cores * (self.efficiency if len(self.jobs) > self.cores else 1.0)
        for job, rate in zip(self.jobs, share_rates([j.cap for j in self.jobs], capacity)):
            job.rate = rate
        first_s = min(j.remaining_s / j.rate for j in self.jobs)
        self._event = self.loop.at(self.loop.now_s + max(first_s, 0.0), self._finish)

    def _finish(self, _=None) -> None:
        self._event = None
        self._advance()
        finished = [j for j in self.jobs if j.remaining_s <= _EPS_S * max(1.0, j.rate)]
        if not finished:  # rounding left a sliver: the job with the least time left is the one that ended
            finished = [min(self.jobs, key=lambda j: j.remaining_s / j.rate)]
        self.jobs = [j for j in self.jobs if j not in finished]
        self._reschedule()
        for job in finished:
            job.done(job.arg)
