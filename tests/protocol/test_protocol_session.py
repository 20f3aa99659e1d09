"""Session state machines: legal exchanges, every illegal transition with its code and session, and two property tests."""

from collections import deque

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from edgespec.protocol import (
    DrafterConnection,
    ErrorCode,
    ErrorEffect,
    LocalProtocolError,
    Phase,
    ProtocolError,
    SessionState,
    VerifierConnection,
    message_kind,
    pack_q,
    pb,
)
from edgespec.protocol import messages as m

from protocol_examples import V, Pair, example_envelopes, topk_q

TOKENS = pack_q("tokens")


def _remote(conn, envelope, code, session_id=None, effect=ErrorEffect.NONE) -> ProtocolError:
    """`conn.receive(envelope)` must raise `code` (and leave the state unchanged)."""
    before = _snapshot(conn)
    with pytest.raises(ProtocolError) as info:
        conn.receive(envelope)
    exc = info.value
    assert not isinstance(exc, LocalProtocolError)
    assert (exc.code, exc.session_id, exc.effect) == (code, session_id, effect), exc
    assert _snapshot(conn) == before
    return exc


def _local(conn, envelope, code=None) -> LocalProtocolError:
    before = _snapshot(conn)
    with pytest.raises(LocalProtocolError) as info:
        conn.send(envelope)
    assert code is None or info.value.code is code, info.value
    assert _snapshot(conn) == before
    return info.value


def _snapshot(conn):
    return conn.phase, tuple(conn.session(sid) for sid in sorted(conn.session_ids()))


def _state(conn, sid):
    return conn.session(sid).state


# ---------------------------------------------------------------- legal exchanges


def test_full_session_both_sides_agree():
    p = Pair()
    assert p.drafter.phase is p.verifier.phase is Phase.READY
    p.open(1, prompt=[5, 6, 7, 8])
    assert p.drafter.session(1) == p.verifier.session(1)
    assert p.drafter.session(1).position == 4
    for gamma, accepted in [(3, 3), (4, 0), (0, 0), (5, 2)]:
        p.round(1, gamma, accepted)
        assert p.drafter.session(1) == p.verifier.session(1)
    assert p.drafter.session(1).position == 4 + 4 + 1 + 1 + 3
    p.to_verifier(m.close(1))
    assert _state(p.verifier, 1) is _state(p.drafter, 1) is SessionState.CLOSING
    ev = p.to_drafter(m.close(1))
    assert ev.kind == "close" and ev.session_id == 1
    assert _state(p.verifier, 1) is _state(p.drafter, 1) is SessionState.CLOSED
    assert p.drafter.session_ids() == p.verifier.session_ids() == ()


def test_events_carry_kind_message_and_block():
    p = Pair()
    ev = p.to_verifier(m.open_session(3, [1, 2], m.Sampling(0.5, seed=1)))
    assert (ev.kind, ev.session_id, list(ev.message.prompt_token_ids)) == ("open_session", 3, [1, 2])
    p.to_drafter(m.session_opened(3, 2))
    ev = p.to_verifier(m.draft(3, 2, [0, 1], topk_q(2)))
    assert ev.kind == "draft" and ev.block.q_mode == "topk" and ev.block.q_ids.shape == (2, 4)
    assert p.verifier.session(3).gamma == 2
    ev = p.to_drafter(m.verdict(3, 2, 2, 5, True, m.load_hints(queue_depth=4)))
    assert ev.kind == "verdict" and ev.message.load.queue_depth == 4 and p.drafter.session(3).position == 5


def test_many_sessions_interleave():
    p = Pair()
    for sid in (10, 11, 12):
        p.open(sid)
    for sid in (10, 11, 12):
        p.to_verifier(m.draft(sid, 3, [0] * (sid - 9), TOKENS))
    for sid in (12, 10, 11):  # verdicts in any order across sessions
        p.to_drafter(m.verdict(sid, 3, 1, 0, sid == 10))
    assert [p.drafter.session(s).position for s in (10, 11, 12)] == [5, 5, 5]


def test_resume_opens_at_the_transcript_length():
    p = Pair()
    p.to_verifier(m.resume(4, [1, 2, 3, 9, 9, 9], num_prompt_tokens=3))
    assert p.verifier.session(4) == p.drafter.session(4)
    p.to_drafter(m.session_opened(4, 6))
    p.round(4, 2, 1)
    assert p.drafter.session(4).position == 8


