"""Sampling transforms define p exactly: temperature, top-k, top-p, greedy; top-K sparsification."""

import pytest
import torch

from edgespec.spec.sampling import GREEDY, SamplingParams, probs_from_logits, sparsify_topk


def test_temperature_one_is_softmax():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(probs_from_logits(logits, SamplingParams()), torch.softmax(logits, -1))


def test_temperature_scales_logits():
    logits = torch.randn(2, 7, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(probs_from_logits(logits, SamplingParams(temperature=0.5)), torch.softmax(logits / 0.5, -1))


def test_greedy_is_one_hot_at_lowest_argmax():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert probs_from_logits(logits, GREEDY).tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 2.0, 1.0, 3.0, -1.0]])
    p = probs_from_logits(logits, SamplingParams(top_k=2))
    assert (p[0] > 0).tolist() == [False, True, False, True, False]
    assert p.sum().item() == pytest.approx(1.0)
    assert p[0, 3] / p[0, 1] == pytest.approx(torch.exp(torch.tensor(1.0)).item())


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    p = probs_from_logits(probs.log(), SamplingParams(top_p=0.8))
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    p = probs_from_logits(probs.log(), SamplingParams(top_p=0.81))
    assert (p > 0).sum().item() == 3
    p = probs_from_logits(probs.log(), SamplingParams(top_p=0.1))
    assert p.tolist() == [[1.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_sparsify_topk_renormalises():
    probs = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    ids, kept = sparsify_topk(probs, 2)
    assert ids.tolist() == [[0, 2]]
    assert kept[0].tolist() == pytest.approx([0.4 / 0.7, 0.3 / 0.7])
