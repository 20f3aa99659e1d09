"""The drafter node end to end against real verifier nodes on 127.0.0.1: temperature-0 output equals AD (every q mode, concurrent,
pipelined, streamed, chat), sampled requests complete with valid drafts, and a verifier lost mid-generation changes nothing."""

import asyncio

import pytest

from edgespec.models.decoder import GenerationConfig, generate_ad
from edgespec.models.runtime import CausalLM
from edgespec.spec.sampling import SamplingParams

from edge_helpers import LOOPBACK, PROMPTS, ad_text, client, edge_node, final_chunk, run, stream_events, streamed_text, verifier_node


async def _complete(http, prompt, max_tokens, **extra):
    r = await http.post("/v1/completions", json={"model": "x", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("q_mode", ["full", "topk", "tokens"])
def test_greedy_completions_equal_ad_for_every_q_mode(toy_pair, q_mode):
    draft, target = toy_pair
    expected = [ad_text(target, p, 20) for p in PROMPTS[:3]]

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], q_mode=q_mode) as node:
            async with client(node) as http:
                return await asyncio.gather(*(_complete(http, p, 20) for p in PROMPTS[:3]))

    for out, want in zip(run(main()), expected):
        choice = out["choices"][0]
        assert choice["text"] == want
        assert out["object"] == "text_completion" and choice["finish_reason"] in ("stop", "length")
        usage = out["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] >= 1
        stats = out["edgespec"]
        assert stats["rounds"] >= 1 and 0.0 <= stats["acceptance_rate"] <= 1.0 and stats["draft_rejections"] == 0
        if usage["completion_tokens"] > 3:
            assert stats["rounds"] < usage["completion_tokens"]  # speculation happened


@pytest.mark.parametrize("policy", ["static", "heuristic", "confidence", "odld", "leviathan"])
def test_every_gamma_policy_gives_ad_output(toy_pair, policy):
    draft, target = toy_pair
    want = ad_text(target, PROMPTS[4], 24, stop_at_eos=False)

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], gamma_policy=policy, pipeline=True) as node:
            async with client(node) as http:
                return await _complete(http, PROMPTS[4], 24, ignore_eos=True)

    out = run(main())
    assert out["choices"][0]["text"] == want
    assert out["edgespec"]["drafted_tokens"] > 0


def test_concurrent_pipelined_requests_equal_ad(toy_pair):
    draft, target = toy_pair
    expected = [ad_text(target, p, 40, stop_at_eos=False) for p in PROMPTS]

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], pipeline=True, gamma_policy="heuristic") as node:
            async with client(node) as http:
                outs = await asyncio.gather(*(_complete(http, p, 40, ignore_eos=True) for p in PROMPTS))
                return outs, (await http.get("/stats")).json()

    outs, stats = run(main())
    assert [o["choices"][0]["text"] for o in outs] == expected
    assert stats["requests_finished"] == 5 and stats["completion_tokens"] == 200 and stats["requests_failed"] == 0
    assert stats["mean_draft_batch"] >= 1.0 and stats["draft_passes"] >= 1 and stats["pipeline"] is True
    assert 0 < stats["uplink_bytes_per_drafted_token"] < 200 and stats["verifiers"][0]["connected"]
    assert all(o["usage"]["completion_tokens"] == 40 and o["choices"][0]["finish_reason"] == "length" for o in outs)
    assert sum(o["edgespec"]["pipeline_hits"] for o in outs) > 0


def test_streaming_returns_the_same_text_and_usage(toy_pair):
    draft, target = toy_pair
    want = ad_text(target, PROMPTS[2], 30, stop_at_eos=False)

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], pipeline=True) as node:
            async with client(node) as http:
                body = {"prompt": PROMPTS[2], "max_tokens": 30, "temperature": 0, "ignore_eos": True, "stream_options": {"include_usage": True}}
                return await stream_events(http, "/v1/completions", body)

    events = run(main())
    assert events[-1] == "[DONE]"
    assert streamed_text(events) == want
    assert sum(1 for e in events if isinstance(e, dict) and e["choices"] and e["choices"][0]["text"]) >= 2  # really streamed
    final = final_chunk(events)
    assert final["choices"][0]["finish_reason"] == "length" and final["edgespec"]["rounds"] >= 1
    usage = events[-2]["usage"]
    assert events[-2]["choices"] == [] and usage["completion_tokens"] == 30


def test_stop_strings_end_the_completion_before_the_stop(toy_pair):
    draft, target = toy_pair
    full = ad_text(target, PROMPTS[0], 24, stop_at_eos=False)
    words = full.split()
    stop = " ".join(words[3:5])
    want = full[: full.index(stop)]

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"]) as node:
            async with client(node) as http:
                plain = await _complete(http, PROMPTS[0], 24, ignore_eos=True, stop=[stop])
                events = await stream_events(http, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0, "ignore_eos": True, "stop": stop})
                return plain, events

    plain, events = run(main())
    assert plain["choices"][0]["text"] == want and plain["choices"][0]["finish_reason"] == "stop"
    assert streamed_text(events) == want


