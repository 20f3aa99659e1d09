"""Compute costs of simulated forwards (draft passes, verification batches, prefills), from the latency model or a measured profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from edgespec.plan.latency import prefill_time_s, step_time_s
from edgespec.plan.scenario import NodeSpec
from edgespec.policy.load import packs

__all__ = ["ConstantCost", "NodeCost", "StepCost", "scaled"]

CONTEXT_BUCKET = 64  # roofline costs depend on context; they are cached per 64-token bucket


class StepCost:
    """Interface: seconds for one forward of `batch_size` sequences adding `new_tokens` each, and for prefills."""

    def step_s(self, batch_size: int, new_tokens: int, context_tokens: int) -> float:
        raise NotImplementedError

    def prefill_s(self, batch_size: int, prompt_tokens: int) -> float:
        raise NotImplementedError

    def ragged_step_s(self, batch_size: int, tokens: int, width: int, context_tokens: int) -> float:
        """A verification forward of rows padded to `width` holding `tokens` real tokens, as the real runtime runs it: padded
        (`step_s` at the width), or packed (`policy.load.packs`), then priced between the batch at width 1 and at `width`
        in proportion to the real tokens beyond one per row — projections follow the tokens, attention stays padded."""
        wide = self.step_s(batch_size, width, context_tokens)
        if not packs(tokens, batch_size, width):
            return wide
        narrow = self.step_s(batch_size, 1, context_tokens)
        return narrow + (wide - narrow) * (tokens - batch_size) / (batch_size * (width - 1))

    def draft_pass_s(self, gammas: Sequence[int], context_tokens: int) -> float:
        """One batched draft pass: step s runs the sessions that still draft at step s (γ_i >= s), one token each."""
        if len(gammas) == 1:
            return gammas[0] * self.step_s(1, 1, context_tokens)
        if not gammas:
            return 0.0
        ordered = sorted(gammas, reverse=True)
        total, n = 0.0, len(ordered)
        for s in range(1, ordered[0] + 1):
            while n and ordered[n - 1] < s:
                n -= 1
            total += self.step_s(n, 1, context_tokens)
        return total


@dataclass(frozen=True)
class ConstantCost(StepCost):
    """Hand-set costs: `step_s` per forward plus `per_token_s` per token beyond one per sequence and `per_seq_s` per sequence beyond one.

    For golden tests and for the textbook regime (verification of γ+1 tokens costs one decode step).
    Prefill costs `prefill_per_token_s` per prompt token of the longest prompt (0 by default).
    """

    base_s: float
    per_token_s: float = 0.0
    per_seq_s: float = 0.0
    prefill_per_token_s: float = 0.0

    def step_s(self, batch_size: int, new_tokens: int, context_tokens: int) -> float:
        return self.base_s + self.per_token_s * (new_tokens - 1) + self.per_seq_s * (batch_size - 1)

    def prefill_s(self, batch_size: int, prompt_tokens: int) -> float:
        return self.prefill_per_token_s * prompt_tokens


class NodeCost(StepCost):
    """Costs of a planner `NodeSpec` (its measured profile, else the roofline model), cached, scaled by `slowdown`."""

    def __init__(self, node: NodeSpec, slowdown: float = 1.0) -> None:
        if not slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {slowdown}")
        self.node, self.slowdown = node, slowdown
        self._steps: dict[tuple[int, int, int], float] = {}  # by (batch, new tokens, context)
        self._bucket_steps: dict[tuple[int, int, int], float] = {}  # by (batch, new tokens, context bucket)
        self._prefills: dict[tuple[int, int], float] = {}
        self._uses_context = node.profile is None

    def step_s(self, batch_size: int, new_tokens: int, context_tokens: int) -> float:
        key = (batch_size, new_tokens, context_tokens)  # each context's bucket is computed once
        cost = self._steps.get(key)
        if cost is None:
            bucket = -(-context_tokens // CONTEXT_BUCKET) * CONTEXT_BUCKET if self._uses_context else 0
            cost = self._steps[key] = self._bucket_step_s(batch_size, new_tokens, bucket)
        return cost

    def _bucket_step_s(self, batch_size: int, new_tokens: int, bucket: int) -> float:
        key = (batch_size, new_tokens, bucket)
        cost = self._bucket_steps.get(key)
        if cost is None:
            cost = self._bucket_steps[key] = self.slowdown * float(step_time_s(self.node, batch_size, new_tokens, max(bucket, 1)))
        return cost

    def prefill_s(self, batch_size: int, prompt_tokens: int) -> float:
        key = (batch_size, prompt_tokens)
        cost = self._prefills.get(key)
        if cost is None:
            cost = self._prefills[key] = self.slowdown * float(prefill_time_s(self.node, batch_size, prompt_tokens))
        return cost


def scaled(cost: StepCost, slowdown: float) -> StepCost:
    """`cost` for a device `slowdown` times slower (NodeCost and ConstantCost)."""
    if slowdown == 1.0:
        return cost
    if isinstance(cost, NodeCost):
        return NodeCost(cost.node, cost.slowdown * slowdown)
    if isinstance(cost, ConstantCost):
        return ConstantCost(cost.base_s * slowdown, cost.per_token_s * slowdown, cost.per_seq_s * slowdown, cost.prefill_per_token_s * slowdown)
    raise TypeError(f"cannot scale {type(cost).__name__}")


