"""Fuzzing a real verifier node (toy target, loopback WebSocket) with hypothesis-drawn frames on several connections while a legit drafter decodes.

Inputs per run: 30 hypothesis examples (`max_examples`), each 3 raw connections at once, each connection
4 chunks (a frame, or an open and 1–3 drafts for it; the first chunk is always the latter) and, on the
first connection, a frame over twice the size limit: about 600 frames in all (at least 390). Frames are
random bytes, text frames, mutated encodings of valid messages, and well-formed messages with random field
values (hello, open and resume with odd sampling settings, drafts in every q mode at random positions with
valid or random q, close, errors, and messages of the wrong direction). After every frame the connection
sends a sentinel (a Close of an unknown session) and reads up to its `UNKNOWN_SESSION` answer, so each
frame's answers are known: an undecodable frame gets exactly one `Error` with the decoder's code, a
message of the wrong direction `BAD_MESSAGE`, every other one its acknowledgement or one clear `Error` (a
draft: nothing until its verdict, or one `Error`); no `INTERNAL` error ever; only the oversized frame
closes a connection, its own (1009). The node runs on its own loop in a thread for the whole test; a legit
drafter decodes sessions the whole time and once more afterwards, each exactly AD; at the end the node holds
no session, reservation, queued draft or in-flight token, and logged no traceback. 5–10 s here.
"""

import asyncio
import logging
import random
import threading
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as raw_connect
from websockets.exceptions import ConnectionClosed

from edgespec.protocol import ErrorCode, ProtocolError, decode, encode, pack_q, pb
from edgespec.protocol import messages as m

from drafting_client import TestDrafter
from node_helpers import LOOPBACK
from server_helpers import PROMPTS, ad_tokens, wait_until

V = 64  # the toy vocabulary
MAX_MESSAGE_BYTES = 4096
EXAMPLES, CONNECTIONS, FRAMES = 30, 3, 4  # hypothesis examples, connections per example, frames (or open + drafts) per connection
SENTINEL_ID = 2**64 - 2**20  # Close(SENTINEL_ID + i) after frame i: no fuzzed session has such an id
ACK = {"hello": "hello_ack", "open_session": "session_opened", "resume": "session_opened", "close": "close"}
WRONG_DIRECTION = ("hello_ack", "session_opened", "verdict")

ANY_U32 = st.integers(0, 2**32 - 1)
SID = st.integers(1, 6) | st.integers(1, 6) | st.integers(0, 2**64 - 1)
IN_VOCAB = st.integers(0, V - 1)
TOKEN = IN_VOCAB | IN_VOCAB | st.integers(0, V + 2) | ANY_U32
TOKENS = st.lists(IN_VOCAB, min_size=1, max_size=8) | st.lists(TOKEN, max_size=10)
VALID_SAMPLING = st.sampled_from([m.Sampling(0.0), m.Sampling(0.0), m.Sampling(0.8), m.Sampling(1.0, top_k=5, top_p=0.9, seed=7), m.Sampling(1e-30, top_p=1e-30)])
SAMPLING = VALID_SAMPLING.map(m.Sampling.to_message) | st.builds(
    pb.Sampling,
    temperature=st.sampled_from([0.0, 0.7, 1e-45, 1e-30, 1e30, float("nan"), float("inf"), -1.0]),
    top_k=st.sampled_from([0, 1, 5, V, V + 1, 2**32 - 1]),
    top_p=st.sampled_from([0.0, 1e-30, 0.5, 1.0, 1.5, float("nan")]),
    seed=st.none() | st.integers(0, 2**64 - 1),
)  # fmt: skip
MAX_NEW = st.integers(0, 30) | ANY_U32
POSITION = st.integers(1, 12) | ANY_U32


def _seeds() -> list[bytes]:
    """Valid encodings the mutated frames start from."""
    envs = [m.hello("fuzz"), m.open_session(1, [5, 9, 3], m.Sampling(0.0), max_new_tokens=12), m.resume(2, [5, 9, 3, 4], 3, m.Sampling(0.7), max_new_tokens=12),
            m.draft(1, 3, [4, 5], pack_q("tokens")), m.draft(1, 3, [4], pack_q("topk", q_probs=[[0.5, 0.5]], q_ids=[[4, 6]])), m.close(1),
            m.verdict(1, 3, 0, 2, False), m.error(ErrorCode.BAD_DRAFT, "x", session_id=1)]  # fmt: skip
    return [encode(env) for env in envs]


