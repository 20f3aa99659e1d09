"""Helper shared by the runner tests on the CPU arena and on CUDA: drive a `VerifierRunner` with greedy drafts of a known continuation."""

from __future__ import annotations

from edgespec.server.runner import DraftItem, VerifierRunner
from edgespec.spec.sampling import SamplingParams
from edgespec.spec.verify import DraftBatch


def greedy_through_runner(target, prompts: list[list[int]], expected: list[list[int]], tokens: int) -> list[list[int]]:
    """Open a greedy session per prompt, then verify rounds of drafts (3 tokens of `expected` and one wrong id) until each emitted `tokens`."""
    runner = VerifierRunner(target)
    for i, p in enumerate(prompts):
        runner.open(i, p, SamplingParams(temperature=0.0), seed=0)
    emitted: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    while any(len(e) < tokens for e in emitted.values()):
        items = [DraftItem(i, runner.position(i), DraftBatch.from_blocks([expected[i][len(e) : len(e) + 3] + [1]]))
                 for i, e in emitted.items() if len(e) < tokens]
        for res in runner.verify_batch(items):
            assert res.error is None and res.forward_s > 0
            emitted[res.key] = runner.transcript(res.key)[len(prompts[res.key]):]
    return [emitted[i][:tokens] for i in range(len(prompts))]
