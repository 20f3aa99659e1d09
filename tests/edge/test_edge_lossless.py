"""Statistical losslessness end to end: sampled requests through a drafter node and a verifier node emit the target's distribution."""

import asyncio

import numpy as np
import pytest

from edgespec.edge import EdgeConfig, EdgeNode
from edgespec.edge.engine import GenerationRequest
from edgespec.spec.sampling import SamplingParams, probs_from_logits

from edge_helpers import LOOPBACK, run, verifier_node
from lossless_stats import assert_matches

PROMPT = (3, 5, 2)
TRIALS = 3000
PARAMS = SamplingParams(temperature=1.0)


def _target_joint(target, params) -> np.ndarray:
    """Exact P(t1, t2, t3 | PROMPT) from the target alone: [V, V, V]."""
    v = target.vocab_size
    kv = target.new_kv(v * v)
    prefixes = [list(PROMPT) + [a, b] for a in range(v) for b in range(v)]
    logits = target.forward(kv, prefixes, [3] * (v * v)).view(v, v, 3, v)
    p1 = probs_from_logits(logits[0, 0, 0], params)  # [V]
    p2 = probs_from_logits(logits[:, 0, 1], params)  # [t1, V]
    p3 = probs_from_logits(logits[:, :, 2], params)  # [t1, t2, V]
    return (p1[:, None, None] * p2[:, :, None] * p3).double().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("q_mode", ["topk"])  # top-K: fp16 quantised, renormalised q on the wire, the subtlest encoding
def test_sampled_output_follows_the_target_distribution(tiny_vocab_pair, q_mode):
    draft, _, target = tiny_vocab_pair
    v = target.vocab_size

    async def main():
        async with verifier_node(target) as verifier:
            config = EdgeConfig(verifiers=(f"{LOOPBACK}:{verifier.port}",), http_host=LOOPBACK, http_port=0, q_mode=q_mode,
                                top_k=3, gamma_policy="static", gamma=1, pipeline=True, seed=5)
            async with EdgeNode(config, draft=draft) as node:
                assert await node.wait_connected(10.0)
                engine, outs = node.engine, []
                for start in range(0, TRIALS, 500):  # 500 sessions at a time, each with its own seed
                    handles = [engine.submit(GenerationRequest(PROMPT, 4, PARAMS, seed=i, stop_at_eos=False)) for i in range(start, start + 500)]
                    outs += await asyncio.gather(*(h.result() for h in handles))
                return outs

    outs = run(main(), timeout_s=240)
    counts = np.zeros((v, v, v))
    for out in outs:
        counts[out.token_ids[:3]] += 1
    assert sum(o.stats.pipeline_hits for o in outs) > 0  # the speculative path was exercised
    assert sum(o.stats.draft_rejections for o in outs) == 0
    assert_matches(counts, _target_joint(target, PARAMS))
