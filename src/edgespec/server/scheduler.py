"""The verifier's scheduler: decides when to close a batch of queued drafts and which drafts go in it, fairly across drafter nodes.

When: a pluggable batching policy from `edgespec.policy.batching` (default `WindowBatching`: the batch
window of the oldest draft, or a full batch) — or at once when the queued drafts already fill
`max_batch_tokens` or every open session has a draft queued (waiting longer cannot add anything).
Merge wait: a batch about to start without every open session holds back, up to `merge_wait_s`, for
sessions whose verdicts just went out and are expected back within that time (each session's own last
turnaround, verdict out → next draft in): otherwise sessions that once drifted into two groups (e.g.
after speculating, when rounds take turns with drafting) stay split and every forward pays its fixed
cost for half the rows. The node sets `merge_wait_s` from its forward-time model (a share of the
fixed cost of a forward, which merging saves); 0 turns it off.
Which: round-robin over drafter nodes (FIFO within a node), starting one node further each batch, at most
one draft per session, until `max_batch_tokens` target positions or the policy's batch size; a
single draft larger than `max_batch_tokens` still runs, alone. The scheduler decides; the runner executes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Optional, Protocol, Sequence

from edgespec.policy.batching import BatchDecision, Pending, WindowBatching

if TYPE_CHECKING:  # the scheduler is torch-free: the simulator runs it with its own items (anything with a `key`)
    from edgespec.server.runner import DraftItem, SessionKey

__all__ = ["SchedulerConfig", "QueuedDraft", "BatchPolicy", "Scheduler"]


@dataclass(frozen=True)
class SchedulerConfig:
    """Batch limits: target positions per batch, drafts per batch (0 = no limit) and the batch window."""

    max_batch_tokens: int = 2048
    max_batch_size: int = 0
    batch_window_s: float = 0.002

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_size < 0 or self.batch_window_s < 0:
            raise ValueError("need max_batch_tokens >= 1, max_batch_size >= 0 and batch_window_s >= 0")


@dataclass(slots=True)
class QueuedDraft:
    """A draft waiting for verification: the item, its drafter node (the fairness key), arrival time and cost in target positions."""

    item: DraftItem
    node: Hashable
    arrival_s: float  # event-loop clock, for the batching window
    cost_tokens: int  # transcript tokens the cache lacks + γ: positions the target forward processes
    received_s: float = 0.0  # time.perf_counter() when its frame was received, for the verdict's RoundTiming

    @property
    def request_id(self) -> Hashable:  # the batching policy's view (edgespec.policy.batching.Pending)
        return self.item.key

    @property
    def new_tokens(self) -> int:
        return self.cost_tokens


class BatchPolicy(Protocol):
    """When to close a batch (edgespec.policy.batching: `WindowBatching`, `MaxBatching`)."""

    def select(self, pending: Sequence[Pending], now_s: float) -> BatchDecision: ...


class Scheduler:
    """Queues drafts per drafter node and forms ragged batches under the token and size limits, round-robin across nodes."""

    def __init__(self, config: SchedulerConfig = SchedulerConfig(), policy: Optional[BatchPolicy] = None) -> None:
        self.config = config
        self.policy = policy or WindowBatching(window_s=config.batch_window_s, max_batch_size=config.max_batch_size or 2**31)
        self._queues: "OrderedDict[Hashable, deque[QueuedDraft]]" = OrderedDict()  # node -> FIFO; order = round-robin order
        self._depth = 0
        self._tokens = 0
        self.merge_wait_s = 0.0  # see the module docstring; the owner updates it
        self._released: dict = {}  # session key -> when its verdict went out (awaiting its next draft)
        self._turnaround: dict = {}  # session key -> its last verdict-out → draft-in time

    @property
    def depth(self) -> int:
        """Drafts waiting, all nodes."""
        return self._depth

    def queued_tokens(self) -> int:
        """Target positions of every queued draft (kept as a running sum)."""
        return self._tokens

    def release(self, keys, now_s: float) -> None:
        """The verdicts of these sessions went out at `now_s` (the merge wait expects them back)."""
        if self.merge_wait_s > 0.0:
            for key in keys:
                self._released[key] = now_s

    def submit(self, draft: QueuedDraft) -> None:
        if self._released:
            out = self._released.pop(draft.item.key, None)
            if out is not None:
                self._turnaround[draft.item.key] = draft.arrival_s - out
        queue = self._queues.get(draft.node)
        if queue is None:
            self._queues[draft.node] = deque((draft,))
        else:
            queue.append(draft)
        self._depth += 1
        self._tokens += draft.cost_tokens

    def drop_session(self, key: SessionKey) -> int:
        """Remove a session's queued drafts (it closed); returns how many."""
        self._released.pop(key, None)
        self._turnaround.pop(key, None)
        dropped = 0
        for node, queue in list(self._queues.items()):
            if not any(q.item.key == key for q in queue):
                continue
            kept = deque(q for q in queue if q.item.key != key)
            dropped += len(queue) - len(kept)
            self._tokens -= sum(q.cost_tokens for q in queue if q.item.key == key)
            self._set_queue(node, kept)
        self._depth -= dropped
        return dropped

    def drop_node(self, node: Hashable) -> int:
        """Remove every queued draft of a drafter node (it disconnected); returns how many."""
        queue = self._queues.pop(node, deque())
        self._depth -= len(queue)
        self._tokens -= sum(q.cost_tokens for q in queue)
        return len(queue)

    def _set_queue(self, node: Hashable, queue: deque) -> None:
        if queue:
            self._queues[node] = queue
        else:
            self._queues.pop(node, None)

    def next_batch(self, now_s: float, open_sessions: int = 0) -> tuple[list[QueuedDraft], Optional[float]]:
        """The batch to run now (empty if none) and, when empty, the time to ask again (None: on the next arrival)."""
        depth = self._depth
        if not depth:
            return [], None
        queues, config = self._queues, self.config
        if depth == len(queues):  # one draft per node (QueuedDraft reads as a policy's Pending)
            pending = [queue[0] for queue in queues.values()]
        else:
            pending = [q for queue in queues.values() for q in queue]
        decision = self.policy.select(pending, now_s)
        batches = decision.batches
        everyone = open_sessions and depth >= open_sessions
        if not batches and not (self._tokens >= config.max_batch_tokens or everyone):
            return [], decision.wake_at_s
        if not everyone and self._released and self._tokens < config.max_batch_tokens:
            back_at = self._expected_back(now_s)
            if back_at is not None:
                return [], back_at
        size = len(batches[0]) if batches else (config.max_batch_size or depth)
        if config.max_batch_size:
            size = min(size, config.max_batch_size)
        return self._fair_fill(max(size, 1)), None

    def _expected_back(self, now_s: float) -> Optional[float]:
        """The latest time within the merge wait at which a released session is expected back, or None (dispatch now)."""
        horizon = now_s + self.merge_wait_s
        latest = None
        for key, out in self._released.items():
            turn = self._turnaround.get(key)
            if turn is None:
                continue
            due = out + turn
            if now_s < due <= horizon and (latest is None or due > latest):
                latest = due
        return latest

    def _fair_fill(self, max_size: int) -> list[QueuedDraft]:
        """Take drafts round-robin across nodes (FIFO per node), one per session, within the size and token limits."""
        queues = self._queues
        if self._depth == len(queues) and self._depth <= max_size and (self._depth == 1 or self._tokens <= self.config.max_batch_tokens):
            # one draft per node and all of them fit: the round-robin takes every head in node order, empties every queue
            batch = [queue[0] for queue in queues.values()]
            queues.clear()
            self._depth = self._tokens = 0
            return batch
        batch: list[QueuedDraft] = []
        keys: set = set()
        tokens = 0
        nodes = list(self._queues)
        blocked: set = set()  # nodes whose next draft does not fit this batch
        while len(batch) < max_size and len(blocked) < len(nodes):
            progressed = False
            for node in nodes:
                if len(batch) >= max_size:
                    break
                queue = self._queues.get(node)
                if node in blocked or not queue:
                    blocked.add(node)
                    continue
                head = queue[0]
                if head.item.key in keys or (batch and tokens + head.cost_tokens > self.config.max_batch_tokens):
                    blocked.add(node)
                    continue
                queue.popleft()
                batch.append(head)
                keys.add(head.item.key)
                tokens += head.cost_tokens
                progressed = True
            if not progressed:
                break
        self._depth -= len(batch)
        self._tokens -= tokens
        for node in nodes:  # drop emptied queues (a node that drafts again joins at the back)
            if node in self._queues and not self._queues[node]:
                del self._queues[node]
        for node in dict.fromkeys(q.node for q in batch):  # rotate: nodes served move to the back, in service order
            if node in self._queues:
                self._queues.move_to_end(node)
        return batch