def test_open_may_follow_hello_before_the_ack():
    d, v = DrafterConnection(), VerifierConnection(V)
    v.receive(d.send(m.hello("edge")))
    v.receive(d.send(m.open_session(1, [1])))
    _local(v, m.session_opened(1, 1), ErrorCode.BAD_MESSAGE)  # HelloAck first
    d.receive(v.send(m.hello_ack("v", "t", V)))
    d.receive(v.send(m.session_opened(1, 1)))
    assert _state(d, 1) is SessionState.IDLE


def test_rejected_draft_returns_to_idle_and_can_be_redrafted():
    p = Pair()
    p.open(1)
    p.to_verifier(m.draft(1, 3, [1, 2], TOKENS))
    # the verifier's value validation (validate_draft) fails after receipt
    ev = p.to_drafter(m.error(ErrorCode.BAD_DRAFT, "q not normalised", session_id=1, effect=ErrorEffect.DRAFT_REJECTED))
    assert ev.kind == "error" and ev.session_id == 1
    assert p.drafter.session(1) == p.verifier.session(1) == p.verifier.session(1).__class__(1, SessionState.IDLE, 3, 0)
    p.round(1, 2, 2)
    assert p.drafter.session(1).position == 6


def test_draft_rejected_on_receipt_keeps_both_sides_in_step():
    p = Pair()
    p.open(1)
    bad = pb.Envelope(draft=pb.Draft(session_id=1, position=3, token_ids=[1, 2], top_k=pb.TopKQ(k=2, ids=[1, 2, 3], probs_fp16=b"\x00" * 8)))
    exc = _remote(p.verifier, p.drafter.send(bad), ErrorCode.BAD_DRAFT, 1, ErrorEffect.DRAFT_REJECTED)
    assert exc.field == "draft.top_k.ids"
    p.to_drafter(exc.to_envelope())
    assert _state(p.drafter, 1) is _state(p.verifier, 1) is SessionState.IDLE


def test_busy_open_closes_the_session_and_ids_are_not_reused():
    p = Pair()
    p.to_verifier(m.open_session(1, [1, 2]))
    p.to_drafter(m.error(ErrorCode.BUSY, "KV budget full", session_id=1, effect=ErrorEffect.SESSION_CLOSED, retry_after_ms=100))
    assert _state(p.drafter, 1) is _state(p.verifier, 1) is SessionState.CLOSED
    _local(p.drafter, m.open_session(1, [1, 2]), ErrorCode.BAD_MESSAGE)  # never reuse an id on a connection
    p.open(2)


def test_verifier_evicts_a_session():
    p = Pair()
    p.open(1)
    p.to_verifier(m.draft(1, 3, [1], TOKENS))
    p.to_drafter(m.error(ErrorCode.INTERNAL, "runner failed", session_id=1, effect=ErrorEffect.SESSION_CLOSED))
    assert p.drafter.session_ids() == p.verifier.session_ids() == ()


def test_close_crossing_a_verdict():
    p = Pair()
    p.open(1)
    p.to_verifier(m.draft(1, 3, [1, 2], TOKENS))
    verdict = p.verifier.send(m.verdict(1, 3, 2, 4, True))  # in flight...
    close = p.drafter.send(m.close(1))  # ...while the drafter closes
    assert p.drafter.receive(verdict) is None  # stale: ignored
    p.verifier.receive(close)
    assert p.drafter.receive(p.verifier.send(m.close(1))).kind == "close"
    assert p.drafter.session_ids() == p.verifier.session_ids() == ()


def test_close_while_opening():
    p = Pair()
    p.to_verifier(m.open_session(1, [1]))
    p.to_verifier(m.close(1))
    _local(p.verifier, m.session_opened(1, 1), ErrorCode.BAD_MESSAGE)  # the server must not open it now
    p.to_drafter(m.close(1))
    assert p.drafter.session_ids() == p.verifier.session_ids() == ()


