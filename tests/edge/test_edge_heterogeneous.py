"""Heterogeneous drafters (issue 3, item 4): two drafter nodes with two different draft models share one verifier node, both lossless.

Node A drafts with the conftest toy draft (a noisy copy of the target, 2 layers) and sends full q;
node B drafts with a smaller model derived from the target (its first layer only, a layer-skipping
draft: different depth, different KV shape, lower acceptance) and sends top-K q, pipelined, with the
heuristic γ policy. Temperature-0 output of both nodes equals `generate_ad` on the target (greedy
rounds send tokens only, whatever the q mode); sampled requests through both, which do put full and
top-K q on the wire, complete with every draft passing the verifier's checks, and the verifier's
per-node metrics show both drafters were served (by the same target, in the same batch loop).
"""

import asyncio

import pytest
import torch

from edgespec.edge.engine import GenerationRequest
from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.models.runtime import CausalLM
from edgespec.spec.sampling import SamplingParams

from edge_helpers import LOOPBACK, run, verifier_node, edge_node

PROMPTS = [(0, 5, 9, 3), (0, 17, 2), (0, 40, 41, 42, 43, 44), (0, 7), (0, 60, 12, 8, 30)]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def shallow_draft(toy_pair, tmp_path_factory):
    """A second, smaller draft derived from the toy target: its first decoder layer only (same tokenizer)."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    target_dir = toy_pair[1].path
    model = LlamaForCausalLM.from_pretrained(target_dir)
    model.model.layers = torch.nn.ModuleList(model.model.layers[:1])
    model.config.num_hidden_layers = 1
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:1]
    out = tmp_path_factory.mktemp("shallow_draft") / "draft-1layer"
    model.save_pretrained(out, safe_serialization=True)
    PreTrainedTokenizerFast.from_pretrained(target_dir).save_pretrained(out)
    return CausalLM.load(out)


def _ad(target, prompts, max_tokens):
    cfg = GenerationConfig(max_new_tokens=max_tokens, sampling=SamplingParams(temperature=0.0), stop_at_eos=False)
    return [tuple(r.token_ids) for r in generate_ad(target, [list(p) for p in prompts], cfg)]


def _metric(verifier, name: str, node: str) -> float:
    return verifier.metrics.registry.get_sample_value(name, {"node": node}) or 0.0


def test_two_different_drafts_share_one_verifier_losslessly(toy_pair, shallow_draft):
    draft_a, target = toy_pair
    draft_b = shallow_draft
    assert draft_b.config.num_hidden_layers < draft_a.config.num_hidden_layers  # really a different draft model
    assert draft_b.vocab_size == draft_a.vocab_size == target.vocab_size
    expected = _ad(target, PROMPTS, MAX_TOKENS)
    greedy, sampled = SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)

    async def main():
        async with verifier_node(target, max_top_k=16) as v:
            address = [f"{LOOPBACK}:{v.port}"]
            async with edge_node(draft_a, address, node_id="edge-a", q_mode="full") as a, \
                    edge_node(draft_b, address, node_id="edge-b", q_mode="topk", top_k=4, pipeline=True, gamma_policy="heuristic") as b:
                assert a.draft_model_id != b.draft_model_id
                handles = {
                    name: [node.engine.submit(GenerationRequest(p, MAX_TOKENS, greedy, stop_at_eos=False)) for p in PROMPTS]
                    + [node.engine.submit(GenerationRequest(p, 12, sampled, seed=i, stop_at_eos=False)) for i, p in enumerate(PROMPTS)]
                    for name, node in (("a", a), ("b", b))
                }
                results = {name: await asyncio.gather(*(h.result() for h in hs)) for name, hs in handles.items()}
                metrics = {
                    node: {key: _metric(v, f"spec_decode_num_{key}_total", node) for key in ("drafts", "draft_tokens", "accepted_tokens")}
                    for node in ("edge-a", "edge-b")
                }
                return results, metrics, a.stats(), b.stats()

    results, metrics, stats_a, stats_b = run(main(), timeout_s=60)
    for name in ("a", "b"):
        outs = results[name]
        greedy_outs, sampled_outs = outs[: len(PROMPTS)], outs[len(PROMPTS):]
        assert [o.token_ids for o in greedy_outs] == expected, f"node {name}: temperature-0 output differs from AD"
        assert all(len(o.token_ids) == 12 for o in sampled_outs)
        assert all(o.stats.draft_rejections == 0 for o in outs), f"node {name}: the verifier rejected a draft"
        assert sum(o.stats.drafted_tokens for o in outs) > 0
    # both drafters were served by the one verifier, each under its own label, and speculation paid for both
    for node in ("edge-a", "edge-b"):
        assert metrics[node]["drafts"] > 0 and metrics[node]["draft_tokens"] > 0, metrics
        assert metrics[node]["accepted_tokens"] > 0, metrics
    assert stats_a["q_mode"] == "full" and stats_b["q_mode"] == "topk" and stats_b["pipeline"] is True
    # full q (V fp16 per drafted token on sampled rounds) costs more uplink per drafted token than top-4
    assert stats_a["uplink_bytes_per_drafted_token"] > stats_b["uplink_bytes_per_drafted_token"] > 0
    # the 2-layer noisy copy agrees with the target more often than the 1-layer cut
    assert stats_a["acceptance_rate"] > stats_b["acceptance_rate"]
