"""Bad input and faults at the verifier node: each gets a clear error on its own connection, other sessions finish exactly, no tracebacks in the logs."""

import asyncio
import logging

import numpy as np
import pytest
from websockets.asyncio.client import connect as raw_connect

from edgespec.protocol import FEATURE_BATCH_FRAMES, ErrorCode, ErrorEffect, ProtocolError, connect, decode, encode, pack_q
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages as m

from server_helpers import PROMPTS, run, running_node
from drafting_client import SessionResult, TestDrafter

V = 64  # the toy vocabulary
MAX_MESSAGE_BYTES = 64 * 1024


class RawPeer:
    """A drafter that can send anything: raw bytes or envelopes, with no state machine of its own."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, data) -> None:
        await self.ws.send(data if isinstance(data, (bytes, str)) else encode(data, max_message_bytes=10 * MAX_MESSAGE_BYTES))

    async def recv(self) -> pb.Envelope:
        return decode(await asyncio.wait_for(self.ws.recv(), 10), max_message_bytes=10 * MAX_MESSAGE_BYTES)

    async def expect_error(self, data, code: ErrorCode, effect: ErrorEffect = ErrorEffect.NONE, field: str = "") -> ProtocolError:
        await self.send(data)
        env = await self.recv()
        assert env.WhichOneof("msg") == "error", env
        err = ProtocolError.from_message(env.error)
        assert err.code == code, err
        assert err.effect == effect, err
        assert field in err.field, err
        assert err.message  # a clear message for people
        return err


def _full_q(rows: np.ndarray):
    return pack_q("full", q_probs=rows)


def _uniform_full(gamma: int) -> np.ndarray:
    return np.full((gamma, V), 1.0 / V, dtype=np.float32)


def _no_tracebacks(caplog) -> None:
    with_trace = [r for r in caplog.records if r.exc_info]
    assert not with_trace, [r.getMessage() for r in with_trace]


def test_every_bad_message_gets_a_clear_error_and_the_others_finish(toy_pair, ad_reference, caplog):
    draft, target = toy_pair
    caplog.set_level(logging.INFO)

    async def bad(url: str) -> list[int]:
        async with raw_connect(url, compression=None) as ws:
            p = RawPeer(ws)
            await p.expect_error(b"\xff\x00garbage\x13", ErrorCode.BAD_MESSAGE)
            await p.expect_error("a text frame", ErrorCode.BAD_MESSAGE)
            await p.expect_error(encode(m.hello("bad"))[:-2], ErrorCode.BAD_MESSAGE)  # truncated
            await p.expect_error(b"\x0a" + b"\x00" * (MAX_MESSAGE_BYTES + 10), ErrorCode.LIMITS)  # oversized
            wrong_version = m.hello("bad")
            wrong_version.hello.protocol_version = 99
            await p.expect_error(wrong_version, ErrorCode.VERSION, field="hello.protocol_version")
            await p.send(m.hello("bad-edge"))
            assert (await p.recv()).WhichOneof("msg") == "hello_ack"
            old_open = m.open_session(1, [1, 2], m.Sampling(0.0))
            old_open.open_session.protocol_version = 0
            await p.expect_error(old_open, ErrorCode.VERSION, ErrorEffect.SESSION_CLOSED)
            await p.expect_error(m.open_session(2, [3, V + 5], m.Sampling(0.0)), ErrorCode.BAD_MESSAGE, ErrorEffect.SESSION_CLOSED, "prompt_token_ids")
            await p.expect_error(m.draft(42, 0, [1], pack_q("tokens")), ErrorCode.UNKNOWN_SESSION)
            # a good session on this connection, then every kind of bad draft for it
            prompt = PROMPTS[0]
            await p.send(m.open_session(7, prompt, m.Sampling(0.0), max_new_tokens=13))
            assert (await p.recv()).WhichOneof("msg") == "session_opened"
            pos = len(prompt)
            rejected = ErrorEffect.DRAFT_REJECTED
            await p.expect_error(m.draft(7, pos + 1, [1], pack_q("tokens")), ErrorCode.BAD_POSITION, rejected, "draft.position")
            nan = _uniform_full(2)
            nan[1, 3] = np.nan
            await p.expect_error(m.draft(7, pos, [4, 5], _full_q(nan)), ErrorCode.BAD_DRAFT, rejected, "draft.full.probs_fp16")
            await p.expect_error(m.draft(7, pos, [4, 5], _full_q(_uniform_full(2) * 0.5)), ErrorCode.BAD_DRAFT, rejected, "draft.full.probs_fp16")
            negative = _uniform_full(1)
            negative[0, :2] = [-0.5, 0.5 + 1.0 / V]
            await p.expect_error(m.draft(7, pos, [9], _full_q(negative)), ErrorCode.BAD_DRAFT, rejected)
            dup = pack_q("topk", q_ids=np.array([[4, 4, 6, 7]]), q_probs=np.full((1, 4), 0.25))
            await p.expect_error(m.draft(7, pos, [4], dup), ErrorCode.BAD_DRAFT, rejected, "draft.top_k.ids")
            not_in_topk = pack_q("topk", q_ids=np.array([[4, 5, 6, 7]]), q_probs=np.full((1, 4), 0.25))
            await p.expect_error(m.draft(7, pos, [9], not_in_topk), ErrorCode.BAD_DRAFT, rejected)
            await p.expect_error(m.draft(7, pos, [V + 1], pack_q("tokens")), ErrorCode.BAD_DRAFT, rejected, "draft.token_ids")
            await p.expect_error(m.draft(7, pos, [1] * 9, pack_q("tokens")), ErrorCode.LIMITS, rejected, "draft.token_ids")  # γ > 8
            big_k = pack_q("topk", q_ids=np.arange(17)[None, :], q_probs=np.full((1, 17), 1 / 17))
            await p.expect_error(m.draft(7, pos, [3], big_k), ErrorCode.LIMITS, rejected, "draft.top_k.k")  # K > 16
            short_q = pb.Draft(session_id=7, position=pos, token_ids=[1, 2], full=pb.FullQ(vocab_size=V, probs_fp16=b"\x00" * 10))
            await p.expect_error(pb.Envelope(draft=short_q), ErrorCode.BAD_DRAFT, rejected, "draft.full.probs_fp16")
            # after all that, the session is intact: finish it with γ = 0 rounds (target-only decoding)
            tokens = []
            while len(tokens) < 12:
                await p.send(m.draft(7, pos, [], pack_q("tokens")))
                env = await p.recv()
                assert env.WhichOneof("msg") == "verdict", env
                tokens.append(env.verdict.next_token_id)
                pos += 1
            # a second outstanding draft is refused and leaves the first alone
            await p.send(m.draft(7, pos, [], pack_q("tokens")))
            await p.expect_error(m.draft(7, pos, [], pack_q("tokens")), ErrorCode.LIMITS, ErrorEffect.NONE)
            assert (await p.recv()).WhichOneof("msg") == "verdict"
            # the session has its 13 tokens (max_new_tokens): drafting on is refused
            await p.expect_error(m.draft(7, pos + 1, [], pack_q("tokens")), ErrorCode.LIMITS, rejected, "draft.position")
            return tokens

    async def main():
        async with running_node(target, max_message_bytes=MAX_MESSAGE_BYTES) as node:
            async with TestDrafter(node.url, draft, "good-edge") as good:
                outs = await asyncio.gather(
                    bad(node.url),
                    *(good.run_session(p, max_new_tokens=12, gamma=3, q_mode="topk", seed=i) for i, p in enumerate(PROMPTS[:3])),
                )
            return outs

    bad_tokens, *good = run(main())
    assert bad_tokens == ad_reference[0]
    assert [g.tokens for g in good] == ad_reference[:3]
    _no_tracebacks(caplog)


def test_a_session_redrafts_after_a_rejected_draft(toy_pair, ad_reference):
    draft, target = toy_pair

    async def main():
        async with running_node(target) as node:
            async with TestDrafter(node.url, draft) as d:
                sid, opened = await d.open(PROMPTS[1], m.Sampling(0.0), 12)
                assert opened.kind == "session_opened"
                await d.send(m.draft(sid, len(PROMPTS[1]), [V + 3], pack_q("tokens")))  # the client's state machine lets it through
                err = await d.next_event(sid)
                assert err.kind == "error" and err.message.code == ErrorCode.BAD_DRAFT
                res = SessionResult(sid, PROMPTS[1])
                await d.draft_until(res, max_new_tokens=12, sampling=m.Sampling(0.0), gamma=3, q_mode="tokens")
                return res.tokens

    assert run(main()) == ad_reference[1]


def test_missing_or_wrong_auth_token_is_refused_and_the_right_one_works(toy_pair, ad_reference, caplog):
    draft, target = toy_pair

    async def main():
        async with running_node(target, auth_token="s3cret") as node:
            for token in (None, "wrong"):
                with pytest.raises(ProtocolError) as info:
                    await connect(node.url, auth_token=token)
                assert info.value.code == ErrorCode.AUTH
            async with TestDrafter(node.url, draft, auth_token="s3cret") as d:
                return (await d.run_session(PROMPTS[3], max_new_tokens=12)).tokens

    assert run(main()) == ad_reference[3]
    _no_tracebacks(caplog)


def test_a_batch_frame_is_read_item_by_item_and_verdicts_come_back_batched(toy_pair, ad_reference):
    """A drafter that reads batches sends its drafts in one Batch frame with a bad item among them: each good one is verified, the bad one alone errs."""
    draft, target = toy_pair

    async def main():
        async with running_node(target) as node:
            async with raw_connect(f"ws://127.0.0.1:{node.port}", compression=None) as ws:
                p = RawPeer(ws)
                await p.send(m.hello("batching-edge", features=[FEATURE_BATCH_FRAMES]))
                ack = await p.recv()
                assert FEATURE_BATCH_FRAMES in ack.hello_ack.features
                prompts = PROMPTS[:3]
                await p.send(m.batch([m.open_session(i + 1, prompt, m.Sampling(0.0)) for i, prompt in enumerate(prompts)]))
                opened = []
                while len(opened) < 3:
                    opened += [x for x in unbatch_frame(await p.recv())]
                assert sorted(x.session_opened.session_id for x in opened) == [1, 2, 3]
                drafts = [m.draft(i + 1, len(prompt), [0], pack_q("tokens")) for i, prompt in enumerate(prompts)]
                drafts.insert(1, m.draft(9, 0, [0], pack_q("tokens")))  # an unknown session among them
                await p.send(m.batch(drafts))
                answers, frames = [], 0
                while len(answers) < 4:
                    answers += unbatch_frame(await p.recv())
                    frames += 1
                kinds = sorted(a.WhichOneof("msg") for a in answers)
                assert kinds == ["error", "verdict", "verdict", "verdict"]
                [error] = [a for a in answers if a.WhichOneof("msg") == "error"]
                assert error.error.code == ErrorCode.UNKNOWN_SESSION and error.error.session_id == 9
                verdicts = {a.verdict.session_id: a.verdict for a in answers if a.WhichOneof("msg") == "verdict"}
                for i in range(len(prompts)):  # greedy: token 0 drafted, accepted only where it is AD's; the next token is AD's
                    v, ref = verdicts[i + 1], ad_reference[i]
                    assert v.accepted == (ref[0] == 0)
                    assert v.next_token_id == (ref[1] if v.accepted else ref[0])
                return frames

    frames = run(main())
    assert frames <= 3  # the verdicts of one batch travel together (the error may go ahead on its own)


def unbatch_frame(envelope) -> list:
    from edgespec.protocol import unbatch

    items = unbatch(envelope)
    assert not any(isinstance(x, ProtocolError) for x in items)
    return items
