"""Drafter-node parts without a verifier: routing, text assembly with stop strings, KV rows, wire-exact drafting, γ policies, config parsing."""

import numpy as np
import pytest
import torch

from edgespec.edge.drafting import draft_rows
from edgespec.edge.kvrows import KVRows
from edgespec.edge.node import EdgeConfig, parse_verifiers
from edgespec.edge.policies import GAMMA_POLICIES, make_gamma_policy
from edgespec.edge.routing import VerifierLoad, choose_shortest_queue
from edgespec.edge.text import TextAssembler
from edgespec.policy.gamma import ConfidenceGamma, HeuristicGamma, StaticGamma
from edgespec.spec.sampling import GREEDY, SamplingParams


def test_jsq_picks_the_shortest_queue_counting_recent_placements():
    loads = [VerifierLoad(queue_depth=3), VerifierLoad(queue_depth=1), VerifierLoad(queue_depth=1, placed_since_hint=1)]
    assert choose_shortest_queue(loads) == 1
    assert choose_shortest_queue([VerifierLoad(2, active_sessions=5), VerifierLoad(2, active_sessions=1)]) == 1
    assert choose_shortest_queue([VerifierLoad(), VerifierLoad()]) == 0  # ties: lower index
    with pytest.raises(ValueError):
        choose_shortest_queue([])


def _words(ids):
    return " ".join(f"w{i}" for i in ids)


def test_text_assembler_streams_deltas_that_add_up_to_the_decode():
    asm = TextAssembler(_words)
    out = []
    for tok in [5, 6, 7, 8]:
        assert not asm.push(tok)
        out.append(asm.delta())
    out.append(asm.final_delta())
    assert "".join(out) == asm.final_text() == "w5 w6 w7 w8"


def test_text_assembler_stops_at_a_stop_string_and_holds_back_its_prefix():
    asm = TextAssembler(_words, stop=("w7 w8",))
    asm.push(5)
    asm.push(7)
    shown = asm.delta()
    assert shown == "w5 "  # "w7" could be the start of the stop string: held back
    assert asm.push(8)
    assert shown + asm.delta() + asm.final_delta() == asm.final_text() == "w5 "


def test_text_assembler_extend_gives_the_text_of_pushing_one_by_one():
    ids = [5, 6, 7, 8, 9, 10, 11]
    one = TextAssembler(_words)
    many = TextAssembler(_words)
    shown_one, shown_many = [], []
    for tok in ids:
        one.push(tok)
        shown_one.append(one.delta())
    for chunk in ([5, 6, 7], [8], [9, 10, 11]):  # a verdict's tokens at once
        assert not many.extend(chunk)
        shown_many.append(many.delta())
    assert "".join(shown_one) + one.final_delta() == "".join(shown_many) + many.final_delta() == many.final_text() == _words(ids)
    assert not many.has_stop_strings and TextAssembler(_words, stop=("x",)).has_stop_strings


def test_kv_rows_add_and_release_keep_other_rows_exact(toy_pair):
    draft, _ = toy_pair
    gen = torch.Generator().manual_seed(0)
    transcripts = {"a": [0, 5, 9, 3], "b": [0, 17, 2], "c": [0, 40, 41, 42]}
    fresh = {}
    for key, t in transcripts.items():  # reference: each alone in its own cache
        rows = KVRows(draft)
        rows.row(key)
        fresh[key] = draft_rows(draft, rows.kv, [t], [4], GREEDY, "tokens", 1, gen)[0].tokens
    rows = KVRows(draft)
    for key in transcripts:
        rows.row(key)
    first = draft_rows(draft, rows.kv, list(transcripts.values()), [2, 2, 2], GREEDY, "tokens", 1, gen)
    rows.release("b")
    assert rows.keys() == ("a", "c") and rows.kv.batch_size == 2
    again = draft_rows(draft, rows.kv, [transcripts["a"], transcripts["c"]], [4, 4], GREEDY, "tokens", 1, gen)
    assert [again[0].tokens, again[1].tokens] == [fresh["a"], fresh["c"]]
    assert first[1].tokens == fresh["b"][:2]
    rows.row("d")  # a new row joins an existing cache
    d = draft_rows(draft, rows.kv, [None, None, transcripts["b"]], [0, 0, 4], GREEDY, "tokens", 1, gen)
    assert d[2].tokens == fresh["b"] and d[0] is None


@pytest.mark.parametrize("q_mode", ["full", "topk", "tokens"])
def test_drafted_q_is_the_wire_distribution_the_tokens_came_from(toy_pair, q_mode):
    draft, _ = toy_pair
    rows = KVRows(draft)
    rows.row(0), rows.row(1)
    gen = torch.Generator().manual_seed(1)
    params = SamplingParams(temperature=1.0)
    blocks = draft_rows(draft, rows.kv, [[0, 5, 9], [0, 17]], [3, 2], params, q_mode, 4, gen)
    assert [b.gamma for b in blocks] == [3, 2]
    for b in blocks:
        msg = b.q_message()
        if q_mode == "tokens":
            assert b.q_probs is None and msg.DESCRIPTOR.name == "TokensOnlyQ"
            continue
        assert b.q_probs.dtype == np.float16
        width = draft.vocab_size if q_mode == "full" else 4
        assert b.q_probs.shape == (b.gamma, width)
        for j, tok in enumerate(b.tokens):  # every drafted token has q > 0 in the fp16 values sent
            q_row = b.q_probs[j].astype(np.float64)
            q_tok = q_row[tok] if q_mode == "full" else q_row[list(b.q_ids[j]).index(tok)]
            assert q_tok > 0
            assert b.confidence[j] == pytest.approx(q_tok / q_row.sum(), rel=1e-5)
    cut = blocks[0].truncate(1)
    assert cut.tokens == blocks[0].tokens[:1]
    if q_mode != "tokens":
        assert cut.q_probs.shape[0] == 1


def test_gamma_policies_by_name():
    assert isinstance(make_gamma_policy("static", 3), StaticGamma)
    assert isinstance(make_gamma_policy("heuristic", 4, 8), HeuristicGamma)
    assert isinstance(make_gamma_policy("confidence", 4, 8), ConfidenceGamma)
    for name in GAMMA_POLICIES:
        assert 0 <= make_gamma_policy(name, 4, 8).gamma() <= 8
    with pytest.raises(ValueError, match="unknown γ policy"):
        make_gamma_policy("nope")


def test_verifier_addresses_and_config_validation():
    assert parse_verifiers("127.0.0.1:7700, host:1") == ("127.0.0.1:7700", "host:1")
    for bad in ("", "nohost", "h:0", "h:x", ":80"):
        with pytest.raises(ValueError):
            parse_verifiers(bad)
    assert EdgeConfig(verifiers="a:1,b:2").verifiers == ("a:1", "b:2")
    with pytest.raises(ValueError):
        EdgeConfig(verifiers=("a:1",), q_mode="dense").engine_config()
