"""q on the wire: packing and unpacking of full, top-K and tokens-only drafts, and the shape checks that name the field."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgespec.protocol import (
    DraftBlock,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    decode,
    encode,
    pack_draft,
    pack_q,
    pb,
    quantize_fp16,
    unpack_draft,
)
from edgespec.protocol import messages as m

V = 32


def _dirichlet(rows, cols, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(cols), size=rows)


def _wire(draft_env):
    return decode(encode(draft_env)).draft


def _fails(draft, code, field, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        unpack_draft(draft, **kw)
    assert (info.value.code, info.value.field, info.value.session_id) == (code, field, draft.session_id), info.value
    return info.value


# ---------------------------------------------------------------- round trips


def test_full_q_round_trip():
    probs = _dirichlet(3, V)
    block = unpack_draft(_wire(m.draft(1, 5, [3, 4, 5], pack_q("full", probs))), vocab_size=V)
    assert block.q_mode == "full" and block.gamma == 3 and block.q_ids is None
    assert block.token_ids.tolist() == [3, 4, 5] and block.token_ids.dtype == np.int64
    assert block.q_probs.shape == (3, V) and block.q_probs.dtype == np.float16
    np.testing.assert_array_equal(block.q_probs, quantize_fp16(probs))  # exactly the quantised values
    assert len(pack_q("full", probs).probs_fp16) == 3 * V * 2


def test_topk_q_round_trip():
    ids = np.array([[3, 1, 7], [4, 0, 2]])
    probs = np.array([[0.5, 0.3, 0.2], [0.6, 0.25, 0.15]])
    block = unpack_draft(_wire(m.draft(2, 9, [3, 4], pack_q("topk", probs, ids))), vocab_size=V, max_top_k=3)
    assert block.q_mode == "topk" and block.q_ids.dtype == np.int64
    np.testing.assert_array_equal(block.q_ids, ids)
    np.testing.assert_array_equal(block.q_probs, probs.astype(np.float16))


def test_tokens_only_round_trip():
    block = unpack_draft(_wire(m.draft(3, 1, [8, 9], pack_q("tokens"))), vocab_size=V)
    assert (block.q_mode, block.q_probs, block.q_ids, block.token_ids.tolist()) == ("tokens", None, None, [8, 9])


def test_gamma_zero_needs_no_q():
    block = unpack_draft(pb.Draft(session_id=1, position=4))
    assert block.gamma == 0 and block.q_mode == "tokens"


def test_topk_uplink_is_tiny_next_to_full():
    """Uplink per drafted token, V = 8192, K = 8: top-K must be ≤ 1% of fp16 full q (issue 3)."""
    vocab, k, gamma = 8192, 8, 4
    ids = np.stack([np.arange(vocab - k, vocab)] * gamma)
    full = len(encode(m.draft(1, 100, ids[:, 0], pack_q("full", _dirichlet(gamma, vocab)))))
    topk = len(encode(m.draft(1, 100, ids[:, 0], pack_q("topk", _dirichlet(gamma, k), ids))))
    assert topk / gamma <= 0.01 * full / gamma


@settings(max_examples=60, deadline=None)
@given(gamma=st.integers(0, 6), vocab=st.integers(1, 40), k=st.integers(1, 8), mode=st.sampled_from(["full", "topk", "tokens"]))
def test_round_trip_any_shape(gamma, vocab, k, mode):
    k = min(k, vocab)
    rng = np.random.default_rng(gamma * 1000 + vocab)
    probs = rng.random((gamma, vocab if mode == "full" else k))
    ids = np.array([rng.permutation(vocab)[:k] for _ in range(gamma)], dtype=np.int64).reshape(gamma, k) if mode == "topk" else None
    tokens = rng.integers(0, vocab, gamma)
    block = unpack_draft(_wire(m.draft(5, 0, tokens, pack_q(mode, probs, ids))), vocab_size=vocab)
    assert block.q_mode == mode and block.token_ids.tolist() == tokens.tolist()
    if mode != "tokens":
        np.testing.assert_array_equal(block.q_probs, probs.astype(np.float16))
    if mode == "topk":
        np.testing.assert_array_equal(block.q_ids, ids)


def test_unpacked_block_feeds_the_verifier_layout():
    """A block converts to `edgespec.spec.verify.DraftBatch` and passes its value validation."""
    torch = pytest.importorskip("torch")
    from edgespec.spec.verify import DraftBatch, validate_draft

    probs = quantize_fp16(_dirichlet(2, 4)).astype(np.float32)
    probs /= probs.sum(-1, keepdims=True)  # the drafter renormalises the quantised q, then samples
    ids = np.array([[3, 1, 7, 0], [4, 0, 2, 9]])
    block = unpack_draft(_wire(m.draft(1, 0, [1, 4], pack_q("topk", probs, ids))), vocab_size=V)
    batch = DraftBatch.from_blocks([block.token_ids.tolist()], "topk", torch.from_numpy(block.q_probs.astype(np.float32)), torch.from_numpy(block.q_ids))
    validate_draft(batch, V)


# ---------------------------------------------------------------- shape errors (verifier side)


def _draft(**q) -> pb.Draft:
    return pb.Draft(session_id=4, position=10, token_ids=[1, 2], **q)


def test_full_q_wrong_byte_count():
    err = _fails(_draft(full=pb.FullQ(vocab_size=V, probs_fp16=b"\x00" * (2 * V * 2 - 2))), ErrorCode.BAD_DRAFT, "draft.full.probs_fp16")
    assert f"2×{V}" in err.message


def test_full_q_wrong_vocabulary():
    q = pack_q("full", _dirichlet(2, V - 1))
    _fails(_draft(full=q), ErrorCode.BAD_DRAFT, "draft.full.vocab_size", vocab_size=V)
    _fails(_draft(full=pb.FullQ()), ErrorCode.BAD_DRAFT, "draft.full.vocab_size")


def test_topk_wrong_shapes():
    ids, probs = np.array([[1, 2], [3, 4]]), _dirichlet(2, 2)
    good = pack_q("topk", probs, ids)
    _fails(_draft(top_k=pb.TopKQ(k=2, ids=[1, 2, 3], probs_fp16=good.probs_fp16)), ErrorCode.BAD_DRAFT, "draft.top_k.ids")
    _fails(_draft(top_k=pb.TopKQ(k=2, ids=good.ids, probs_fp16=good.probs_fp16[:-2])), ErrorCode.BAD_DRAFT, "draft.top_k.probs_fp16")
    _fails(_draft(top_k=pb.TopKQ(k=0)), ErrorCode.BAD_DRAFT, "draft.top_k.k")
    _fails(_draft(top_k=good), ErrorCode.BAD_DRAFT, "draft.top_k.k", vocab_size=1)


def test_limits():
    _fails(_draft(top_k=pack_q("topk", _dirichlet(2, 3), np.array([[1, 2, 3], [4, 5, 6]]))), ErrorCode.LIMITS, "draft.top_k.k", max_top_k=2)
    _fails(pb.Draft(session_id=4, token_ids=[0] * 9, tokens_only=pb.TokensOnlyQ()), ErrorCode.LIMITS, "draft.token_ids", max_gamma=8)


def test_missing_q():
    _fails(_draft(), ErrorCode.BAD_DRAFT, "draft.q")


def test_probabilities_are_read_only_views():
    block = unpack_draft(_wire(m.draft(1, 0, [1], pack_q("full", _dirichlet(1, V)))))
    assert not block.q_probs.flags.writeable


# ---------------------------------------------------------------- packing errors (drafter side)


def test_pack_errors():
    with pytest.raises(LocalProtocolError):
        pack_q("full", np.ones(V))  # 1-D
    with pytest.raises(LocalProtocolError):
        pack_q("topk", np.ones((2, 3)), np.ones((2, 4), dtype=int))
    with pytest.raises(LocalProtocolError):
        pack_q("sparse")
    with pytest.raises(LocalProtocolError) as info:
        pack_draft(1, 0, [1, 2, 3], pack_q("full", _dirichlet(2, V)))  # 2 rows of q for 3 tokens
    assert info.value.field == "draft.q"


def test_draft_block_defaults():
    block = DraftBlock(np.array([1, 2]))
    assert block.gamma == 2 and block.q_mode == "tokens"
