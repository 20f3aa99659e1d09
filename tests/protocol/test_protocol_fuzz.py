"""Fuzzing the protocol's decoder and sans-I/O state machines with hypothesis: every input decodes or raises `ProtocolError`, never anything else.

Inputs per run (hypothesis `max_examples` × inputs per example): through `decode`, 3000 random byte
strings (300 × 10) and 3000 mutated encodings of valid messages (300 × 10: bit flips, truncation,
insertions, deletions, overwritten bytes), plus every truncation of every seed message; through both
state machines (a fresh connection, and one with a session in every state), 1500 mutated messages
(150 × 10) and 500 well-formed messages with field values out of range (ids and positions up to
2^64 − 1, γ and K over the limits, NaN/∞ sampling settings, q bytes of any length, unknown error codes
and effects). A `ProtocolError` from `receive` must leave the state as it was and, on the verifier, be
answerable with `send(exc.to_envelope())` (the node's reply path). About 10 s on the shared 2-core machine.
"""

import math
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgespec.protocol import (
    DraftBlock,
    DrafterConnection,
    LocalProtocolError,
    ProtocolError,
    VerifierConnection,
    decode,
    encode,
    pack_q,
    pb,
)
from edgespec.protocol import messages as m

from protocol_examples import V, example_envelopes, topk_q

LIMITS = m.ServerLimits(max_gamma=8, max_top_k=4, max_message_bytes=4096, max_sessions=6)


def fuzz(max_examples: int) -> settings:
    """The stated number of inputs, no per-input deadline (the machine is shared)."""
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


U32 = st.integers(0, 2**32 - 1) | st.integers(0, 20)
U64 = st.integers(0, 2**64 - 1) | st.integers(0, 8) | st.sampled_from([2**32, 2**63, 2**64 - 1])
FLOAT = st.floats(width=32) | st.sampled_from([0.0, -0.0, 1.0, math.nan, math.inf, -math.inf, 1e-45])
TOKENS = st.lists(U32, max_size=12)


def _seed_envelopes() -> list:
    """Valid encodings of every message kind, plus drafts in each q mode, as the mutation seeds."""
    envs = list(example_envelopes().values())
    envs += [m.draft(1, 3, [4, 5, 6], topk_q(3)), m.draft(1, 3, [4], pack_q("tokens")), m.draft(1, 3, [], pack_q("tokens"))]
    envs += [m.verdict(2, 3, 2, 7, True, m.load_hints(1, 2, 3.0), m.round_timing(0.01, 0.005, 0.001))]
    return [encode(env) for env in envs]


SEEDS = _seed_envelopes()
BATCH = 10  # inputs per hypothesis example where inputs are cheap: hypothesis's own cost per example dominates otherwise


