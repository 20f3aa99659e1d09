"""The speculation gate in the real nodes: sessions switch between AD and speculating rounds mid-session and stay lossless."""

import asyncio

import numpy as np
import pytest

from edgespec.edge.engine import GenerationRequest
from edgespec.policy.load import ForwardCost
from edgespec.spec.sampling import SamplingParams

from edge_helpers import LOOPBACK, PROMPTS, ad_text, client, edge_node, encode, run, verifier_node
from lossless_stats import assert_matches
from test_edge_lossless import PROMPT, _target_joint

# A verifier that announces a compute-bound forward (every position of every row costs a decode step's worth):
# speculating loses, the gate closes, and with probe_every=1 each AD round is followed by a speculating probe.
COMPUTE_BOUND = ForwardCost(base_s=0.0, per_position_s=0.05, per_row_s=0.0)


def test_greedy_output_equals_ad_while_the_gate_switches_mid_session(toy_pair):
    draft, target = toy_pair

    async def main():
        async with verifier_node(target, forward_cost=COMPUTE_BOUND) as verifier:
            async with edge_node(draft, [f"{LOOPBACK}:{verifier.port}"], gamma_policy="adaptive", gamma=3, max_gamma=4,
                                 probe_every=1) as node:
                handles = [node.engine.submit(GenerationRequest(tuple(encode(draft, p)), 24, SamplingParams(0.0), stop_at_eos=False))
                           for p in PROMPTS]
                outs = await asyncio.gather(*(h.result() for h in handles))
                async with client(node) as http:  # and through the OpenAI API, with the node's default policy settings
                    r = await http.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0})
                return outs, r.json()

    outs, response = run(main())
    for prompt, out in zip(PROMPTS, outs):
        assert out.text == ad_text(target, prompt, 24, stop_at_eos=False)
        assert 0 < out.stats.ad_rounds < out.stats.rounds  # both kinds of rounds in the session: the gate switched mid-session
    assert response["choices"][0]["text"] == ad_text(target, PROMPTS[0], 16)


@pytest.mark.slow
def test_sampled_output_follows_the_target_distribution_while_the_gate_switches(tiny_vocab_pair):
    draft, _, target = tiny_vocab_pair
    v = target.vocab_size
    params = SamplingParams(temperature=1.0)
    trials = 3000

    async def main():
        async with verifier_node(target, forward_cost=COMPUTE_BOUND) as verifier:
            async with edge_node(draft, [f"{LOOPBACK}:{verifier.port}"], q_mode="topk", top_k=3, gamma_policy="adaptive", gamma=2,
                                 max_gamma=2, probe_every=1, seed=7) as node:
                outs = []
                for start in range(0, trials, 500):  # the verifier seeds each session from its own generator
                    handles = [node.engine.submit(GenerationRequest(PROMPT, 4, params, stop_at_eos=False)) for _ in range(500)]
                    outs += await asyncio.gather(*(h.result() for h in handles))
                return outs

    outs = run(main(), timeout_s=240)
    switched = sum(1 for o in outs if 0 < o.stats.ad_rounds and o.stats.drafted_tokens > 0)
    assert switched > trials // 2  # most sessions ran both AD and speculating rounds
    assert sum(o.stats.draft_rejections for o in outs) == 0
    counts = np.zeros((v, v, v))
    for out in outs:
        counts[out.token_ids[:3]] += 1
    assert_matches(counts, _target_joint(target, params))
