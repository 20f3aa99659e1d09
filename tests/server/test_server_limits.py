"""Per-drafter-node limits at a real verifier on loopback: a node at its session or in-flight limit is refused BUSY while other nodes and its own running sessions finish exactly as AD."""

import asyncio
import logging

import pytest
import torch

from edgespec.edge.client import ClientConfig
from edgespec.edge.engine import DraftEngine, EngineConfig, GenerationRequest
from edgespec.models.decoder import draft_blocks
from edgespec.protocol import ErrorCode, ErrorEffect, ProtocolError, pack_q
from edgespec.protocol import messages as m
from edgespec.server.kvbudget import NodeLimits, NodeQuotas
from edgespec.spec.sampling import GREEDY

from server_helpers import PROMPTS, run, running_node
from drafting_client import SessionResult, TestDrafter

GREEDY_WIRE = m.Sampling(temperature=0.0)


def _refusals(node, drafter: str, limit: str) -> float:
    """The node's `edgespec_verifier_node_limit_refusals_total{node=drafter, limit=limit}` (0 when never set)."""
    value = node.metrics.registry.get_sample_value("edgespec_verifier_node_limit_refusals_total", {"node": drafter, "limit": limit})
    return value or 0.0


def _busy(event, effect: ErrorEffect) -> ProtocolError:
    assert event.kind == "error", event
    err = ProtocolError.from_message(event.message)
    assert (err.code, err.effect) == (ErrorCode.BUSY, effect), err
    assert err.retry_after_ms >= 1, err
    return err


def _draft(d: TestDrafter, sid: int, transcript: list[int], gamma: int) -> list[int]:
    """A greedy tokens-only block of `gamma` tokens extending `transcript` (the drafter's side of a round)."""
    kv = d.draft.new_kv(1)
    return draft_blocks(d.draft, kv, [transcript], [gamma], GREEDY, "tokens", 1, torch.Generator().manual_seed(sid)).blocks[0]


async def draft_resending(d: TestDrafter, result: SessionResult, max_new_tokens: int, gamma: int = 3) -> int:
    """Greedy rounds until `max_new_tokens`; a draft refused BUSY is resent unchanged after its retry_after_ms. Returns how many were."""
    sid, busy = result.session_id, 0
    while len(result.tokens) < max_new_tokens:
        transcript = result.prompt + result.tokens
        block = _draft(d, sid, transcript, min(gamma, max_new_tokens - len(result.tokens) - 1))
        while True:
            await d.send(m.draft(sid, len(transcript), block, pack_q("tokens")))
            event = await d.next_event(sid)
            if event.kind == "verdict":
                break
            busy += 1
            await asyncio.sleep(_busy(event, ErrorEffect.DRAFT_REJECTED).retry_after_ms / 1000.0)
        n = event.message.accepted
        result.tokens.extend(block[:n] + [event.message.next_token_id])
    del result.tokens[max_new_tokens:]
    return busy


def test_node_quotas_count_sessions_and_tokens_in_flight():
    quotas = NodeQuotas(NodeLimits(max_sessions=1, max_tokens_in_flight=4))
    assert quotas.session_refusal("a") is None
    quotas.add_session("a")
    assert "limit per drafter node is 1" in quotas.session_refusal("a")
    assert quotas.session_refusal("b") is None
    assert quotas.draft_refusal("a", 9) is None  # nothing in flight: one draft over the whole limit still runs
    quotas.add_draft(("a", 1), "a", 3)
    assert quotas.draft_refusal("a", 1) is None and "3 draft tokens in flight" in quotas.draft_refusal("a", 2)
    assert quotas.draft_refusal("b", 4) is None
    assert quotas.release_draft(("a", 1)) == 3 and quotas.release_draft(("a", 1)) == 0
    quotas.remove_session("a")
    assert (quotas.sessions("a"), quotas.tokens_in_flight("a")) == (0, 0) and quotas.empty
    with pytest.raises(ValueError):
        NodeLimits(max_sessions=-1)


def test_node_at_its_session_limit_is_refused_while_another_node_completes(toy_pair, ad_reference, caplog):
    """edge-a holds 2 sessions (its limit): a third, also from a second edge-a connection, is BUSY; edge-b opens and finishes; edge-a's sessions finish exactly."""
    draft, target = toy_pair
    caplog.set_level(logging.INFO, logger="edgespec.server.node")

    async def main():
        async with running_node(target, max_sessions_per_node=2, busy_retry_after_ms=50) as node:
            async with TestDrafter(node.url, draft, "edge-a") as a, TestDrafter(node.url, draft, "edge-a") as a2, TestDrafter(node.url, draft, "edge-b") as b:
                running = []
                for prompt in PROMPTS[:2]:
                    sid, opened = await a.open(prompt, GREEDY_WIRE, 12)
                    assert opened.kind == "session_opened", opened
                    running.append(SessionResult(sid, list(prompt)))
                refused = [_busy((await a.open(PROMPTS[2], GREEDY_WIRE, 12))[1], ErrorEffect.SESSION_CLOSED),
                           _busy((await a2.open(PROMPTS[2], GREEDY_WIRE, 12))[1], ErrorEffect.SESSION_CLOSED)]  # fmt: skip
                assert all(err.retry_after_ms == 50 and "limit per drafter node is 2" in err.message for err in refused)
                others = asyncio.gather(*(b.run_session(p, max_new_tokens=12) for p in PROMPTS[2:4]))  # while edge-a is full
                await asyncio.gather(*(a.draft_until(r, max_new_tokens=12, sampling=GREEDY_WIRE, gamma=3, q_mode="tokens") for r in running))
                b_results = await others
                for r in running:
                    await a.send(m.close(r.session_id))
                    assert (await a.next_event(r.session_id)).kind == "close"
                again = await a2.run_session(PROMPTS[4], max_new_tokens=12)  # edge-a's sessions are closed: room again
                counts = [_refusals(node, "edge-a", "sessions"), _refusals(node, "edge-b", "sessions")]
                return [r.tokens for r in running], [r.tokens for r in b_results], again.tokens, counts, node.quotas.sessions("edge-a")

    a_tokens, b_tokens, again, counts, left = run(main())
    assert a_tokens == ad_reference[:2]
    assert b_tokens == ad_reference[2:4]
    assert again == ad_reference[4]
    assert counts == [2.0, 0.0]
    assert left == 0
    assert any("limit per drafter node is 2" in r.getMessage() for r in caplog.records)


