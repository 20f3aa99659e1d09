"""Envelope codec and errors: round trips of every message, and garbage, truncated, oversized, empty and foreign-version input."""

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespec.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FEATURE_COUPLED_SAMPLING,
    PROTOCOL_VERSION,
    ErrorCode,
    ErrorEffect,
    LocalProtocolError,
    ProtocolError,
    Sampling,
    ServerLimits,
    decode,
    encode,
    message_kind,
    pb,
    session_id_of,
)
from edgespec.protocol import messages as m
from edgespec.protocol.codec import MESSAGE_KINDS

from protocol_examples import example_envelopes

EXAMPLES = example_envelopes()


def _raises(code: ErrorCode, data: bytes, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kw)
    assert info.value.code is code, info.value
    return info.value


# ---------------------------------------------------------------- round trips


def test_examples_cover_every_message_kind():
    assert set(EXAMPLES) == set(MESSAGE_KINDS)
    assert all(message_kind(env) == kind for kind, env in EXAMPLES.items())


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_round_trip(kind):
    env = EXAMPLES[kind]
    data = encode(env)
    back = decode(data)
    assert back == env
    assert message_kind(back) == kind
    assert encode(back) == data


def test_round_trip_keeps_every_field():
    back = decode(encode(EXAMPLES["open_session"])).open_session
    assert (back.session_id, list(back.prompt_token_ids), back.draft_model_id, back.max_new_tokens) == (7, [1, 2, 3], "draft-a", 64)
    assert Sampling.from_message(back.sampling) == Sampling(temperature=pytest.approx(0.7), top_k=5, top_p=pytest.approx(0.9), seed=11)
    err = decode(encode(EXAMPLES["error"])).error
    exc = ProtocolError.from_message(err)
    assert (exc.code, exc.session_id, exc.effect, exc.field) == (ErrorCode.BAD_DRAFT, 7, ErrorEffect.DRAFT_REJECTED, "draft.full.probs_fp16")
    ack = decode(encode(EXAMPLES["hello_ack"])).hello_ack
    assert ServerLimits.from_message(ack.limits) == ServerLimits(max_gamma=8, max_top_k=4, max_sessions=3)


def test_session_id_of():
    assert session_id_of(EXAMPLES["hello"]) is None
    assert session_id_of(EXAMPLES["draft"]) == 7
    assert session_id_of(pb.Envelope(error=pb.Error(code=1))) is None
    assert session_id_of(pb.Envelope(error=pb.Error(code=1, session_id=0))) == 0  # 0 is a valid id (explicit presence)


def test_verdict_is_a_delta():
    """A verdict is a count and one token: a few bytes whatever the transcript length."""
    assert len(encode(EXAMPLES["verdict"])) < 40
    assert len(encode(pb.Envelope(verdict=pb.Verdict(session_id=2**40, position=100_000, accepted=7, next_token_id=150_000, is_bonus=True)))) < 40


# ---------------------------------------------------------------- bad input


def test_garbage_bytes():
    err = _raises(ErrorCode.BAD_MESSAGE, b"\xff\xff\xff\xff garbage")
    assert "Envelope" in str(err) and err.session_id is None


def test_empty_and_unknown_only():
    _raises(ErrorCode.BAD_MESSAGE, b"")
    _raises(ErrorCode.BAD_MESSAGE, pb.Envelope().SerializeToString())
    _raises(ErrorCode.BAD_MESSAGE, b"\xa0\x06\x01")  # field 100, varint: a message from a future version only


def test_invalid_utf8_string():
    _raises(ErrorCode.BAD_MESSAGE, b"\x0a\x04\x12\x02\xff\xfe")  # Hello.node_id = b"\xff\xfe"


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_truncation_is_rejected(kind):
    data = encode(EXAMPLES[kind])
    for cut in range(len(data)):
        _raises(ErrorCode.BAD_MESSAGE, data[:cut])


def test_oversized():
    data = encode(EXAMPLES["draft"])
    err = _raises(ErrorCode.LIMITS, data, max_message_bytes=len(data) - 1)
    assert str(len(data)) in err.message
    assert decode(data, max_message_bytes=len(data)) == EXAMPLES["draft"]
    with pytest.raises(LocalProtocolError) as info:
        encode(EXAMPLES["draft"], max_message_bytes=10)
    assert info.value.code is ErrorCode.LIMITS and info.value.session_id == 7


def test_encode_refuses_an_empty_envelope():
    with pytest.raises(LocalProtocolError):
        encode(pb.Envelope())