def test_close_crossing_an_eviction():
    p = Pair()
    p.open(1)
    evicted = p.verifier.send(m.error(ErrorCode.BUSY, "evicted", session_id=1, effect=ErrorEffect.SESSION_CLOSED))
    close = p.drafter.send(m.close(1))
    p.drafter.receive(evicted)
    exc = _remote(p.verifier, close, ErrorCode.UNKNOWN_SESSION, 1)
    ev = p.drafter.receive(p.verifier.send(exc.to_envelope()))  # about a retired session: surfaced, nothing changes
    assert ev.kind == "error" and p.drafter.session_ids() == ()


def test_unknown_session_answer_to_a_close_ends_it():
    p = Pair()
    p.open(1)
    p.drafter.send(m.close(1))
    p.drafter.receive(m.error(ErrorCode.UNKNOWN_SESSION, "no such session", session_id=1))
    assert _state(p.drafter, 1) is SessionState.CLOSED


# ---------------------------------------------------------------- illegal: received by the verifier


def test_verifier_wants_hello_first_and_once():
    v = VerifierConnection(V)
    _remote(v, m.open_session(1, [1]), ErrorCode.BAD_MESSAGE)
    _remote(v, m.draft(1, 0, [], TOKENS), ErrorCode.BAD_MESSAGE)
    v.receive(m.hello("edge"))
    _remote(v, m.hello("edge"), ErrorCode.BAD_MESSAGE)


@pytest.mark.parametrize("kind", ["hello_ack", "session_opened", "verdict"])
def test_verifier_refuses_messages_of_the_other_direction(kind):
    v = Pair().verifier
    env = example_envelopes()[kind]
    _remote(v, env, ErrorCode.BAD_MESSAGE, 7 if kind != "hello_ack" else None)


def test_draft_for_unknown_session():
    _remote(Pair().verifier, m.draft(9, 0, [1], TOKENS), ErrorCode.UNKNOWN_SESSION, 9)


def test_draft_at_wrong_position():
    p = Pair()
    p.open(1)
    exc = _remote(p.verifier, m.draft(1, 2, [1], TOKENS), ErrorCode.BAD_POSITION, 1, ErrorEffect.DRAFT_REJECTED)
    assert exc.field == "draft.position" and "3" in exc.message


def test_second_outstanding_draft():
    p = Pair()
    p.open(1)
    p.to_verifier(m.draft(1, 3, [1, 2], TOKENS))
    _remote(p.verifier, m.draft(1, 3, [1, 2], TOKENS), ErrorCode.LIMITS, 1)  # effect NONE: the first stays outstanding
    p.to_drafter(m.verdict(1, 3, 0, 7, False))


def test_draft_while_opening_or_closing():
    p = Pair()
    p.to_verifier(m.open_session(1, [1, 2]))
    _remote(p.verifier, m.draft(1, 2, [1], TOKENS), ErrorCode.BAD_MESSAGE, 1)
    p.to_drafter(m.session_opened(1, 2))
    p.to_verifier(m.close(1))
    _remote(p.verifier, m.draft(1, 2, [1], TOKENS), ErrorCode.UNKNOWN_SESSION, 1)
    _remote(p.verifier, m.close(1), ErrorCode.UNKNOWN_SESSION, 1)


def test_duplicate_open():
    p = Pair()
    p.open(1)
    _remote(p.verifier, m.open_session(1, [1]), ErrorCode.BAD_MESSAGE, 1)  # effect NONE: session 1 lives on
    _remote(p.verifier, m.resume(1, [1, 2], 1), ErrorCode.BAD_MESSAGE, 1)
    assert _state(p.verifier, 1) is SessionState.IDLE


@pytest.mark.parametrize(
    "envelope,field",
    [
        (m.open_session(1, []), "open_session.prompt_token_ids"),
        (m.resume(1, [], 0), "resume.transcript_token_ids"),
        (m.resume(1, [1, 2], 3), "resume.num_prompt_tokens"),
        (m.resume(1, [1, 2], 0), "resume.num_prompt_tokens"),
        (m.open_session(1, [1], m.Sampling(temperature=-1.0)), "open_session.sampling.temperature"),
        (m.resume(1, [1], 1, m.Sampling(top_p=2.0)), "resume.sampling.top_p"),
    ],
)
def test_malformed_open(envelope, field):
    exc = _remote(Pair().verifier, envelope, ErrorCode.BAD_MESSAGE, 1, ErrorEffect.SESSION_CLOSED)
    assert exc.field == field


