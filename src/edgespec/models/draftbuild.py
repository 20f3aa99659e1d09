"""Assemble a draft model directory from its target's embeddings and a small file of distilled layers (what `edgespec models fetch` ships and builds).

A layer-truncated draft shares the target's token embeddings and (tied) output head, which are most
of its parameters (SmolLM2: 28 M of the 35 M of a 4-layer draft). So the package ships only what
distillation changed — the decoder layers and the final norm — and this module puts the draft together
on the user's machine from the converted target:

    model.safetensors = target's model.embed_tokens.weight + shipped model.layers.{i}.* + model.norm.weight
    config.json       = target's config with num_hidden_layers = N
    tokenizer files   = the target's (so the pair shares its tokenizer by construction)
    edgespec.json     = the run dtype on CPU and the head's sub-vocabulary (edgespec.models.card)

The recipe (`draft.json` beside the layers) names N, the dtype, the head's token ids and hashes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from edgespec.models.card import ModelCard, write_card
from edgespec.models.device import DTYPES

__all__ = ["EMBED_KEY", "TOKENIZER_FILES", "assemble_draft", "layer_tensors"]

EMBED_KEY = "model.embed_tokens.weight"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "generation_config.json")


def layer_tensors(state: dict[str, torch.Tensor], layers: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors a shipped layers file holds: decoder layers 0..layers-1 and the final norm, contiguous in `dtype`."""
    keep = {f"model.layers.{i}." for i in range(layers)}
    out = {k: v.detach().to(dtype).contiguous() for k, v in state.items() if any(k.startswith(p) for p in keep) or k == "model.norm.weight"}
    if "model.norm.weight" not in out or len(out) < 2:
        raise ValueError("the state dict lacks decoder layers or the final norm")
    return out


def _target_embeddings(target_dir: Path) -> torch.Tensor:
    for file in sorted(target_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if EMBED_KEY in f.keys():
                return f.get_tensor(EMBED_KEY)
    raise ValueError(f"{target_dir} has no {EMBED_KEY}")


def assemble_draft(target_dir: Path, layers_file: Path, recipe: dict, out: Path) -> Path:
    """Write the draft described by `recipe` into `out` (an empty folder) from `target_dir` and `layers_file`."""
    dtype = DTYPES[recipe.get("storage_dtype", "bfloat16")]
    tensors = load_file(str(layers_file))
    tensors[EMBED_KEY] = _target_embeddings(target_dir).to(dtype).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = AutoConfig.from_pretrained(target_dir, local_files_only=True)
    config.num_hidden_layers = int(recipe["layers"])
    config.tie_word_embeddings = True
    config.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (target_dir / name).exists():
            shutil.copy2(target_dir / name, out / name)
    ids = recipe.get("head_token_ids")
    write_card(out, ModelCard(cpu_dtype=recipe.get("cpu_dtype"), head_token_ids=tuple(ids) if ids else None))
    return out
