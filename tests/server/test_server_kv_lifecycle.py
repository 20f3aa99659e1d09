"""KV accounting at the verifier node: abandoned and disconnected sessions give all KV back; the KV budget refuses what does not fit with BUSY."""

import asyncio

from edgespec.protocol import ErrorCode, ErrorEffect, ProtocolError, pack_q
from edgespec.protocol import messages as m

from server_helpers import PROMPTS, run, running_node, wait_until
from drafting_client import TestDrafter


def _kv_state(node) -> str:
    """What the node still holds, for a failure message."""
    r = node.runner
    return (f"KV tokens {r.kv_tokens_in_use}, KV rows {r.kv_rows}, sessions {r.session_count}, reserved {node.budget.reserved_tokens}, "
            f"queued drafts {node.scheduler.depth}, rows awaiting reclaim {r.needs_reclaim}, connections {len(node._peers)}")


def _all_free(node) -> bool:
    return (
        node.runner.kv_tokens_in_use == 0
        and node.runner.kv_rows == 0
        and node.runner.session_count == 0
        and node.budget.reserved_tokens == 0
        and node.scheduler.depth == 0
    )


def test_abandoned_sessions_and_disconnects_free_all_kv(toy_pair):
    draft, target = toy_pair

    async def main():
        async with running_node(target) as node:
            # 1. many sessions, one verified round each, then the drafter vanishes without closing them
            d = TestDrafter(node.url, draft, "abandoner")
            await d.__aenter__()
            sids = []
            for i in range(24):
                sid, opened = await d.open(PROMPTS[i % len(PROMPTS)], m.Sampling(0.0), 16)
                assert opened.kind == "session_opened"
                sids.append(sid)
            for sid in sids:
                await d.send(m.draft(sid, d.conn.session(sid).position, [3, 4], pack_q("tokens")))
            for sid in sids:
                assert (await d.next_event(sid)).kind == "verdict"
            assert node.runner.kv_tokens_in_use > 0 and node.runner.session_count == 24
            # 2. drafts still outstanding when the connection drops
            for sid in sids[:10]:
                await d.send(m.draft(sid, d.conn.session(sid).position, [5, 6, 7], pack_q("tokens")))
            await d.close()
            try:
                await wait_until(lambda: _all_free(node), what="the KV of a dropped connection to be freed")
            except AssertionError as exc:  # say what is still held (this has failed rarely, and not been reproduced)
                raise AssertionError(f"{exc}: {_kv_state(node)}") from None
            # 3. sessions closed properly, and one left open by a client that then disconnects
            async with TestDrafter(node.url, draft) as d2:
                await asyncio.gather(*(d2.run_session(p, max_new_tokens=6) for p in PROMPTS[:3]))
                await d2.open(PROMPTS[4], m.Sampling(0.0), 8)
                # closes are applied by the batch loop, asynchronously
                await wait_until(lambda: node.runner.session_count == 1, what="only the open session to remain")
            await wait_until(lambda: _all_free(node), what="all KV to be freed")
            return node.metrics.render().decode()

    text = run(main())
    assert 'edgespec_verifier_active_sessions{node="abandoner"} 0.0' in text
    assert "edgespec_verifier_kv_tokens_reserved 0.0" in text


def test_kv_budget_admission_busy_and_nothing_running_is_hurt(toy_pair, ad_reference):
    draft, target = toy_pair
    per_session = 3 + 12 + 8  # prompt + max_new_tokens + max_gamma

    async def main():
        async with running_node(target, kv_budget_tokens=2 * per_session + 5, busy_retry_after_ms=250) as node:
            async with TestDrafter(node.url, draft, "edge-a") as a, TestDrafter(node.url, draft, "edge-b") as b:
                first = [await a.open(PROMPTS[0], m.Sampling(0.0), 12), await b.open(PROMPTS[0], m.Sampling(0.0), 12)]
                assert all(ev.kind == "session_opened" for _, ev in first)
                sid, refused = await b.open(PROMPTS[2], m.Sampling(0.0), 12)
                err = ProtocolError.from_message(refused.message)
                assert err.code == ErrorCode.BUSY and err.effect == ErrorEffect.SESSION_CLOSED and err.retry_after_ms == 250
                assert "KV budget" in err.message
                assert b.conn.session(sid).state.value == "closed"
                _, never = await a.open(PROMPTS[2], m.Sampling(0.0), 10_000)
                assert never.message.code == ErrorCode.LIMITS
                # the admitted sessions run to the end, exactly
                from drafting_client import SessionResult

                results = [SessionResult(s, PROMPTS[0]) for s, _ in first]
                await asyncio.gather(*(c.draft_until(r, max_new_tokens=12, sampling=m.Sampling(0.0), gamma=3, q_mode="tokens") for c, r in zip((a, b), results)))
                assert all(r.tokens == ad_reference[0] for r in results)
                # once one closes, the refused session fits
                await a.send(m.close(first[0][0]))
                assert (await a.next_event(first[0][0])).kind == "close"
                retried = await b.run_session(PROMPTS[2], max_new_tokens=12)
                return retried.tokens

    assert run(main()) == ad_reference[2]
