"""Graph mode on the CPU: the KV arena, its buckets and its static steps (run eagerly: capture itself needs CUDA, see test_cuda.py) give the plain path's results."""

import pytest
import torch

from edgespec.models.decoder import GenerationConfig, generate_ad, generate_sd
from edgespec.models.graphs import GraphConfig, StaticCache
from edgespec.models.runtime import CausalLM, put_rows, resize_rows, take_rows
from edgespec.spec.sampling import SamplingParams

EAGER_STEPS = GraphConfig(capture=False, max_width=6, batch_buckets=(1, 2, 4, 8), column_step=8)


def _arena_lm(path, cfg: GraphConfig = EAGER_STEPS) -> CausalLM:
    lm = CausalLM.load(path)
    lm.use_graphs(cfg)
    return lm


@pytest.fixture(scope="module")
def arena_pair(toy_pair):
    draft, target = toy_pair
    return _arena_lm(draft.path), _arena_lm(target.path)


def _prompts(seed: int, lengths):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("gamma", [1, 4, 7])
def test_greedy_sd_equals_ad_in_graph_mode(toy_pair, arena_pair, gamma):
    """Against the plain path's AD, with γ + 1 above max_width too (those verify steps run the eager forward on the arena)."""
    _, plain_target = toy_pair
    draft, target = arena_pair
    prompts = _prompts(gamma, (3, 11, 1, 6))
    cfg = GenerationConfig(max_new_tokens=24, gamma=gamma, stop_at_eos=False)
    reference = [r.token_ids for r in generate_ad(plain_target, prompts, cfg)]
    assert [r.token_ids for r in generate_ad(target, prompts, cfg)] == reference
    assert [r.token_ids for r in generate_sd(draft, target, prompts, cfg)] == reference


def test_sampled_sd_draws_the_same_tokens_in_graph_mode(toy_pair, arena_pair):
    cfg = GenerationConfig(max_new_tokens=16, gamma=3, sampling=SamplingParams(temperature=1.0), q_mode="topk", seed=4, stop_at_eos=False)
    prompts = _prompts(8, (4, 9))
    plain = [r.token_ids for r in generate_sd(*toy_pair, prompts, cfg)]
    assert [r.token_ids for r in generate_sd(*arena_pair, prompts, cfg)] == plain


def test_an_arena_serves_one_cache_at_a_time_and_is_reused(toy_pair):
    _, target = toy_pair
    lm = _arena_lm(target.path, GraphConfig(capture=False, max_arenas=2, batch_buckets=(1, 2, 4)))
    first = lm.new_kv(2)
    second = lm.new_kv(1)
    third = lm.new_kv(1)  # both arenas are taken: transformers' cache
    assert isinstance(first.cache, StaticCache) and isinstance(second.cache, StaticCache)
    assert not isinstance(third.cache, StaticCache)
    arena = first.cache.arena
    lm.prefill(first, [[3, 4, 5], [6, 7]])
    lm.forward(first, [[8], [9]])
    steps = dict(arena.steps)
    assert steps  # the decode step is kept for the next cache
    del first
    again = lm.new_kv(2)
    assert again.cache.arena is arena and arena.steps.keys() == steps.keys()
    out = lm.prefill(again, [[3, 4, 5], [6, 7]])
    torch.testing.assert_close(out, target.prefill(target.new_kv(2), [[3, 4, 5], [6, 7]]))


def test_growing_the_arena_keeps_the_cache_and_drops_the_steps(toy_pair):
    _, target = toy_pair
    lm = _arena_lm(target.path, GraphConfig(capture=False, batch_buckets=(1, 2), column_step=4))
    kv, ref = lm.new_kv(1), target.new_kv(1)
    tokens = list(range(2, 40))
    lm.prefill(kv, [tokens[:3]])
    target.prefill(ref, [tokens[:3]])
    arena = kv.cache.arena
    grown = arena.reallocations
    for t in tokens[3:]:  # every few columns the arena grows: steps are dropped and made again
        torch.testing.assert_close(lm.decode(kv, [t]), target.decode(ref, [t]), atol=1e-5, rtol=1e-5)
    assert arena.reallocations > grown
    assert arena.cols_cap >= len(tokens)


