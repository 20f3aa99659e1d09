"""The verifier node over real sockets: temperature-0 output equals target-only decoding for concurrent sessions on several drafter nodes, every q mode."""

import asyncio
import ssl

import pytest

from edgespec.protocol import messages as m

from tls_helpers import self_signed_cert
from server_helpers import PROMPTS, ad_tokens, run, running_node
from drafting_client import TestDrafter


@pytest.mark.parametrize("q_mode", ["tokens", "topk", "full"])
def test_greedy_equals_ad_concurrent_sessions_two_drafter_nodes(toy_pair, ad_reference, q_mode):
    draft, target = toy_pair

    async def main():
        async with running_node(target) as node:
            async with TestDrafter(node.url, draft, "edge-a") as a, TestDrafter(node.url, draft, "edge-b") as b:
                clients = [a, b, a, b, a]
                results = await asyncio.gather(*(
                    c.run_session(p, max_new_tokens=12, gamma=2 + i % 3, q_mode=q_mode, seed=i)
                    for i, (c, p) in enumerate(zip(clients, PROMPTS))
                ))
            await asyncio.sleep(0)
            return results, node

    results, node = run(main())
    assert [r.tokens for r in results] == ad_reference
    assert all(r.rounds < 12 for r in results)  # speculation happened: fewer rounds than tokens
    assert node.runner.session_count == 0


def test_sampled_sessions_are_reproducible_with_a_seed(toy_pair):
    draft, target = toy_pair
    sampling = m.Sampling(temperature=1.0, top_k=20, seed=77)

    async def once():
        async with running_node(target) as node:
            async with TestDrafter(node.url, draft) as d:
                return [r.tokens for r in await asyncio.gather(
                    d.run_session(PROMPTS[0], sampling=sampling, max_new_tokens=10, q_mode="topk", seed=1),
                    d.run_session(PROMPTS[1], sampling=sampling, max_new_tokens=10, q_mode="tokens", seed=2),
                )]

    first, second = run(once()), run(once())
    assert first == second
    assert all(len(t) == 10 for t in first)


def test_resume_after_reconnect_continues_exactly(toy_pair):
    """A drafter that lost its connection resumes the session from its transcript on a new one."""
    draft, target = toy_pair
    ref = ad_tokens(target, [PROMPTS[2]], 12)[0]

    async def main():
        async with running_node(target) as node:
            async with TestDrafter(node.url, draft) as d:
                first = await d.run_session(PROMPTS[2], max_new_tokens=5, close=False)
            # the connection is gone: the node freed the session
            async with TestDrafter(node.url, draft) as d:
                sid = d.new_session_id()
                transcript = PROMPTS[2] + first.tokens
                await d.send(m.resume(sid, transcript, len(PROMPTS[2]), m.Sampling(0.0), max_new_tokens=12))
                opened = await d.next_event(sid)
                assert opened.kind == "session_opened" and opened.message.position == len(transcript)
                from drafting_client import SessionResult

                rest = SessionResult(sid, transcript)
                await d.draft_until(rest, max_new_tokens=12 - len(first.tokens), sampling=m.Sampling(0.0), gamma=3, q_mode="tokens")
                return first.tokens + rest.tokens

    assert run(main()) == ref


def test_wss_with_tls_and_auth(toy_pair, tmp_path, ad_reference):
    cert, key = self_signed_cert(tmp_path)
    draft, target = toy_pair

    async def main():
        async with running_node(target, tls_cert=cert, tls_key=key, auth_token="tok") as node:
            assert node.url.startswith("wss://")
            client_ctx = ssl.create_default_context(cafile=str(cert))
            async with TestDrafter(node.url, draft, auth_token="tok", ssl=client_ctx) as d:
                return (await d.run_session(PROMPTS[4], max_new_tokens=12, q_mode="full")).tokens

    assert run(main()) == ad_reference[4]
