"""KV row surgery: a forward on a subset of rows taken out and put back matches a forward over the whole cache, and rows grow and shrink."""

import copy

import pytest
import torch

from edgespec.models.runtime import put_rows, resize_rows, take_rows


def _filled(target, prompts):
    kv = target.new_kv(len(prompts))
    target.prefill(kv, prompts)
    return kv


def test_subset_forward_matches_full_forward(toy_pair):
    _, target = toy_pair
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11, 12], [13]]
    full = _filled(target, prompts)
    target.crop(full, 2, 3)  # holes, as verification leaves them
    part = copy.deepcopy(full)
    feeds = {1: [20, 21, 22], 3: [30]}
    want = target.forward(full, [feeds.get(r, []) for r in range(4)], [len(feeds.get(r, [])) for r in range(4)])
    sub = take_rows(target, part, [1, 3])
    got = target.forward(sub, [feeds[1], feeds[3]], [3, 1])
    part = put_rows(target, part, sub, [1, 3])
    torch.testing.assert_close(got, want)
    assert part.lengths.tolist() == full.lengths.tolist() == [3, 5, 3, 2]
    # the merged cache goes on exactly like the untouched one
    nxt = [[40], [41], [42], [43]]
    torch.testing.assert_close(target.forward(part, nxt), target.forward(full, nxt))


def test_rows_grow_and_shrink(toy_pair):
    _, target = toy_pair
    kv = resize_rows(target, target.new_kv(0), 2)
    target.prefill(kv, [[3, 4], [5]])
    kv = resize_rows(target, kv, 4)
    assert kv.batch_size == 4 and kv.lengths.tolist() == [2, 1, 0, 0]
    logits = target.forward(kv, [[], [], [7, 8], [9]], [0, 0, 2, 1])
    ref = target.new_kv(2)
    torch.testing.assert_close(logits, target.forward(ref, [[7, 8], [9]], [2, 1]))
    target.crop(kv, 2, 0)
    target.crop(kv, 3, 0)
    kv = resize_rows(target, kv, 2)
    assert kv.batch_size == 2 and kv.lengths.tolist() == [2, 1]
    with pytest.raises(ValueError, match="still hold tokens"):
        resize_rows(target, kv, 1)
    target.crop(kv, 0, 0)
    target.crop(kv, 1, 0)
    assert resize_rows(target, kv, 0).batch_size == 0