def test_sessions_per_connection_limit():
    p = Pair(limits=m.ServerLimits(max_sessions=2))
    p.open(1)
    p.open(2)
    _remote(p.verifier, m.open_session(3, [1]), ErrorCode.LIMITS, 3, ErrorEffect.SESSION_CLOSED)


def test_draft_over_the_limits():
    p = Pair(limits=m.ServerLimits(max_gamma=2, max_top_k=4))
    p.open(1)
    _remote(p.verifier, m.draft(1, 3, [0, 1, 2], TOKENS), ErrorCode.LIMITS, 1, ErrorEffect.DRAFT_REJECTED)


# ---------------------------------------------------------------- illegal: sent by the verifier


def test_verifier_local_errors():
    p = Pair()
    p.open(1)
    _local(p.verifier, m.verdict(1, 3, 0, 1, False), ErrorCode.BAD_MESSAGE)  # no draft outstanding
    _local(p.verifier, m.close(1), ErrorCode.BAD_MESSAGE)  # an ack without a Close
    _local(p.verifier, m.session_opened(1, 3), ErrorCode.BAD_MESSAGE)  # already open
    _local(p.verifier, m.verdict(5, 0, 0, 1, False), ErrorCode.UNKNOWN_SESSION)
    _local(p.verifier, m.open_session(2, [1]), ErrorCode.BAD_MESSAGE)  # wrong direction
    _local(p.verifier, m.error(ErrorCode.BAD_DRAFT, "x", session_id=5, effect=ErrorEffect.DRAFT_REJECTED), ErrorCode.BAD_MESSAGE)
    p.to_verifier(m.draft(1, 3, [1, 2], TOKENS))
    _local(p.verifier, m.verdict(1, 4, 0, 1, False), ErrorCode.BAD_POSITION)
    _local(p.verifier, m.verdict(1, 3, 3, 1, True), ErrorCode.BAD_MESSAGE)  # accepted > γ
    _local(p.verifier, m.verdict(1, 3, 2, 1, False), ErrorCode.BAD_MESSAGE)  # is_bonus must be accepted == γ
    _local(p.verifier, m.verdict(1, 3, 1, 1, True), ErrorCode.BAD_MESSAGE)
    _local(p.verifier, pb.Envelope(), ErrorCode.BAD_MESSAGE)


# ---------------------------------------------------------------- illegal: received by the drafter


def test_drafter_checks_the_verifier():
    p = Pair()
    p.open(1)
    d = p.drafter
    _remote(d, m.hello_ack("v", "t", V), ErrorCode.BAD_MESSAGE)  # twice
    _remote(d, m.verdict(1, 3, 0, 1, False), ErrorCode.BAD_MESSAGE, 1)  # nothing outstanding
    _remote(d, m.session_opened(1, 3), ErrorCode.BAD_MESSAGE, 1)
    _remote(d, m.session_opened(2, 3), ErrorCode.UNKNOWN_SESSION, 2)
    _remote(d, m.close(1), ErrorCode.BAD_MESSAGE, 1)  # an ack without a Close
    _remote(d, m.draft(1, 3, [1], TOKENS), ErrorCode.BAD_MESSAGE, 1)  # wrong direction
    _remote(d, m.error(ErrorCode.BAD_DRAFT, "?", session_id=1, effect=ErrorEffect.DRAFT_REJECTED), ErrorCode.BAD_MESSAGE, 1)
    p.to_verifier(m.draft(1, 3, [1, 2], TOKENS))
    _remote(d, m.verdict(1, 4, 0, 1, False), ErrorCode.BAD_POSITION, 1)
    _remote(d, m.verdict(1, 3, 5, 1, True), ErrorCode.BAD_MESSAGE, 1)
    _remote(d, m.verdict(1, 3, 2, 1, False), ErrorCode.BAD_MESSAGE, 1)
    d.send(m.open_session(2, [1, 2]))
    _remote(d, m.session_opened(2, 5), ErrorCode.BAD_POSITION, 2)


def test_drafter_before_hello_ack():
    d = DrafterConnection()
    _remote(d, m.hello_ack("v", "t", V), ErrorCode.BAD_MESSAGE)  # no Hello sent yet
    d.send(m.hello("edge"))
    d.send(m.open_session(1, [1]))
    _remote(d, m.session_opened(1, 1), ErrorCode.BAD_MESSAGE)  # HelloAck must come first
    ev = d.receive(m.error(ErrorCode.VERSION, "speak v2", session_id=None))  # errors are always accepted
    assert ev.kind == "error"