def test_steps_beyond_max_graphs_are_dropped_oldest_first(toy_pair):
    _, target = toy_pair
    lm = _arena_lm(target.path, GraphConfig(capture=False, max_graphs=2, batch_buckets=(1,), column_step=512))
    kv = lm.new_kv(1)
    lm.prefill(kv, [[3, 4]])
    for width in (1, 2, 3):
        lm.forward(kv, [list(range(5, 5 + width))])
    assert [key[1] for key in kv.cache.arena.steps] == [2, 3]


def test_row_surgery_on_an_arena_cache(toy_pair):
    """The verifier runner's operations: grow, take a subset out, extend it, put it back, shrink."""
    _, target = toy_pair
    lm = _arena_lm(target.path)
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
    kv, ref = lm.new_kv(3), target.new_kv(3)
    for m, cache in ((lm, kv), (target, ref)):
        m.prefill(cache, prompts)
    kv, ref = resize_rows(lm, kv, 5), resize_rows(target, ref, 5)
    for m, cache in ((lm, kv), (target, ref)):
        sub = take_rows(m, cache, [2, 0])
        m.forward(sub, [[12, 13], [14]])
        put_rows(m, cache, sub, [2, 0])
    assert isinstance(kv.cache, StaticCache) and kv.lengths.tolist() == ref.lengths.tolist() == [4, 2, 6, 0, 0]
    probe = [[5], [5], [5], [5], [5]]
    torch.testing.assert_close(lm.forward(kv, probe), target.forward(ref, probe), atol=1e-5, rtol=1e-5)
    for m, cache in ((lm, kv), (target, ref)):
        m.crop_rows(cache, {3: 0, 4: 0})
    kv, ref = resize_rows(lm, kv, 3), resize_rows(target, ref, 3)
    probe = [[6], [7], [8]]
    torch.testing.assert_close(lm.forward(kv, probe), target.forward(ref, probe), atol=1e-5, rtol=1e-5)


def test_rows_put_back_after_the_arena_grew_inside_a_forward(toy_pair):
    """The runner puts rows back outside inference mode, into buffers a forward (inference mode) allocated."""
    _, target = toy_pair
    lm = _arena_lm(target.path)
    kv, ref = lm.new_kv(4), target.new_kv(4)
    for m, cache in ((lm, kv), (target, ref)):
        m.prefill(cache, [[3, 4, 5], [6, 7], [8], [9, 10]])
        sub = take_rows(m, cache, [1])
        m.forward(sub, [[11, 12, 13]])
        put_rows(m, cache, sub, [1])
    probe = [[5]] * 4
    torch.testing.assert_close(lm.forward(kv, probe), target.forward(ref, probe), atol=1e-5, rtol=1e-5)


def test_batches_above_the_buckets_run_the_eager_forward(toy_pair):
    _, target = toy_pair
    lm = _arena_lm(target.path, GraphConfig(capture=False, batch_buckets=(1, 2)))
    kv, ref = lm.new_kv(3), target.new_kv(3)
    for m, cache in ((lm, kv), (target, ref)):
        m.prefill(cache, [[3, 4], [5], [6, 7, 8]])
    torch.testing.assert_close(lm.decode(kv, [1, 2, 3]), target.decode(ref, [1, 2, 3]), atol=1e-5, rtol=1e-5)
    assert not kv.cache.arena.steps


def test_graph_settings_are_checked(toy_pair, tmp_path):
    _, target = toy_pair
    lm = CausalLM.load(target.path)
    with pytest.raises(ValueError, match="CUDA device"):
        lm.use_graphs(GraphConfig())  # capture needs CUDA
    lm.fast_path = False
    with pytest.raises(ValueError, match="lean forward"):
        lm.use_graphs(GraphConfig(capture=False))
    with pytest.raises(ValueError, match="batch_buckets"):
        GraphConfig(batch_buckets=(4, 2))
    with pytest.raises(ValueError, match="CUDA"):
        CausalLM.load(target.path, cuda_graphs=True)
    assert CausalLM.load(target.path).graphs is None  # off on the CPU by default


def test_the_verifier_runner_in_graph_mode_gives_ad_output(toy_pair, arena_pair):
    from runner_helpers import greedy_through_runner

    _, plain_target = toy_pair
    _, target = arena_pair
    prompts = _prompts(21, (5, 2, 8))
    expected = [r.token_ids for r in generate_ad(plain_target, prompts, GenerationConfig(max_new_tokens=12, stop_at_eos=False))]
    assert greedy_through_runner(target, prompts, expected, 12) == expected
