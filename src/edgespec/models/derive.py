"""Derive a smaller draft model from an existing one by keeping its first layers (a second, cheaper drafter for heterogeneous setups)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from edgespec.models.card import CARD_FILE


def truncate_layers(src: str | Path, out: str | Path, layers: int) -> Path:
    """Write a copy of the causal LM in `src` that keeps only its first `layers` decoder layers (same tokenizer and edgespec.json)."""
    src, out = Path(src), Path(out)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True)
    total = model.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be between 1 and {total}, got {layers}")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.half().save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(out)
    if (src / CARD_FILE).exists():  # run dtype and head vocabulary carry over
        shutil.copy2(src / CARD_FILE, out / CARD_FILE)
    return out