def test_chat_completions_with_a_chat_template(toy_pair):
    draft, target = toy_pair
    chat_draft = CausalLM.load(draft.path)
    chat_draft.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    ids = chat_draft.tokenizer("w5 w9 w3 ", add_special_tokens=False)["input_ids"]
    cfg = GenerationConfig(max_new_tokens=16, sampling=SamplingParams(temperature=0.0), stop_at_eos=False)
    want = generate_ad(target, [ids], cfg)[0].text
    messages = [{"role": "system", "content": "w5 w9"}, {"role": "user", "content": [{"type": "text", "text": "w3"}]}]

    async def main():
        async with verifier_node(target) as v, edge_node(chat_draft, [f"{LOOPBACK}:{v.port}"]) as node:
            async with client(node) as http:
                body = {"messages": messages, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
                r = await http.post("/v1/chat/completions", json=body)
                events = await stream_events(http, "/v1/chat/completions", body)
                return r, events

    r, events = run(main())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": want}
    assert out["usage"]["prompt_tokens"] == len(ids)
    assert events[0]["object"] == "chat.completion.chunk" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(events, chat=True) == want and events[-1] == "[DONE]"


@pytest.mark.parametrize("q_mode", ["full", "topk"])
def test_sampled_requests_complete_with_valid_drafts(toy_pair, q_mode):
    draft, target = toy_pair

    async def main():
        async with verifier_node(target) as v, edge_node(draft, [f"{LOOPBACK}:{v.port}"], q_mode=q_mode, top_k=4, pipeline=True) as node:
            async with client(node) as http:
                # unseeded: standard rejection sampling with q on the wire (a seed selects coupled sampling, tokens only)
                body = {"prompt": PROMPTS[1], "max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "ignore_eos": True}
                return await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(3)))

    for r in run(main()):
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["usage"]["completion_tokens"] == 24
        assert out["edgespec"]["draft_rejections"] == 0 and out["edgespec"]["drafted_tokens"] > 0


def test_sessions_spread_over_two_verifiers(toy_pair):
    draft, target = toy_pair
    expected = [ad_text(target, p, 24, stop_at_eos=False) for p in PROMPTS[:4]]

    async def main():
        async with verifier_node(target) as v1, verifier_node(target) as v2:
            addresses = [f"{LOOPBACK}:{v1.port}", f"{LOOPBACK}:{v2.port}"]
            async with edge_node(draft, addresses) as node:
                while len(node.engine.pool.connected) < 2:
                    await asyncio.sleep(0.01)
                async with client(node) as http:
                    outs = await asyncio.gather(*(_complete(http, p, 24, ignore_eos=True) for p in PROMPTS[:4]))
            return outs, addresses

    outs, addresses = run(main())
    assert [o["choices"][0]["text"] for o in outs] == expected
    assert {o["edgespec"]["verifier"] for o in outs} == set(addresses)


async def _stream_with_fault(http, body, fault):
    """Stream a completion; run `fault()` once the first text has arrived; return all events."""
    started = asyncio.Event()
    events = []

    async def reader():
        async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                    events.append(data if data == "[DONE]" else __import__("json").loads(data))
                    if isinstance(events[-1], dict) and events[-1].get("choices") and events[-1]["choices"][0]["text"]:
                        started.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(started.wait(), 30)
    await fault()
    await task
    return events


def test_verifier_restarted_on_the_same_port_mid_generation(toy_pair):
    draft, target = toy_pair
    want = ad_text(target, PROMPTS[3], 120, stop_at_eos=False)

    async def main():
        from edgespec.server import VerifierConfig, VerifierNode

        v = VerifierNode(VerifierConfig(host=LOOPBACK, port=0, batch_window_ms=15.0), target=target)
        await v.start()
        port = v.port
        restarted = []
        try:
            async with edge_node(draft, [f"{LOOPBACK}:{port}"], pipeline=True) as node:
                async with client(node) as http:

                    async def restart():
                        await v.stop()
                        await asyncio.sleep(0.3)
                        v2 = VerifierNode(VerifierConfig(host=LOOPBACK, port=port, batch_window_ms=1.0), target=target)
                        await v2.start()
                        restarted.append(v2)

                    body = {"prompt": PROMPTS[3], "max_tokens": 120, "temperature": 0, "ignore_eos": True}
                    others = asyncio.gather(*(_complete(http, p, 60, ignore_eos=True) for p in PROMPTS[:3]))
                    events = await _stream_with_fault(http, body, restart)
                    return events, await others
        finally:
            for node in restarted:
                await node.stop()

    events, others = run(main())
    assert [o["choices"][0]["text"] for o in others] == [ad_text(target, p, 60, stop_at_eos=False) for p in PROMPTS[:3]]
    assert all(o["edgespec"]["interruptions"] >= 1 for o in others)
    assert streamed_text(events) == want
    final = final_chunk(events)
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["edgespec"]["interruptions"] >= 1
    assert events[-1] == "[DONE]"


def test_failover_to_a_second_verifier_mid_generation(toy_pair):
    draft, target = toy_pair
    want = ad_text(target, PROMPTS[4], 100, stop_at_eos=False)

    async def main():
        async with verifier_node(target, batch_window_ms=15.0) as v1, verifier_node(target, batch_window_ms=15.0) as v2:
            nodes = {f"{LOOPBACK}:{v1.port}": v1, f"{LOOPBACK}:{v2.port}": v2}
            async with edge_node(draft, list(nodes)) as node:
                while len(node.engine.pool.connected) < 2:
                    await asyncio.sleep(0.01)
                async with client(node) as http:
                    stopped = []

                    async def kill_the_busy_one():
                        busy = next(n for n in nodes.values() if n.active_sessions > 0)
                        stopped.append(busy)
                        await busy.stop()

                    body = {"prompt": PROMPTS[4], "max_tokens": 100, "temperature": 0, "ignore_eos": True}
                    events = await _stream_with_fault(http, body, kill_the_busy_one)
            survivor = next(a for a, n in nodes.items() if n is not stopped[0])
            return events, survivor

    events, survivor = run(main())
    assert streamed_text(events) == want
    final = final_chunk(events)
    assert final["edgespec"]["interruptions"] >= 1 and final["edgespec"]["verifier"] == survivor