# ---------------------------------------------------------------- illegal: sent by the drafter


def test_drafter_local_errors():
    d = DrafterConnection()
    _local(d, m.open_session(1, [1]), ErrorCode.BAD_MESSAGE)  # hello first
    d.send(m.hello("edge"))
    _local(d, m.hello("edge"), ErrorCode.BAD_MESSAGE)
    d.receive(m.hello_ack("v", "t", V, m.ServerLimits(max_gamma=4)))
    assert d.limits.max_gamma == 4
    _local(d, m.open_session(1, []), ErrorCode.BAD_MESSAGE)
    d.send(m.open_session(1, [1, 2]))
    _local(d, m.open_session(1, [1]), ErrorCode.BAD_MESSAGE)  # duplicate
    _local(d, m.draft(1, 2, [1], TOKENS), ErrorCode.BAD_MESSAGE)  # still opening
    d.receive(m.session_opened(1, 2))
    _local(d, m.draft(1, 1, [1], TOKENS), ErrorCode.BAD_POSITION)
    _local(d, m.draft(1, 2, [1] * 5, TOKENS), ErrorCode.LIMITS)
    _local(d, m.draft(2, 0, [1], TOKENS), ErrorCode.UNKNOWN_SESSION)
    _local(d, m.verdict(1, 2, 0, 1, False), ErrorCode.BAD_MESSAGE)  # wrong direction
    d.send(m.draft(1, 2, [1], TOKENS))
    _local(d, m.draft(1, 2, [1], TOKENS), ErrorCode.BAD_MESSAGE)  # one outstanding draft per session
    d.send(m.close(1))
    _local(d, m.close(1), ErrorCode.BAD_MESSAGE)


# ---------------------------------------------------------------- properties


class _Verifier:
    """A conforming verifier: answers what it received, in any order it likes, sometimes with errors."""

    def __init__(self, conn: VerifierConnection):
        self.conn = conn
        self.todo: list[tuple[str, int]] = []  # (kind, session) it owes an answer to

    def receive(self, envelope):
        """Apply a message; an error is answered at once (returned), anything else is owed an answer later."""
        try:
            event = self.conn.receive(envelope)
        except ProtocolError as exc:
            # the only error a conforming drafter can cause: a message that crossed our SESSION_CLOSED
            assert exc.code is ErrorCode.UNKNOWN_SESSION and message_kind(envelope) in ("close", "draft"), exc
            return self.conn.send(exc.to_envelope())
        if event.kind in ("hello", "open_session", "resume", "draft", "close"):
            self.todo.append((event.kind, event.session_id))
        return None

    def answer(self, index: int, variant: int):
        """Send one owed answer (variant picks between the success and an error), or None if it is void now."""
        kind, sid = self.todo.pop(index % len(self.todo))
        info = self.conn.session(sid) if sid is not None else None
        if kind == "hello":
            return self.conn.send(m.hello_ack("v", "t", V, m.ServerLimits(max_gamma=4)))
        if self.conn.phase is not Phase.READY:
            self.todo.append((kind, sid))  # hello_ack first
            return None
        if kind in ("open_session", "resume") and info.state is SessionState.OPENING:
            if variant % 4 == 0:
                return self.conn.send(m.error(ErrorCode.BUSY, "full", session_id=sid, effect=ErrorEffect.SESSION_CLOSED))
            return self.conn.send(m.session_opened(sid, info.position))
        if kind == "draft" and info.state is SessionState.AWAITING_VERDICT:
            if variant % 7 == 3:
                return self.conn.send(m.error(ErrorCode.BUSY, "evicted", session_id=sid, effect=ErrorEffect.SESSION_CLOSED))
            if variant % 5 == 0:
                return self.conn.send(m.error(ErrorCode.BAD_DRAFT, "bad q", session_id=sid, effect=ErrorEffect.DRAFT_REJECTED))
            accepted = variant % (info.gamma + 1)
            return self.conn.send(m.verdict(sid, info.position, accepted, 1, accepted == info.gamma))
        if kind == "close" and info.state is SessionState.CLOSING:
            return self.conn.send(m.close(sid))
        return None  # void: the session moved on (closed, evicted)


