"""Seeded (coupled) sessions at the verifier node: output equals in-process AD with the same seed whatever the drafts, and survives a resume."""

import asyncio

import pytest
from websockets.asyncio.client import connect as raw_connect

from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.protocol import ErrorCode, ErrorEffect, ProtocolError, decode, encode
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages as m
from edgespec.server.runner import DraftItem, VerifierRunner
from edgespec.spec.sampling import SamplingParams
from edgespec.spec.verify import DraftBatch

from drafting_client import TestDrafter
from server_helpers import PROMPTS, run, running_node

PARAMS = SamplingParams(temperature=0.9, top_k=20, top_p=0.95)
NEW_TOKENS = 14


def _coupled_ad(target, prompts, seeds, max_new_tokens=NEW_TOKENS) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, sampling=PARAMS, stop_at_eos=False, coupled=True)
    return [r.token_ids for r in generate_ad(target, prompts, cfg, seeds=seeds)]


def test_coupled_sessions_equal_ad_whatever_the_drafts(toy_pair):
    """Drafts sampled independently of the noise (so mostly wrong), in every q mode and at several γ: each session's
    tokens are exactly coupled AD with its seed; the node announces the feature."""
    draft, target = toy_pair
    seeds = [3, 2**64 - 1, 77, 5, 123456789]
    runs = [dict(gamma=1, q_mode="tokens"), dict(gamma=4, q_mode="full"), dict(gamma=3, q_mode="topk"), dict(gamma=0, q_mode="tokens"), dict(gamma=2, q_mode="full")]

    async def main():
        async with running_node(target) as node, TestDrafter(node.url, draft) as d:
            ack = d._hello.result()
            sessions = [
                d.run_session(p, sampling=m.Sampling(PARAMS.temperature, PARAMS.top_k, PARAMS.top_p, seed=s, coupled=True), max_new_tokens=NEW_TOKENS, seed=i, **kw)
                for i, (p, s, kw) in enumerate(zip(PROMPTS, seeds, runs))
            ]
            return ack, await asyncio.gather(*sessions)

    ack, results = run(main())
    assert m.FEATURE_COUPLED_SAMPLING in ack.features
    assert [r.tokens for r in results] == _coupled_ad(target, PROMPTS, seeds)
    assert all(not r.errors for r in results)


def test_coupled_session_resumed_on_a_fresh_runner_continues_exactly(toy_pair):
    """The verifier's KV is a cache: a coupled session resumed from its transcript elsewhere emits the same tokens."""
    _, target = toy_pair
    prompt, seed = PROMPTS[2], 99
    want = _coupled_ad(target, [prompt], [seed])[0]
    tokens: list[int] = []
    for runner_round in range(2):
        runner = VerifierRunner(target)
        runner.resume("s", prompt + tokens, len(prompt), PARAMS, seed, coupled=True) if tokens else runner.open("s", prompt, PARAMS, seed, coupled=True)
        for _ in range(4 if runner_round == 0 else NEW_TOKENS):
            if len(tokens) >= NEW_TOKENS:
                break
            position = len(prompt) + len(tokens)
            drafted = [(t + 1) % target.vocab_size for t in want[len(tokens) : len(tokens) + 2]]  # wrong drafts
            (res,) = runner.verify_batch([DraftItem("s", position, DraftBatch.from_blocks([drafted]))])
            tokens += drafted[: res.accepted] + [res.next_token_id]
    assert tokens[:NEW_TOKENS] == want


def test_coupled_without_a_seed_is_refused(toy_pair):
    _, target = toy_pair

    async def main():
        async with running_node(target) as node, raw_connect(node.url, compression=None) as ws:
            await ws.send(encode(m.hello("raw")))
            assert decode(await ws.recv()).WhichOneof("msg") == "hello_ack"
            bad = m.open_session(1, [1, 2], m.Sampling(0.8))
            bad.open_session.sampling.coupled = True
            await ws.send(encode(bad))
            return ProtocolError.from_message(decode(await asyncio.wait_for(ws.recv(), 10)).error)

    err = run(main())
    assert err.code is ErrorCode.BAD_MESSAGE and err.effect is ErrorEffect.SESSION_CLOSED and err.field == "open_session.sampling.seed"


def test_drafter_state_machine_refuses_coupled_without_a_seed():
    from edgespec.protocol import DrafterConnection, LocalProtocolError

    conn = DrafterConnection()
    conn.send(m.hello("e"))
    bad = pb.Envelope(open_session=pb.OpenSession(protocol_version=1, session_id=1, prompt_token_ids=[1], sampling=pb.Sampling(temperature=1.0, coupled=True)))
    with pytest.raises(LocalProtocolError, match="seed"):
        conn.send(bad)
