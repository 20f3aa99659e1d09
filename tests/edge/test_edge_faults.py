"""Drafter node against unfriendly verifiers: BUSY (admission), auth tokens, clients that go away mid-stream."""

import asyncio

from edge_helpers import LOOPBACK, PROMPTS, ad_text, client, edge_node, run, verifier_node


def test_busy_verifier_is_retried_and_every_request_completes(toy_pair):
    draft, target = toy_pair
    expected = [ad_text(target, p, 12, stop_at_eos=False) for p in PROMPTS[:3]]

    async def main():
        async with verifier_node(target, max_sessions=1, busy_retry_after_ms=20) as v:
            async with edge_node(draft, [f"{LOOPBACK}:{v.port}"]) as node, client(node) as http:
                body = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
                outs = await asyncio.gather(*(http.post("/v1/completions", json={**body, "prompt": p}) for p in PROMPTS[:3]))
                return [o.json() for o in outs]

    outs = run(main())
    assert [o["choices"][0]["text"] for o in outs] == expected


def test_auth_token_right_and_wrong(toy_pair):
    draft, target = toy_pair

    async def main():
        async with verifier_node(target, auth_token="s3cret") as v:
            address = f"{LOOPBACK}:{v.port}"
            async with edge_node(draft, [address], auth_token="s3cret") as node, client(node) as http:
                ok = await http.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0})
            async with edge_node(draft, [address], auth_token="wrong", wait=False, unavailable_timeout_s=0.5) as node, client(node) as http:
                refused = await http.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0})
                status = node.health()
            return ok, refused, status

    ok, refused, status = run(main())
    assert ok.status_code == 200
    assert refused.status_code == 503
    assert status["status"] == "no_verifier" and "auth" in status["verifiers"][0]["last_error"].lower()


def test_client_gone_mid_stream_closes_the_session(toy_pair):
    draft, target = toy_pair

    async def main():
        async with verifier_node(target, batch_window_ms=10.0) as v:
            async with edge_node(draft, [f"{LOOPBACK}:{v.port}"]) as node:
                async with client(node) as http:
                    body = {"prompt": PROMPTS[0], "max_tokens": 300, "temperature": 0, "ignore_eos": True, "stream": True}
                    async with http.stream("POST", "/v1/completions", json=body) as response:
                        async for line in response.aiter_lines():
                            if line.startswith("data: "):
                                break  # hang up after the first chunk
                for _ in range(200):
                    if node.engine.active_sessions == 0 and v.active_sessions == 0:
                        break
                    await asyncio.sleep(0.02)
                return node.engine.active_sessions, v.active_sessions

    assert run(main()) == (0, 0)
