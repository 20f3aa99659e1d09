"""One example Envelope of every message kind, and a scripted drafter/verifier pair, for the protocol tests."""

from __future__ import annotations

import numpy as np

from edgespec.protocol import DrafterConnection, ErrorCode, ErrorEffect, VerifierConnection, pack_q
from edgespec.protocol import messages as m

V = 16  # vocabulary of the examples


def topk_q(gamma: int, k: int = 4, seed: int = 0):
    """A top-K q message over V ids whose row i contains id (i % V)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([np.roll(np.arange(V), -(i % V))[:k] for i in range(gamma)]).reshape(gamma, k)
    probs = rng.dirichlet(np.ones(k), size=gamma)
    return pack_q("topk", probs, ids)


def example_envelopes() -> dict:
    """kind -> an Envelope carrying a typical message of that kind."""
    full = pack_q("full", np.full((2, V), 1.0 / V))
    return {
        "hello": m.hello("edge-1", ["draft-a", "draft-b"], agent="edgespec/test"),
        "hello_ack": m.hello_ack("verifier-1", "target", V, m.ServerLimits(max_gamma=8, max_top_k=4, max_sessions=3)),
        "open_session": m.open_session(7, [1, 2, 3], m.Sampling(0.7, 5, 0.9, seed=11), draft_model_id="draft-a", max_new_tokens=64),
        "session_opened": m.session_opened(7, 3, m.load_hints(2, 5, 1.5)),
        "draft": m.draft(7, 3, [4, 5], full),
        "verdict": m.verdict(7, 3, 1, 9, False, m.load_hints(1, 5, 2.25)),
        "close": m.close(7),
        "error": m.error(ErrorCode.BAD_DRAFT, "q_probs: rows must sum to 1", session_id=7, effect=ErrorEffect.DRAFT_REJECTED, field="draft.full.probs_fp16"),
        "resume": m.resume(7, [1, 2, 3, 4, 9], 3, m.Sampling(0.0), draft_model_id="draft-a", max_new_tokens=64),
        "batch": m.batch([m.verdict(7, 3, 1, 9, False), m.verdict(8, 5, 2, 4, True, m.load_hints(1, 5, 2.25))]),
    }


class Pair:
    """A drafter and a verifier state machine wired back to back, every message checked by both."""

    def __init__(self, vocab_size: int = V, limits: m.ServerLimits = m.ServerLimits(max_gamma=8, max_top_k=4)):
        self.drafter = DrafterConnection()
        self.verifier = VerifierConnection(vocab_size, limits)
        self.to_verifier(m.hello("edge"))
        self.to_drafter(m.hello_ack("verifier", "target", vocab_size, limits))

    def to_verifier(self, envelope):
        return self.verifier.receive(self.drafter.send(envelope))

    def to_drafter(self, envelope):
        return self.drafter.receive(self.verifier.send(envelope))

    def open(self, session_id: int, prompt=(1, 2, 3)) -> None:
        self.to_verifier(m.open_session(session_id, list(prompt), m.Sampling(0.0)))
        self.to_drafter(m.session_opened(session_id, len(prompt)))

    def round(self, session_id: int, gamma: int, accepted: int, next_token: int = 1) -> None:
        position = self.drafter.session(session_id).position
        self.to_verifier(m.draft(session_id, position, [0] * gamma, pack_q("tokens")))
        self.to_drafter(m.verdict(session_id, position, accepted, next_token, accepted == gamma))