SEEDS = _seeds()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """`data` with 1–3 mutations: a bit flip, a truncation, inserted or overwritten bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(max(len(out), 1))
        op = rng.choice(("flip", "truncate", "insert", "overwrite"))
        if op == "truncate":
            del out[i:]
        elif op == "insert":
            out[i:i] = rng.randbytes(rng.randint(1, 6))
        elif out and op == "flip":
            out[i] ^= 1 << rng.randrange(8)
        elif out:
            out[i] = rng.randrange(256)
    return bytes(out)


@st.composite
def session_q(draw, tokens: list[int]):
    """q for `tokens`: tokens-only, uniform top-K containing each token, uniform full (all valid), or top-K / full with random fp16 values."""
    kind = draw(st.sampled_from(["tokens", "topk", "full", "random"]))
    if kind == "tokens" or not tokens:
        return pack_q("tokens")
    if kind == "full":
        return pack_q("full", q_probs=np.full((len(tokens), V), 1.0 / V))
    k = draw(st.integers(1, 4))
    ids = np.array([[t] + [(t + j) % V for j in range(1, k)] for t in tokens])
    if kind == "random":  # NaN, ∞, negative, unnormalised: BAD_DRAFT
        raw = draw(st.binary(min_size=2 * len(tokens) * k, max_size=2 * len(tokens) * k))
        return pb.TopKQ(k=k, ids=ids.reshape(-1).tolist(), probs_fp16=raw)
    return pack_q("topk", q_probs=np.full((len(tokens), k), 1.0 / k), q_ids=ids)


@st.composite
def session_frames(draw) -> list[bytes]:
    """An open of a likely session id and drafts at its position: verdicts, BAD_DRAFT, BAD_POSITION, LIMITS (one outstanding draft)."""
    sid, prompt = draw(st.integers(1, 6)), draw(st.lists(IN_VOCAB, min_size=1, max_size=6))
    frames = [m.open_session(sid, prompt, draw(VALID_SAMPLING), max_new_tokens=draw(st.integers(0, 20)))]
    for _ in range(draw(st.integers(1, 3))):
        tokens = draw(st.lists(IN_VOCAB, max_size=5))
        frames.append(m.draft(sid, len(prompt), tokens, draw(session_q(tokens))))
    return [env.SerializeToString() for env in frames]


@st.composite
def drafts(draw) -> pb.Envelope:
    """A draft for a likely session at a likely position, q tokens-only, top-K (random ids and probs) or full (random bytes)."""
    tokens = draw(st.lists(IN_VOCAB, max_size=6) | st.lists(TOKEN, max_size=9))
    q_kind = draw(st.sampled_from(["tokens", "tokens", "topk", "full", "none"]))
    draft = pb.Draft(session_id=draw(SID), position=draw(POSITION), token_ids=tokens)
    if q_kind == "tokens":
        draft.tokens_only.SetInParent()
    elif q_kind == "topk":
        k = draw(st.integers(0, 20))
        draft.top_k.k, draft.top_k.ids[:] = k, draw(st.lists(TOKEN, min_size=len(tokens) * k, max_size=len(tokens) * k + 1))
        draft.top_k.probs_fp16 = draw(st.binary(min_size=2 * len(tokens) * k, max_size=2 * len(tokens) * k + 2))
    elif q_kind == "full":
        draft.full.vocab_size = draw(st.sampled_from([V, V, 0, V + 1]))
        draft.full.probs_fp16 = draw(st.binary(max_size=2 * V * len(tokens) + 2))
    return pb.Envelope(draft=draft)


MESSAGES = st.one_of(
    st.builds(lambda node: m.hello(node), st.text(max_size=70)),
    st.builds(lambda sid, prompt, s, n: pb.Envelope(open_session=pb.OpenSession(protocol_version=1, session_id=sid, prompt_token_ids=prompt, sampling=s, max_new_tokens=n)),
              SID, TOKENS, SAMPLING, MAX_NEW),  # fmt: skip
    st.builds(lambda sid, tr, n_prompt, s, n: pb.Envelope(resume=pb.Resume(protocol_version=1, session_id=sid, transcript_token_ids=tr, num_prompt_tokens=n_prompt, sampling=s, max_new_tokens=n)),
              SID, TOKENS, st.integers(0, 12), SAMPLING, MAX_NEW),  # fmt: skip
    drafts(),
    drafts(),
    st.builds(m.close, SID),
    st.builds(lambda c, sid, e: m.error(c, "fuzz", session_id=sid, effect=e), st.sampled_from(list(ErrorCode)), st.none() | SID, st.integers(0, 2)),
    st.builds(lambda sid, pos: m.verdict(sid, pos, 0, 1, False), SID, st.integers(0, 20)),
    st.builds(lambda sid: m.session_opened(sid, 3), SID),
    st.just(m.hello_ack("evil", "target", V)),
)
FRAMES_STRATEGY = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=20),
    st.builds(lambda seed, rng: mutate(seed, rng), st.sampled_from(SEEDS), st.randoms(use_true_random=False)),
    MESSAGES.map(lambda env: env.SerializeToString()),
    MESSAGES.map(lambda env: env.SerializeToString()),
    st.just(b"\x0a" + b"\x00" * (MAX_MESSAGE_BYTES + 10)),  # over the limit, under twice it: LIMITS, the connection stays
)
CHUNK = st.one_of(session_frames(), FRAMES_STRATEGY.map(lambda frame: [frame]), FRAMES_STRATEGY.map(lambda frame: [frame]))  # a frame, or an open and its drafts
SCRIPT = st.tuples(session_frames(), st.lists(CHUNK, min_size=FRAMES - 1, max_size=FRAMES - 1)).map(lambda c: c[0] + sum(c[1], []))  # opens a session first


def _expected_error(frame) -> ErrorCode | None:
    """The code a frame must be answered with when it is not a well-formed envelope (None when it is one)."""
    if isinstance(frame, str):
        return ErrorCode.BAD_MESSAGE
    try:
        decode(frame, max_message_bytes=MAX_MESSAGE_BYTES)
    except ProtocolError as exc:
        return exc.code
    return None


async def _answers(ws, sentinel: int, seen: Counter) -> list[pb.Envelope]:
    """Every answer up to the sentinel's UNKNOWN_SESSION error (verdicts left out: they come whenever their batch is done); counts kinds in `seen`."""
    out = []
    while True:
        env = decode(await asyncio.wait_for(ws.recv(), 20))
        kind = env.WhichOneof("msg")
        seen[kind] += 1
        if kind == "error" and env.error.HasField("session_id") and env.error.session_id == sentinel:
            assert env.error.code == ErrorCode.UNKNOWN_SESSION, env
            return out
        if kind == "error":
            assert env.error.message and env.error.code != ErrorCode.INTERNAL, env  # clear, and not a server fault
        if kind != "verdict":
            out.append(env)