def test_node_over_its_tokens_in_flight_is_refused_and_resends(toy_pair, ad_reference, caplog):
    """edge-a (limit 4 tokens in flight, γ = 3 counts 4) gets BUSY for its second session's draft while the first is queued; it resends, and both finish exactly; edge-b is never refused."""
    draft, target = toy_pair
    caplog.set_level(logging.INFO, logger="edgespec.server.node")

    async def main():
        async with running_node(target, max_tokens_in_flight_per_node=4, batch_window_ms=50.0) as node:
            async with TestDrafter(node.url, draft, "edge-a") as a, TestDrafter(node.url, draft, "edge-b") as b:
                results = []
                for prompt in PROMPTS[:2]:
                    sid, opened = await a.open(prompt, GREEDY_WIRE, 12)
                    assert opened.kind == "session_opened", opened
                    results.append(SessionResult(sid, list(prompt)))
                first, second = results
                blocks = [_draft(a, r.session_id, r.prompt, 3) for r in results]
                for r, block in zip(results, blocks):  # back to back: the first waits in the batch window while the second arrives
                    await a.send(m.draft(r.session_id, len(r.prompt), block, pack_q("tokens")))
                err = _busy(await a.next_event(second.session_id), ErrorEffect.DRAFT_REJECTED)
                assert "4 draft tokens in flight" in err.message and "limit of 4 per drafter node" in err.message
                verdict = (await a.next_event(first.session_id)).message
                first.tokens.extend(blocks[0][: verdict.accepted] + [verdict.next_token_id])
                big = _draft(a, second.session_id, second.prompt, 5)  # 6 tokens, over the limit, but nothing is in flight: it runs
                await a.send(m.draft(second.session_id, len(second.prompt), big, pack_q("tokens")))
                verdict = (await a.next_event(second.session_id)).message
                second.tokens.extend(big[: verdict.accepted] + [verdict.next_token_id])
                b_run = b.run_session(PROMPTS[2], max_new_tokens=12)
                *a_busy, b_result = await asyncio.gather(*(draft_resending(a, r, 12) for r in results), b_run)
                in_flight = node.quotas.tokens_in_flight("edge-a")
                counts = [_refusals(node, "edge-a", "tokens_in_flight"), _refusals(node, "edge-b", "tokens_in_flight")]
                return [r.tokens for r in results], b_result, 1 + sum(a_busy), counts, in_flight

    a_tokens, b_result, a_busy, counts, in_flight = run(main())
    assert a_tokens == ad_reference[:2]
    assert b_result.tokens == ad_reference[2] and not b_result.errors
    assert counts == [float(a_busy), 0.0]
    assert in_flight == 0
    assert any("draft tokens in flight" in r.getMessage() for r in caplog.records)


def test_drafter_engine_under_both_limits_completes_every_request_exactly(toy_pair, ad_reference):
    """The product's drafter (edgespec.edge) with 4 greedy requests against 2 sessions and 4 tokens in flight per node: BUSY opens wait, BUSY drafts are resent, outputs equal AD."""
    draft, target = toy_pair

    async def main():
        async with running_node(target, max_sessions_per_node=2, max_tokens_in_flight_per_node=4, busy_retry_after_ms=20) as node:
            engine = DraftEngine(draft, EngineConfig(q_mode="tokens", gamma_policy="static", gamma=3),
                                 ClientConfig(verifiers=(node.url,), node_id="edge-engine"))  # fmt: skip
            await engine.start()
            try:
                handles = [engine.submit(GenerationRequest(tuple(p), max_tokens=12, sampling=GREEDY, stop_at_eos=False)) for p in PROMPTS[:4]]
                finished = await asyncio.gather(*(h.result() for h in handles))
            finally:
                await engine.stop()
            counts = [_refusals(node, "edge-engine", limit) for limit in ("sessions", "tokens_in_flight")]
            return [list(f.token_ids) for f in finished], [f.stats.draft_rejections for f in finished], counts

    tokens, rejections, (session_refusals, draft_refusals) = run(main())
    assert tokens == ad_reference[:4]
    assert rejections == [0, 0, 0, 0]  # BUSY drafts are resent as they are, not counted as rejected
    assert session_refusals >= 1 and draft_refusals >= 1  # both limits were hit (two sessions' drafts leave one draft pass together)
