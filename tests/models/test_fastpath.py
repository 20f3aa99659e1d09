"""The lean Llama forward gives transformers' logits and caches, on plain and ragged (holed) caches."""

import pytest
import torch

from edgespec.models.runtime import CausalLM
from edgespec.models.toy import make_toy_model


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def twin(request, tmp_path_factory):
    """The same toy model loaded twice: once on the lean path, once forced onto transformers' forward."""
    path = make_toy_model(tmp_path_factory.mktemp("fast") / "m", vocab_size=64, hidden=32, layers=2, heads=4,
                          kv_heads=request.param, seed=11, logit_scale=4.0)
    fast, slow = CausalLM.load(path), CausalLM.load(path)
    slow.fast_path = False
    assert fast.fast_path
    return fast, slow


def _run(lm: CausalLM, script) -> list[torch.Tensor]:
    kv = lm.new_kv(3)
    outs = [lm.prefill(kv, [[3, 4, 5, 6], [7, 8], [9, 10, 11]])]
    for op in script:
        if op[0] == "crop":
            lm.crop(kv, op[1], op[2])
        else:
            outs.append(lm.forward(kv, op[1]))
    return outs


SCRIPTS = {
    "plain decode": [("fwd", [[1], [2], [3]]), ("fwd", [[4], [5], [6]])],
    "ragged verify": [("fwd", [[1, 2, 3], [], [4]]), ("crop", 0, 5), ("fwd", [[5, 6], [7, 8, 9], [1]])],
    "holes": [("fwd", [[1, 2, 3, 4], [5], [6, 7]]), ("crop", 0, 4), ("crop", 2, 3), ("fwd", [[8], [9], [10]])],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_fast_path_matches_transformers(twin, name):
    fast, slow = twin
    for a, b in zip(_run(fast, SCRIPTS[name]), _run(slow, SCRIPTS[name])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_packed_projections_give_the_padded_forward(twin, monkeypatch):
    """A batch mixing γ = 0 rows with a γ = 4 row runs its projections on its 8 real tokens, not on 4 × 5 positions
    (`policy.load.packs`): same logits and the same cache as the padded forward, which the other run forces."""
    from edgespec.models import runtime

    fast, _ = twin
    feeds = [[1, 2, 3, 4, 5], [6], [7], [8]]
    assert runtime.packs(sum(map(len, feeds)), len(feeds), 5)
    runs = []
    for packed in (True, False):
        if not packed:
            monkeypatch.setattr(runtime, "packs", lambda tokens, rows, width: False)
        kv = fast.new_kv(4)
        fast.prefill(kv, [[3, 4, 5, 6], [7, 8], [9, 10, 11], [12]])
        logits = fast.forward(kv, feeds)
        after = fast.forward(kv, [[9], [9], [9], [9]])
        runs.append((logits, after, kv))
    (a, a2, kv_a), (b, b2, kv_b) = runs
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a2, b2, atol=1e-5, rtol=1e-5)
    assert torch.equal(kv_a.valid, kv_b.valid) and torch.equal(kv_a.lengths, kv_b.lengths)
    for la, lb in zip(runtime._layers(kv_a.cache), runtime._layers(kv_b.cache)):
        keep = kv_a.valid[:, None, :, None].expand_as(la.keys)
        torch.testing.assert_close(la.keys[keep], lb.keys[keep], atol=1e-5, rtol=1e-5)


def test_unsupported_models_use_transformers(tmp_path):
    path = make_toy_model(tmp_path / "m", vocab_size=32, hidden=16, layers=1, heads=2, seed=1)
    cfg_path = path / "config.json"
    cfg_path.write_text(cfg_path.read_text().replace('"hidden_act": "silu"', '"hidden_act": "gelu"'))
    assert not CausalLM.load(path).fast_path


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_arena_steps_match_transformers(twin, name):
    """Graph mode's static steps (run eagerly: padded rows, column buckets, in-place writes) give transformers' logits."""
    from edgespec.models.graphs import GraphConfig

    fast, slow = twin
    arena = CausalLM.load(fast.path)
    arena.use_graphs(GraphConfig(capture=False, batch_buckets=(4, 8), column_step=4))
    for a, b in zip(_run(arena, SCRIPTS[name]), _run(slow, SCRIPTS[name])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "ragged"])
def test_folded_gqa_attention_equals_enable_gqa(mask_kind):
    """The CUDA layout of grouped-query attention (query groups stacked on the KV heads) computes the same attention."""
    from edgespec.models.fastpath import attend

    gen = torch.Generator().manual_seed(3)
    bsz, kv_heads, groups, n, cols, d = 3, 2, 4, 3, 7, 8
    q = torch.randn(bsz, kv_heads * groups, n, d, generator=gen)
    k, v = (torch.randn(bsz, kv_heads, cols, d, generator=gen) for _ in range(2))
    q_cols = (cols - n + torch.arange(n))[:, None]
    causal = torch.arange(cols)[None, :] <= q_cols  # [n, cols]
    itself = torch.arange(cols)[None, :] == q_cols
    holes = torch.rand(bsz, 1, 1, cols, generator=gen) > 0.3
    mask = {"none": None, "causal": causal, "ragged": (causal[None, None] & holes) | itself}[mask_kind]
    plain = attend(q, k, v, mask, d**-0.5, groups, fold=False)
    folded = attend(q, k, v, mask, d**-0.5, groups, fold=True)
    torch.testing.assert_close(folded, plain, atol=1e-6, rtol=1e-5)
