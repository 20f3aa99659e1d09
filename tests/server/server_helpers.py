"""Helpers for the verifier node's tests: run a coroutine with a deadline, reference AD outputs, a node on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Optional

from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.spec.sampling import SamplingParams
from node_helpers import loopback_verifier

PROMPTS = [[5, 9, 3], [17, 2], [40, 41, 42, 43, 44], [7], [60, 12, 8, 30]]


def run(coro, timeout_s: float = 60.0):
    """Run a coroutine in a fresh event loop, failing after `timeout_s`."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def ad_tokens(target, prompts, max_new_tokens: int) -> list[list[int]]:
    """Target-only greedy decoding, the reference every temperature-0 output must equal."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, sampling=SamplingParams(temperature=0.0), stop_at_eos=False)
    return [r.token_ids for r in generate_ad(target, prompts, cfg)]


def running_node(target, **overrides):
    """A verifier node for `target` on an ephemeral loopback port, stopped on exit."""
    return loopback_verifier(target, **{"max_gamma": 8, "max_top_k": 16, **overrides})


async def wait_until(predicate, timeout_s: float = 30.0, what: Optional[str] = None) -> None:
    """Poll `predicate()` until it holds (the node frees KV in its batch loop, asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)