class _Drafter:
    """A conforming drafter: opens, drafts on idle sessions, closes, never reuses an id."""

    def __init__(self, conn: DrafterConnection):
        self.conn = conn
        self.next_id = 0

    def act(self, choice: int, gamma: int):
        sessions = self.conn.session_ids()
        idle = [s for s in sessions if self.conn.session(s).state is SessionState.IDLE]
        if choice == 0 or not sessions:
            self.next_id += 1
            if choice % 2:
                return self.conn.send(m.resume(self.next_id, [1, 2, 3], 2))
            return self.conn.send(m.open_session(self.next_id, [1, 2]))
        if choice in (1, 2, 3) and idle:
            sid = idle[choice % len(idle)]
            return self.conn.send(m.draft(sid, self.conn.session(sid).position, [0] * gamma, TOKENS))
        closable = [s for s in sessions if self.conn.session(s).state is not SessionState.CLOSING]
        if choice == 4 and closable:
            return self.conn.send(m.close(closable[gamma % len(closable)]))
        return None


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_conforming_peers_never_disagree(data):
    """Any interleaving of a conforming drafter and verifier, with messages in flight both ways, raises nothing,
    and at quiescence both sides hold the same sessions at the same positions."""
    drafter, verifier = _Drafter(DrafterConnection()), _Verifier(VerifierConnection(V, m.ServerLimits(max_gamma=4)))
    verifier.receive(drafter.conn.send(m.hello("edge")))
    drafter.conn.receive(verifier.answer(0, 0))
    up, down = deque(), deque()  # in flight: drafter -> verifier, verifier -> drafter
    for _ in range(data.draw(st.integers(10, 80))):
        step = data.draw(st.sampled_from(["drafter", "verifier", "deliver_up", "deliver_down"]))
        if step == "drafter":
            env = drafter.act(data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4)))
            up.extend([env] if env is not None else [])
        elif step == "verifier" and verifier.todo:
            env = verifier.answer(data.draw(st.integers(0, 10)), data.draw(st.integers(0, 19)))
            down.extend([env] if env is not None else [])
        elif step == "deliver_up" and up:
            env = verifier.receive(up.popleft())
            down.extend([env] if env is not None else [])
        elif step == "deliver_down" and down:
            env = down.popleft()
            ev = drafter.conn.receive(env)
            event(f"drafter received {message_kind(env)}" + (" (stale)" if ev is None else ""))
    # quiesce: deliver everything and answer everything
    while up or down or verifier.todo:
        if up:
            env = verifier.receive(up.popleft())
            down.extend([env] if env is not None else [])
        elif verifier.todo:
            env = verifier.answer(0, 1)
            down.extend([env] if env is not None else [])
        if down:
            drafter.conn.receive(down.popleft())
    assert drafter.conn.session_ids() == verifier.conn.session_ids()
    for sid in drafter.conn.session_ids():
        assert drafter.conn.session(sid) == verifier.conn.session(sid)
        assert drafter.conn.session(sid).state is SessionState.IDLE


def _mutants():
    """Envelopes close to legal ones: every example kind with small session ids and positions."""
    examples = example_envelopes()

    def build(kind, sid, position, gamma):
        env = pb.Envelope()
        env.CopyFrom(examples[kind])
        inner = getattr(env, kind)
        if hasattr(inner, "session_id"):
            inner.session_id = sid
        if hasattr(inner, "position"):
            inner.position = position
        if kind == "draft":
            inner.ClearField("token_ids")
            inner.token_ids.extend([1] * gamma)
            inner.tokens_only.SetInParent()
        return env

    return st.builds(build, st.sampled_from(sorted(examples)), st.integers(0, 2), st.integers(2, 5), st.integers(0, 3))


@settings(max_examples=150, deadline=None)
@given(st.lists(_mutants(), max_size=30))
def test_any_input_gives_an_event_or_a_protocol_error_and_no_half_transitions(envelopes):
    for conn in (VerifierConnection(V), Pair().verifier):
        for env in envelopes:
            before = _snapshot(conn)
            try:
                conn.receive(env)
            except ProtocolError as exc:
                assert not isinstance(exc, LocalProtocolError)
                assert _snapshot(conn) == before
                conn.send(exc.to_envelope())  # answering with the error is always legal
