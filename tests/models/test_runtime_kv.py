"""KV crop: after any append/crop pattern (one row, or several rows at once) each row's cache equals one rebuilt from scratch for its kept prefix.

Runs on transformers' `DynamicCache` and on the graph mode's KV arena (its static steps run eagerly here).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgespec.models.graphs import GraphConfig
from edgespec.models.runtime import CausalLM, ModelLoadError


def _row_kv(lm: CausalLM, kv, row: int):
    """Keys/values of the row's valid columns, per layer: list of ([H, L, D], [H, L, D])."""
    cols = kv.valid[row].nonzero().squeeze(-1)
    return [(layer.keys[row][:, cols], layer.values[row][:, cols]) for layer in kv.cache.layers if layer.keys is not None]


def _rebuilt(lm: CausalLM, tokens: list[int]):
    kv = lm.new_kv(1)
    lm.prefill(kv, [tokens])
    return kv


@pytest.fixture(scope="module", params=["dynamic", "arena"])
def target_lm(request, toy_pair):
    """The toy target on a `DynamicCache`, or in graph mode with eager static steps (small buckets: steps, growth and wide appends all occur)."""
    _, target = toy_pair
    if request.param == "dynamic":
        return target
    lm = CausalLM.load(target.path)
    lm.use_graphs(GraphConfig(capture=False, max_width=4, batch_buckets=(1, 2, 4), column_step=8))
    return lm


ops = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["append", "crop", "crop_rows"]), st.integers(0, 6)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt_lens=st.lists(st.integers(1, 9), min_size=1, max_size=4), script=ops, seed=st.integers(0, 10_000))
def test_crop_equals_rebuild(target_lm, prompt_lens, script, seed):
    lm = target_lm
    gen = torch.Generator().manual_seed(seed)
    rows = len(prompt_lens)
    transcripts = [torch.randint(2, 64, (n,), generator=gen).tolist() for n in prompt_lens]
    kv = lm.new_kv(rows)
    lm.prefill(kv, transcripts)
    for row, op, amount in script:
        row %= rows
        if op == "append":
            new = [torch.randint(2, 64, (amount,), generator=gen).tolist() if r == row else [] for r in range(rows)]
            lm.forward(kv, new, [0] * rows)
            transcripts[row] += new[row]
        elif op == "crop":
            keep = max(1, len(transcripts[row]) - amount)
            lm.crop(kv, row, keep)
            transcripts[row] = transcripts[row][:keep]
        else:  # every row after one batch, each by its own amount (the verifier's runner), one trim
            keeps = {r: max(1, len(transcripts[r]) - (amount + r) % 4) for r in range(rows)}
            lm.crop_rows(kv, keeps)
            transcripts = [t[: keeps[r]] for r, t in enumerate(transcripts)]
    for r in range(rows):
        assert kv.length(r) == len(transcripts[r])
        for (k, v), (k_ref, v_ref) in zip(_row_kv(lm, kv, r), _row_kv(lm, _rebuilt(lm, transcripts[r]), 0)):
            torch.testing.assert_close(k, k_ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=1e-4)
    # and the next-token logits agree with a fresh prefill
    probe = lm.forward(kv, [[5]] * rows)
    for r in range(rows):
        ref = lm.forward(_rebuilt(lm, transcripts[r]), [[5]])
        torch.testing.assert_close(probe[r], ref[0], atol=1e-4, rtol=1e-4)


def test_single_row_cache_has_no_holes_after_crops(target_lm):
    lm = target_lm
    kv = lm.new_kv(1)
    lm.prefill(kv, [[3, 4, 5, 6, 7]])
    lm.forward(kv, [[8, 9, 10]])
    lm.crop(kv, 0, 6)
    assert kv.columns == 6 and bool(kv.valid.all())


def test_crop_beyond_length_rejected(toy_pair):
    _, lm = toy_pair
    kv = lm.new_kv(1)
    lm.prefill(kv, [[3, 4]])
    with pytest.raises(ValueError, match="crop"):
        lm.crop(kv, 0, 5)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        CausalLM.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        CausalLM.load(tmp_path / "empty")
