"""The bundled pair ships inside the package, fits the size budget, shares a tokenizer, and decodes losslessly."""

import pytest

from edgespec.api import SpeculativeDecoder
from edgespec.models.bundle import BUNDLE_DIR, bundled_path, train_report


@pytest.fixture(scope="module")
def bundled():
    return SpeculativeDecoder.bundled()


def test_weights_within_budget():
    total = sum(f.stat().st_size for f in BUNDLE_DIR.glob("*/*.safetensors"))
    assert 0 < total <= 60 * 1024 * 1024


def test_report_records_training():
    report = train_report()
    for key in ("seed", "target_params", "draft_params", "train_time_s", "target_val_loss", "draft_val_loss"):
        assert key in report
    assert report["draft_params"] * 8 < report["target_params"]


def test_pair_shares_tokenizer_and_round_trips_text(bundled):
    text = "def f(x):\n    return {'a': x ** 2}  # ünïcode\n"
    assert bundled.target.detokenize(bundled.target.tokenize(text)) == text
    assert bundled.draft.tokenizer.get_vocab() == bundled.target.tokenizer.get_vocab()


def test_detokenize_is_the_tokenizers_own_decode(bundled):
    """`detokenize` skips transformers' Python wrapper where that wrapper only calls the Rust decode: same text, specials dropped."""
    import random

    rng = random.Random(0)
    tok = bundled.target.tokenizer
    specials = [i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None]
    for _ in range(200):
        ids = [rng.randrange(bundled.target.vocab_size) for _ in range(rng.randrange(0, 12))] + rng.sample(specials, k=min(1, len(specials)))
        rng.shuffle(ids)
        assert bundled.target.detokenize(ids) == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("prompt", ["import os\n", "class Stack:\n    def push(self, item):\n", "    for key, value in "])
def test_bundled_greedy_sd_equals_ad(bundled, prompt):
    sd = bundled.generate(prompt, max_new_tokens=40, gamma=5, stop_at_eos=False)
    ad = bundled.generate(prompt, mode="ad", max_new_tokens=40, stop_at_eos=False)
    assert sd.token_ids == ad.token_ids
    assert sd.acceptance_rate > 0.3  # a trained pair, not two random models


def test_bundled_path_rejects_unknown_role():
    with pytest.raises(ValueError):
        bundled_path("verifier")