def _check_answers(frame, answers: list[pb.Envelope]) -> None:
    """One frame's answers: the decoder's error, BAD_MESSAGE for the wrong direction, else its acknowledgement or one error."""
    kinds = [a.WhichOneof("msg") for a in answers]
    code = _expected_error(frame)
    if code is not None:
        assert kinds == ["error"] and answers[0].error.code == code, (frame[:40], answers)
        return
    kind = decode(frame, max_message_bytes=MAX_MESSAGE_BYTES).WhichOneof("msg")
    if kind in WRONG_DIRECTION:
        assert kinds == ["error"] and answers[0].error.code == ErrorCode.BAD_MESSAGE, (kind, answers)
    elif kind in ACK:
        assert kinds in ([ACK[kind]], ["error"]), (kind, answers)
    else:  # a draft (queued: its verdict comes later) or an error (logged)
        assert kinds in ([], ["error"]), (kind, answers)


async def fuzz_connection(url: str, script: list, index: int, close_oversized: bool) -> Counter:
    """Send the frames (each followed by a sentinel), check each frame's answers; returns the frames sent and the answers' kinds."""
    seen = Counter(frames=len(script) + close_oversized)
    async with raw_connect(url, compression=None, max_size=None) as ws:
        if index != 1:  # all but one connection say hello first, so their frames reach the ready phase
            await ws.send(encode(m.hello(f"fuzz-{index}")))
            assert decode(await asyncio.wait_for(ws.recv(), 20)).WhichOneof("msg") == "hello_ack"
        for i, frame in enumerate(script):
            sentinel = SENTINEL_ID + 1000 * index + i
            await ws.send(frame)
            await ws.send(encode(m.close(sentinel)))
            _check_answers(frame, await _answers(ws, sentinel, seen))
        if close_oversized:  # over twice the limit: this connection, and only it, is closed (1009)
            await ws.send(b"\x0a" + b"\x00" * (2 * MAX_MESSAGE_BYTES + 10))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1009, exc
    return seen