@pytest.mark.parametrize("kind", ["hello", "hello_ack", "open_session", "resume"])
@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1])
def test_wrong_version(kind, version):
    env = pb.Envelope()
    env.CopyFrom(EXAMPLES[kind])
    getattr(env, kind).protocol_version = version
    err = _raises(ErrorCode.VERSION, env.SerializeToString())
    assert err.field == f"{kind}.protocol_version" and str(version) in err.message
    if kind in ("open_session", "resume"):  # the drafter's opening session must not hang
        assert (err.session_id, err.effect) == (7, ErrorEffect.SESSION_CLOSED)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_an_envelope_or_a_protocol_error(data):
    try:
        env = decode(data)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_MESSAGE, ErrorCode.VERSION)
    else:
        assert message_kind(env) in MESSAGE_KINDS


# ---------------------------------------------------------------- errors and settings


def test_error_enums_mirror_the_proto():
    assert {c.name: c.value for c in ErrorCode} == dict(pb.Error.Code.items())
    assert {e.name: e.value for e in ErrorEffect} == dict(pb.Error.Effect.items())


def test_protocol_error_is_a_value_error_and_round_trips():
    exc = ProtocolError(ErrorCode.BUSY, "KV budget full", session_id=3, effect=ErrorEffect.SESSION_CLOSED, retry_after_ms=250)
    assert isinstance(exc, ValueError) and "BUSY" in str(exc) and "session 3" in str(exc)
    back = ProtocolError.from_message(decode(encode(exc.to_envelope())).error)
    assert (back.code, back.message, back.session_id, back.effect, back.retry_after_ms) == (ErrorCode.BUSY, "KV budget full", 3, ErrorEffect.SESSION_CLOSED, 250)
    assert ProtocolError(ErrorCode.BUSY, "x", effect=ErrorEffect.SESSION_CLOSED).effect is ErrorEffect.NONE  # no session, no effect


def test_errors_from_a_newer_peer():
    back = ProtocolError.from_message(pb.Error(code=99, effect=7, message="future"))
    assert (back.code, back.effect) == (ErrorCode.UNSPECIFIED, ErrorEffect.NONE)


@pytest.mark.parametrize(
    "msg,field",
    [
        (pb.Sampling(temperature=-1.0), "sampling.temperature"),
        (pb.Sampling(temperature=math.nan), "sampling.temperature"),
        (pb.Sampling(temperature=math.inf), "sampling.temperature"),
        (pb.Sampling(top_p=1.5), "sampling.top_p"),
        (pb.Sampling(top_p=-0.5), "sampling.top_p"),
        (pb.Sampling(top_p=math.nan), "sampling.top_p"),
    ],
)
def test_bad_sampling_settings(msg, field):
    with pytest.raises(ProtocolError) as info:
        Sampling.from_message(msg)
    assert info.value.code is ErrorCode.BAD_MESSAGE and info.value.field == field


def test_sampling_defaults():
    assert Sampling.from_message(pb.Sampling()) == Sampling(temperature=0.0, top_k=0, top_p=1.0, seed=None)  # unset top_p is off
    assert Sampling.from_message(Sampling(seed=0).to_message()).seed == 0


def test_coupled_sampling_round_trip_and_needs_a_seed():
    """Sampling.coupled (added within version 1) travels with its seed; coupled without a seed is refused naming sampling.seed."""
    back = Sampling.from_message(pb.Sampling.FromString(Sampling(0.8, top_p=0.95, seed=2**64 - 1, coupled=True).to_message().SerializeToString()))
    assert back.coupled and back.seed == 2**64 - 1
    assert not Sampling.from_message(Sampling(0.8, seed=3).to_message()).coupled  # unset: standard rejection sampling
    with pytest.raises(ProtocolError) as info:
        Sampling.from_message(pb.Sampling(temperature=0.8, coupled=True), session_id=4)
    assert info.value.code is ErrorCode.BAD_MESSAGE and info.value.field == "sampling.seed" and info.value.session_id == 4


def test_hello_ack_announces_features():
    env = decode(encode(m.hello_ack("v", "target", 8, features=[FEATURE_COUPLED_SAMPLING])))
    assert list(env.hello_ack.features) == ["coupled-sampling"]
    assert list(decode(encode(m.hello_ack("v", "target", 8))).hello_ack.features) == []  # an older verifier announces none


def test_default_limit_fits_a_large_full_q():
    assert DEFAULT_MAX_MESSAGE_BYTES >= 32 * 128_000 * 2


def test_protocol_package_does_not_import_torch():
    code = "import sys, edgespec.protocol; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
