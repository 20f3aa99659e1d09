"""Statistical losslessness through the real verifier node: sampled output follows the target's distribution exactly, whatever the drafter proposes."""

import asyncio

import numpy as np
import pytest
import torch

from edgespec.protocol import pack_q, quantize_fp16
from edgespec.protocol import messages as m
from edgespec.spec.sampling import SamplingParams, probs_from_logits

from server_helpers import run, running_node
from drafting_client import TestDrafter
from lossless_stats import assert_matches

PROMPT = [3, 5, 2]
TRIALS = 2000
CONCURRENT_SESSIONS = 64


def _target_joint(target, params: SamplingParams) -> np.ndarray:
    """Exact P(t1, t2 | PROMPT) under `params` from the target alone: [V, V]."""
    v = target.vocab_size
    kv = target.new_kv(v)
    logits = target.forward(kv, [PROMPT + [t] for t in range(v)], [2] * v).view(v, 2, v)
    p1 = probs_from_logits(logits[0, 0], params)
    p2 = probs_from_logits(logits[:, 1], params)
    return (p1[:, None] * p2).double().numpy()


def _draft(rng: np.random.Generator, gamma: int, vocab: int, q_mode: str):
    """An arbitrary drafter: q is a random distribution per position, quantised to fp16 and renormalised before sampling (exact on the wire)."""
    if q_mode == "tokens":
        return rng.integers(0, vocab, gamma).tolist(), pack_q("tokens")
    q16 = quantize_fp16(rng.dirichlet(np.full(vocab, 0.5), gamma))
    q = q16.astype(np.float32)
    q /= q.sum(-1, keepdims=True)  # the verifier renormalises the fp16 rows the same way
    tokens = [int(rng.choice(vocab, p=row / row.sum(dtype=np.float64))) for row in q.astype(np.float64)]
    for j, t in enumerate(tokens):  # a token the fp16 row gives 0 cannot be sent: resample from the positive cells
        if q16[j, t] == 0:
            tokens[j] = int(np.flatnonzero(q16[j] > 0)[0])
    return tokens, pack_q("full", q_probs=q16)


@pytest.mark.parametrize("q_mode", ["full", pytest.param("tokens", marks=pytest.mark.slow)])
def test_sampled_output_matches_target_distribution(tiny_vocab_pair, q_mode):
    draft, _, target = tiny_vocab_pair
    params = SamplingParams(temperature=1.0)
    vocab = target.vocab_size
    rng = np.random.default_rng(5)

    async def trial(d: TestDrafter, gate: asyncio.Semaphore) -> tuple[int, int]:
        async with gate:
            sid, opened = await d.open(PROMPT, m.Sampling(temperature=1.0), 2)
            assert opened.kind == "session_opened"
            tokens, pos = [], len(PROMPT)
            while len(tokens) < 2:
                block, q = _draft(rng, 1 - len(tokens), vocab, q_mode)
                await d.send(m.draft(sid, pos, block, q))
                verdict = (await d.next_event(sid)).message
                emitted = block[: verdict.accepted] + [verdict.next_token_id]
                tokens += emitted
                pos += len(emitted)
            await d.send(m.close(sid))
            await d.next_event(sid)
            return tokens[0], tokens[1]

    async def main():
        async with running_node(target, max_gamma=4, max_top_k=8) as node:
            async with TestDrafter(node.url, draft) as d:
                gate = asyncio.Semaphore(CONCURRENT_SESSIONS)
                return await asyncio.gather(*(trial(d, gate) for _ in range(TRIALS)))

    pairs = run(main(), timeout_s=300)
    counts = np.zeros((vocab, vocab))
    for a, b in pairs:
        counts[a, b] += 1
    with torch.inference_mode():
        expected = _target_joint(target, params)
    assert_matches(counts, expected)