def _assert_no_tracebacks(caplog) -> None:
    bad = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, bad


class NodeThread:
    """A verifier node on its own event loop in a thread, so each hypothesis example can reach it while a legit drafter keeps decoding."""

    def __init__(self, target, **settings):
        from edgespec.server import VerifierConfig, VerifierNode

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-verifier", daemon=True)
        self.node = VerifierNode(VerifierConfig(host=LOOPBACK, port=0, batch_window_ms=1.0, **settings), target=target)

    def call(self, coro, timeout_s: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def __enter__(self) -> "NodeThread":
        self.thread.start()
        self.call(self.node.start())
        return self

    def __exit__(self, *exc) -> None:
        self.call(self.node.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def legit_sessions(url: str, draft, prompts: list, stop: asyncio.Event) -> list[list[int]]:
    """Greedy top-K sessions over `prompts`, one after another, round after round until `stop`; every output, in order."""
    outs = []
    async with TestDrafter(url, draft, "legit") as legit:
        while not stop.is_set() or not outs:
            for i, prompt in enumerate(prompts):
                outs.append((await legit.run_session(prompt, max_new_tokens=10, gamma=3, q_mode="topk", seed=i)).tokens)
    return outs


async def fuzz_connections(url: str, scripts: list) -> Counter:
    """One hypothesis example: its connections at once (the first ends with a frame over twice the limit)."""
    seen = await asyncio.gather(*(fuzz_connection(url, script, i, close_oversized=(i == 0)) for i, script in enumerate(scripts)))
    return sum(seen, Counter())


def test_fuzzed_frames_get_clear_errors_and_legit_sessions_stay_exact(toy_pair, caplog):
    draft, target = toy_pair
    expected = ad_tokens(target, PROMPTS[:3], 10)
    caplog.set_level(logging.INFO)
    total = Counter()
    with NodeThread(target, max_gamma=8, max_top_k=16, max_message_bytes=MAX_MESSAGE_BYTES) as server:
        node, url = server.node, server.node.url
        stop = server.call(_event())
        legit = asyncio.run_coroutine_threadsafe(legit_sessions(url, draft, PROMPTS[:3], stop), server.loop)

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.lists(SCRIPT, min_size=CONNECTIONS, max_size=CONNECTIONS))
        def fuzz(scripts):
            total.update(server.call(fuzz_connections(url, scripts)))

        fuzz()
        server.loop.call_soon_threadsafe(stop.set)
        outs = legit.result(60)
        assert outs == [expected[i % 3] for i in range(len(outs))]  # every legit session during the fuzzing, exactly AD
        assert server.call(_one_more_session(url, draft)) == expected[0]  # and afterwards
        assert not node._batch_task.done()
        server.call(wait_until(lambda: node.active_sessions == 0 and node.budget.reserved_tokens == 0, 10, "every session freed"))
        assert node.scheduler.depth == 0 and node.quotas.empty
    print(f"fuzzed frames and answers: {dict(total)}, legit sessions: {len(outs)}")
    assert total["frames"] >= EXAMPLES * (CONNECTIONS * FRAMES + 1)
    assert total["session_opened"] and total["verdict"] and total["error"]  # fuzzed sessions opened, their drafts were verified
    _assert_no_tracebacks(caplog)


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _one_more_session(url: str, draft) -> list[int]:
    async with TestDrafter(url, draft, "legit-after") as d:
        return (await d.run_session(PROMPTS[0], max_new_tokens=10, gamma=3, q_mode="full", seed=9)).tokens
