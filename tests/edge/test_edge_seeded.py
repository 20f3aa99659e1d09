"""A request's seed gives the same sampled text on every run: served output equals in-process AD with that seed, for every γ policy, q mode and pipelining."""

import asyncio

import pytest

from edgespec.api import SpeculativeDecoder
from edgespec.edge.engine import GenerationRequest
from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.spec.sampling import SamplingParams

from edge_helpers import LOOPBACK, PROMPTS, client, edge_node, encode, run, verifier_node

PARAMS = SamplingParams(temperature=0.8, top_p=0.95)
MAX_TOKENS = 20
SEEDS = (11, 2**63 + 5)
CONFIGS = {
    "static-1-tokens": dict(gamma_policy="static", gamma=1, q_mode="tokens"),
    "static-4-full-pipelined": dict(gamma_policy="static", gamma=4, q_mode="full", pipeline=True),
    "heuristic-topk-pipelined": dict(gamma_policy="heuristic", gamma=2, q_mode="topk", top_k=4, pipeline=True),
    "awc-topk": dict(gamma_policy="awc", gamma=3, q_mode="topk", top_k=4),
    "confidence-full": dict(gamma_policy="confidence", max_gamma=6, q_mode="full"),
}


def _ad(target, prompt_ids: list[list[int]], seeds: list[int]) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=MAX_TOKENS, sampling=PARAMS, stop_at_eos=False, coupled=True)
    return [r.token_ids for r in generate_ad(target, prompt_ids, cfg, seeds=seeds)]


def test_seeded_requests_equal_ad_under_every_policy_q_mode_and_pipelining(toy_pair):
    draft, target = toy_pair
    prompt_ids = [encode(target, p) for p in PROMPTS[:3]]
    cases = [(ids, seed) for ids in prompt_ids for seed in SEEDS]
    want = _ad(target, [ids for ids, _ in cases], [seed for _, seed in cases])

    async def main():
        outs, stats = {}, {}
        async with verifier_node(target) as v:
            for name, overrides in CONFIGS.items():
                async with edge_node(draft, [f"{LOOPBACK}:{v.port}"], **overrides) as node:
                    handles = [node.engine.submit(GenerationRequest(tuple(ids), MAX_TOKENS, PARAMS, seed=seed, stop_at_eos=False, coupled=True))
                               for ids, seed in cases]
                    done = await asyncio.gather(*(h.result() for h in handles))
                    outs[name] = [list(d.token_ids) for d in done]
                    stats[name] = node.stats()
        return outs, stats

    outs, stats = run(main(), timeout_s=180)
    for name in CONFIGS:
        assert outs[name] == want, name
        assert stats[name]["drafted_tokens"] > 0 and stats[name]["requests_failed"] == 0, name
    assert stats["static-1-tokens"]["accepted_tokens"] > 0  # the draft draws with the same noise, so it agrees at times
    assert stats["static-4-full-pipelined"]["uplink_bytes_per_drafted_token"] < 64  # tokens only, even in full q mode
    assert stats["static-4-full-pipelined"]["pipeline_hits"] + stats["heuristic-topk-pipelined"]["pipeline_hits"] > 0
    assert len({tuple(o) for o in want}) == len(want)  # two seeds, two texts (and three prompts)


def test_http_seed_gives_the_text_of_generate_ad_with_that_seed(toy_pair):
    """Through the OpenAI API: the same request twice gives the same text, which is `edgespec generate --mode ad --seed`'s
    (`SpeculativeDecoder.generate`); another seed gives another text; no seed keeps rejection sampling (q on the wire)."""
    draft, target = toy_pair
    body = {"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": PARAMS.temperature, "top_p": PARAMS.top_p, "ignore_eos": True}

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], q_mode="topk", top_k=4, pipeline=True, gamma_policy="heuristic") as node:
            async with client(node) as http:
                first = await http.post("/v1/completions", json={**body, "seed": 5})
                again, other = await asyncio.gather(http.post("/v1/completions", json={**body, "seed": 5}),
                                                    http.post("/v1/completions", json={**body, "seed": 6}))
                before = node.stats()["uplink_bytes"]
                unseeded = await http.post("/v1/completions", json=body)
                return first, again, other, unseeded, node.stats()["uplink_bytes"] - before

    first, again, other, unseeded, unseeded_uplink = run(main())
    for r in (first, again, other, unseeded):
        assert r.status_code == 200, r.text
    text = first.json()["choices"][0]["text"]
    decoder = SpeculativeDecoder(target, draft)
    ad = decoder.generate(PROMPTS[1], mode="ad", max_new_tokens=MAX_TOKENS, temperature=PARAMS.temperature, top_p=PARAMS.top_p, seed=5, stop_at_eos=False)
    assert text == ad.text == again.json()["choices"][0]["text"]
    assert other.json()["choices"][0]["text"] != text
    assert unseeded.json()["edgespec"]["drafted_tokens"] > 0 and unseeded_uplink / unseeded.json()["edgespec"]["drafted_tokens"] > 10  # top-K q travels


def test_seeded_request_fails_clearly_on_a_verifier_without_the_feature(toy_pair, monkeypatch):
    """A verifier that does not announce coupled sampling (an older one) would ignore the seed: the request fails at once, saying why."""
    from edgespec.edge.engine import GenerationFailed
    from edgespec.server import node as server_node

    draft, target = toy_pair
    real = server_node.m.hello_ack
    monkeypatch.setattr(server_node.m, "hello_ack", lambda *a, **kw: real(*a, **{**kw, "features": []}))

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"]) as node:
            handle = node.engine.submit(GenerationRequest(tuple(encode(target, PROMPTS[0])), 4, PARAMS, seed=1, coupled=True))
            with pytest.raises(GenerationFailed, match="coupled-sampling"):
                await handle.result()
            unseeded = node.engine.submit(GenerationRequest(tuple(encode(target, PROMPTS[0])), 4, PARAMS, seed=1))
            greedy = node.engine.submit(GenerationRequest(tuple(encode(target, PROMPTS[0])), 4, SamplingParams(0.0), seed=1, coupled=True))
            return await unseeded.result(), await greedy.result()  # temperature 0 is greedy, seed or not: no feature needed

    assert [len(out.token_ids) for out in run(main())] == [4, 4]


def test_coupled_request_needs_a_seed():
    with pytest.raises(ValueError, match="needs a seed"):
        GenerationRequest((1, 2), 4, PARAMS, coupled=True)
