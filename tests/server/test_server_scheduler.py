"""Scheduler and KV budget as pure objects: batch window, token and size limits, round-robin fairness across drafter nodes, admission."""

import pytest

from edgespec.policy.batching import MaxBatching
from edgespec.server.kvbudget import KvBudget
from edgespec.server.runner import DraftItem
from edgespec.server.scheduler import QueuedDraft, Scheduler, SchedulerConfig
from edgespec.spec.verify import DraftBatch


def _q(node, sid, arrival_s=0.0, gamma=3, pending=1):
    item = DraftItem((node, sid), 10, DraftBatch.from_blocks([[1] * gamma]))
    return QueuedDraft(item, node, arrival_s, pending + gamma)


def test_window_holds_a_lone_draft_until_it_expires():
    s = Scheduler(SchedulerConfig(max_batch_tokens=100, batch_window_s=0.005))
    s.submit(_q("a", 1, arrival_s=1.0))
    assert s.next_batch(1.001, open_sessions=3) == ([], pytest.approx(1.005))
    batch, _ = s.next_batch(1.006, open_sessions=3)
    assert [q.item.key for q in batch] == [("a", 1)] and s.depth == 0


def test_no_wait_when_every_open_session_has_a_draft_queued():
    s = Scheduler(SchedulerConfig(max_batch_tokens=100, batch_window_s=10.0))
    s.submit(_q("a", 1))
    s.submit(_q("b", 1))
    batch, _ = s.next_batch(0.0, open_sessions=2)
    assert len(batch) == 2


def test_chatty_node_cannot_starve_others():
    s = Scheduler(SchedulerConfig(max_batch_tokens=1000, max_batch_size=2, batch_window_s=0.0))
    for sid in range(10):
        s.submit(_q("chatty", sid, arrival_s=0.0))
    s.submit(_q("quiet", 1, arrival_s=0.5))
    s.submit(_q("other", 1, arrival_s=0.6))
    served = []
    while s.depth:
        batch, _ = s.next_batch(1.0)
        served.append([q.node for q in batch])
    assert served[0] == ["chatty", "quiet"]  # one each, not the ten oldest
    assert "other" in served[1]
    assert sum(len(b) for b in served) == 12


def test_token_limit_and_an_oversized_draft_runs_alone():
    s = Scheduler(SchedulerConfig(max_batch_tokens=10, batch_window_s=0.0))
    s.submit(_q("a", 1, gamma=3, pending=1))  # 4 tokens
    s.submit(_q("b", 1, gamma=3, pending=1))  # 4
    s.submit(_q("c", 1, gamma=3, pending=2))  # 5: does not fit after a and b
    batch, _ = s.next_batch(0.0)
    assert [q.node for q in batch] == ["a", "b"]
    big = Scheduler(SchedulerConfig(max_batch_tokens=10, batch_window_s=0.0))
    big.submit(_q("x", 1, gamma=8, pending=30))
    big.submit(_q("y", 1))
    assert [q.node for q in big.next_batch(0.0)[0]] == ["x"]
    assert [q.node for q in big.next_batch(0.0)[0]] == ["y"]


def test_one_draft_per_session_per_batch_and_drops():
    s = Scheduler(SchedulerConfig(batch_window_s=0.0), policy=MaxBatching())
    s.submit(_q("a", 1))
    s.submit(_q("a", 1))  # a misbehaving duplicate
    s.submit(_q("a", 2))
    s.submit(_q("b", 7))
    assert s.drop_session(("b", 7)) == 1
    batch, _ = s.next_batch(0.0)
    assert [q.item.key for q in batch] == [("a", 1)]  # a's next draft is the duplicate: a waits for the next batch
    assert s.drop_node("a") == 2 and s.depth == 0


def test_kv_budget_admission():
    budget = KvBudget(100)
    assert budget.reserve("s1", 60).admitted
    refused = budget.reserve("s2", 50)
    assert not refused.admitted and not refused.never and refused.free_tokens == 40
    assert budget.reserve("s3", 101).never
    assert budget.release("s1") == 60 and budget.reserved_tokens == 0
    assert budget.reserve("s2", 50).admitted


def _released_pair(merge_wait_s: float, turnaround_b_s: float) -> Scheduler:
    """Sessions a and b had verdicts out at t=0; they came back after 1 ms and `turnaround_b_s`; now their verdicts go out at t=1."""
    s = Scheduler(SchedulerConfig(max_batch_tokens=100, batch_window_s=0.0))
    s.merge_wait_s = merge_wait_s
    s.release([("a", 1), ("b", 1)], 0.0)
    s.submit(_q("a", 1, arrival_s=0.001))
    s.submit(_q("b", 1, arrival_s=turnaround_b_s))
    s.next_batch(turnaround_b_s, open_sessions=2)  # both run
    s.release([("a", 1), ("b", 1)], 1.0)
    s.submit(_q("a", 1, arrival_s=1.001))
    return s


def test_merge_wait_holds_a_batch_for_a_session_due_back_within_it():
    s = _released_pair(merge_wait_s=0.004, turnaround_b_s=0.003)
    assert s.next_batch(1.001, open_sessions=2) == ([], pytest.approx(1.003))  # b is due back at 1.003, within the wait
    s.submit(_q("b", 1, arrival_s=1.003))
    batch, _ = s.next_batch(1.003, open_sessions=2)
    assert sorted(q.item.key for q in batch) == [("a", 1), ("b", 1)]


def test_merge_wait_does_not_wait_for_a_session_due_later_or_when_off():
    late = _released_pair(merge_wait_s=0.004, turnaround_b_s=0.010)  # b is due back at 1.010: beyond the wait
    assert [q.item.key for q in late.next_batch(1.001, open_sessions=2)[0]] == [("a", 1)]
    off = _released_pair(merge_wait_s=0.0, turnaround_b_s=0.003)
    assert [q.item.key for q in off.next_batch(1.001, open_sessions=2)[0]] == [("a", 1)]
