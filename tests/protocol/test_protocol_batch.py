"""Batch frames: several messages in one frame, read as if each had come alone; bad items get their own error."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespec.protocol import FEATURE_BATCH_FRAMES, ErrorCode, ProtocolError, batch_frames, decode, encode, message_kind, pack_q, unbatch
from edgespec.protocol import edgespec_pb2 as pb
from edgespec.protocol import messages as m

from protocol_examples import Pair


def test_unbatch_passes_plain_frames_through_and_opens_batches_in_order():
    verdicts = [m.verdict(i, 3, 1, 9, False) for i in range(1, 4)]
    assert unbatch(verdicts[0]) == [verdicts[0]]
    frame = decode(encode(m.batch(verdicts)))
    assert message_kind(frame) == "batch"
    assert unbatch(frame) == verdicts


def test_bad_items_get_their_own_error_and_their_siblings_stand():
    good = m.draft(7, 3, [4, 5], pack_q("tokens"))
    foreign = m.open_session(8, [1, 2], m.Sampling(0.0))
    foreign.open_session.protocol_version = 99
    items = unbatch(m.batch([good, pb.Envelope(), m.hello("x"), m.batch([good]), foreign, good]))
    assert items[0] == good and items[-1] == good
    kinds = [(x.code, x.field) if isinstance(x, ProtocolError) else "ok" for x in items]
    assert kinds == ["ok", (ErrorCode.BAD_MESSAGE, ""), (ErrorCode.BAD_MESSAGE, "batch.items"), (ErrorCode.BAD_MESSAGE, "batch.items"),
                     (ErrorCode.VERSION, "open_session.protocol_version"), "ok"]
    assert items[4].session_id == 8  # a refused open names its session, as a lone frame's would
    [empty] = unbatch(m.batch([]))
    assert isinstance(empty, ProtocolError) and empty.code is ErrorCode.BAD_MESSAGE


def test_a_state_machine_takes_a_batch_item_by_item():
    pair = Pair()
    for sid in (1, 2):
        pair.open(sid)
    drafts = [pair.drafter.send(m.draft(sid, 3, [0, 0], pack_q("tokens"))) for sid in (1, 2)]
    events = [pair.verifier.receive(item) for item in unbatch(decode(encode(m.batch(drafts))))]
    assert [e.kind for e in events] == ["draft", "draft"] and [e.session_id for e in events] == [1, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=30), st.integers(200, 3000))
def test_batch_frames_keep_order_and_stay_under_the_limit(payloads, limit):
    envelopes = [m.error(ErrorCode.BAD_DRAFT, "x" * n, session_id=i + 1) for i, n in enumerate(payloads)]
    frames = batch_frames(envelopes, max_message_bytes=limit)
    flat = [item for frame in frames for item in unbatch(frame)]
    assert flat == envelopes  # nothing lost, nothing reordered
    for frame in frames:
        if message_kind(frame) == "batch":
            assert len(frame.batch.items) >= 2 and frame.ByteSize() <= limit
            assert len(encode(frame, max_message_bytes=limit)) <= limit
    if all(e.ByteSize() + 12 <= limit for e in envelopes):
        assert len(frames) <= len(envelopes)


def test_one_envelope_is_never_wrapped():
    env = m.close(3)
    assert batch_frames([env]) == [env]


def test_hello_and_hello_ack_announce_batch_reading():
    assert list(m.hello("edge", features=[FEATURE_BATCH_FRAMES]).hello.features) == ["batch-frames"]
    assert not m.hello("edge").hello.features
    assert FEATURE_BATCH_FRAMES in m.hello_ack("v", "t", 16, features=[FEATURE_BATCH_FRAMES]).hello_ack.features


@pytest.mark.parametrize("kind", ["hello", "hello_ack", "batch"])
def test_unbatchable_kinds(kind):
    inner = {"hello": m.hello("x"), "hello_ack": m.hello_ack("v", "t", 16), "batch": m.batch([m.close(1)])}[kind]
    [err] = unbatch(m.batch([inner]))
    assert isinstance(err, ProtocolError) and kind in err.message