def mutate(data: bytes, rng: random.Random) -> bytes:
    """`data` with 1–4 mutations: bit flip, truncation, insertion, deletion or an overwritten byte."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op, i = rng.choice(("flip", "truncate", "insert", "delete", "overwrite")), rng.randrange(max(len(out), 1))
        if op == "truncate":
            del out[i:]
        elif op == "insert":
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif not out:
            continue
        elif op == "flip":
            out[i] ^= 1 << rng.randrange(8)
        elif op == "delete":
            del out[i]
        else:
            out[i] = rng.randrange(256)
    return bytes(out)


def mutated_batch(rng: random.Random) -> list[bytes]:
    """BATCH mutated encodings of random seed messages (hypothesis picks the generator: one example, BATCH inputs)."""
    return [mutate(rng.choice(SEEDS), rng) for _ in range(BATCH)]


def _sampling():
    return st.builds(pb.Sampling, temperature=FLOAT, top_k=U32, top_p=FLOAT, seed=st.none() | U64)


def _q():
    full = st.builds(pb.FullQ, vocab_size=U32, probs_fp16=st.binary(max_size=80))
    top_k = st.builds(pb.TopKQ, k=U32, ids=TOKENS, probs_fp16=st.binary(max_size=40))
    return st.one_of(st.none(), full, top_k, st.just(pb.TokensOnlyQ()))


@st.composite
def _draft(draw) -> pb.Draft:
    draft = pb.Draft(session_id=draw(U64), position=draw(U32), token_ids=draw(TOKENS))
    q = draw(_q())
    if q is not None:
        getattr(draft, {pb.FullQ: "full", pb.TopKQ: "top_k", pb.TokensOnlyQ: "tokens_only"}[type(q)]).CopyFrom(q)
    return draft


VERSION = st.sampled_from([1, 1, 1, 0, 2, 2**32 - 1])
LOAD = st.builds(pb.LoadHints, queue_depth=U32, active_sessions=U32, verify_ms=FLOAT)
INNER = {
    "hello": st.builds(pb.Hello, protocol_version=VERSION, node_id=st.text(max_size=80), draft_model_ids=st.lists(st.text(max_size=8), max_size=3)),
    "hello_ack": st.builds(pb.HelloAck, protocol_version=VERSION, vocab_size=U32, limits=st.builds(pb.Limits, max_gamma=U32, max_top_k=U32, max_message_bytes=U64, max_sessions=U32)),
    "open_session": st.builds(pb.OpenSession, protocol_version=VERSION, session_id=U64, prompt_token_ids=TOKENS, sampling=_sampling(), max_new_tokens=U32),
    "resume": st.builds(pb.Resume, protocol_version=VERSION, session_id=U64, transcript_token_ids=TOKENS, num_prompt_tokens=U32, sampling=_sampling(), max_new_tokens=U32),
    "session_opened": st.builds(pb.SessionOpened, session_id=U64, position=U32, load=LOAD),
    "draft": _draft(),
    "verdict": st.builds(pb.Verdict, session_id=U64, position=U32, accepted=U32, next_token_id=U32, is_bonus=st.booleans(), load=LOAD),
    "close": st.builds(pb.Close, session_id=U64),
    "error": st.builds(pb.Error, code=st.integers(0, 12), message=st.text(max_size=20), session_id=st.none() | U64, effect=st.integers(0, 4), retry_after_ms=U32),
}


@st.composite
def out_of_range_envelopes(draw) -> pb.Envelope:
    """A well-formed envelope of any kind whose field values are drawn from their whole wire range (session ids mostly 1–8: known ones)."""
    kind = draw(st.sampled_from(sorted(INNER)))
    inner = draw(INNER[kind])
    if hasattr(inner, "session_id") and draw(st.booleans()):
        inner.session_id = draw(st.integers(1, 8))
    if kind == "draft" and draw(st.booleans()):
        inner.position = 3  # the known sessions' position: the draft reaches the q checks
    return pb.Envelope(**{kind: inner})


# ---------------------------------------------------------------- connections in every state


def _verifier(ready: bool) -> VerifierConnection:
    """A verifier before Hello, or ready with sessions 1 IDLE at 3, 2 AWAITING_VERDICT, 3 CLOSING, 4 OPENING."""
    v = VerifierConnection(V, LIMITS)
    if not ready:
        return v
    v.receive(m.hello("edge"))
    v.send(m.hello_ack("verifier", "target", V, LIMITS))
    for sid in (1, 2, 3, 4):
        v.receive(m.open_session(sid, [1, 2, 3], m.Sampling(0.0)))
        if sid != 4:
            v.send(m.session_opened(sid, 3))
    v.receive(m.draft(2, 3, [4, 5], pack_q("tokens")))
    v.receive(m.close(3))
    return v


def _drafter(ready: bool) -> DrafterConnection:
    """A drafter waiting for HelloAck, or ready with sessions 1 IDLE at 3, 2 AWAITING_VERDICT (γ = 2), 3 CLOSING, 4 OPENING."""
    d = DrafterConnection()
    d.send(m.hello("edge"))
    if not ready:
        return d
    d.receive(m.hello_ack("verifier", "target", V, LIMITS))
    for sid in (1, 2, 3, 4):
        d.send(m.open_session(sid, [1, 2, 3], m.Sampling(0.0)))
        if sid != 4:
            d.receive(m.session_opened(sid, 3))
    d.send(m.draft(2, 3, [4, 5], pack_q("tokens")))
    d.send(m.close(3))
    return d


def _snapshot(conn) -> tuple:
    return conn.phase, tuple(conn.session(sid) for sid in conn.session_ids())


def _verifier_receives(v: VerifierConnection, env: pb.Envelope) -> None:
    """`receive` returns an event or None, or raises a remote `ProtocolError` that leaves the state alone and can be answered."""
    before = _snapshot(v)
    try:
        event = v.receive(env)
    except ProtocolError as exc:
        assert not isinstance(exc, LocalProtocolError), exc
        assert _snapshot(v) == before, exc
        assert str(exc) and exc.message
        v.send(exc.to_envelope())  # the node's reply; must fit the session's state
        return
    if event is not None and event.kind == "draft":
        _check_block(event.block, v.limits)


def _check_block(block: DraftBlock, limits: m.ServerLimits) -> None:
    """A draft the verifier accepted has the shapes the node relies on."""
    gamma = block.gamma
    assert gamma <= limits.max_gamma and block.token_ids.dtype == np.int64
    if block.q_mode == "full":
        assert block.q_probs.shape == (gamma, V)
    elif block.q_mode == "topk":
        assert block.q_ids.shape == block.q_probs.shape and block.q_ids.shape[0] == gamma and 1 <= block.q_ids.shape[1] <= limits.max_top_k


def _drafter_receives(d: DrafterConnection, env: pb.Envelope) -> None:
    before = _snapshot(d)
    try:
        d.receive(env)
    except ProtocolError as exc:
        assert not isinstance(exc, LocalProtocolError), exc
        assert _snapshot(d) == before, exc
        assert exc.message


def _feed_both(env: pb.Envelope, ready: bool) -> None:
    _verifier_receives(_verifier(ready), env)
    _drafter_receives(_drafter(ready), env)


# ---------------------------------------------------------------- the decoder


def _decodes_or_protocol_error(data: bytes):
    try:
        return decode(data, max_message_bytes=LIMITS.max_message_bytes)
    except ProtocolError as exc:
        assert not isinstance(exc, LocalProtocolError), exc
        assert exc.message
        return None


@fuzz(300)
@given(st.lists(st.binary(max_size=300), min_size=BATCH, max_size=BATCH))
def test_decode_random_bytes(batch):
    for data in batch:
        env = _decodes_or_protocol_error(data)
        if env is not None:
            assert env.WhichOneof("msg")


@fuzz(300)
@given(st.randoms(use_true_random=False))
def test_decode_mutated_messages(rng):
    for data in mutated_batch(rng):
        _decodes_or_protocol_error(data)


def test_decode_every_truncation_and_oversize_of_every_seed():
    """Exhaustive, not random: every proper prefix is BAD_MESSAGE, one byte over the size limit is LIMITS."""
    for data in SEEDS:
        for cut in range(len(data)):
            assert _decodes_or_protocol_error(data[:cut]) is None, (data, cut)
    assert _decodes_or_protocol_error(b"\x0a" + b"\x00" * LIMITS.max_message_bytes) is None


# ---------------------------------------------------------------- the state machines


@fuzz(150)
@given(st.randoms(use_true_random=False))
def test_state_machines_take_mutated_messages(rng):
    for data in mutated_batch(rng):
        env = _decodes_or_protocol_error(data)
        if env is not None:
            _feed_both(env, ready=rng.random() < 0.8)


@fuzz(500)
@given(out_of_range_envelopes(), st.booleans())
def test_state_machines_take_out_of_range_field_values(env, ready):
    data = env.SerializeToString()
    decoded = _decodes_or_protocol_error(data)
    if decoded is not None:
        _feed_both(decoded, ready)
