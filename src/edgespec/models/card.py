"""`edgespec.json`: the runtime settings a model directory may carry beside its transformers files (CPU dtype, a sub-vocabulary head).

    {"format": "edgespec-model/1", "cpu_dtype": "bfloat16", "head_token_ids": [0, 1, 2, ...]}

- `cpu_dtype`: the dtype edgespec runs the model in on a CPU unless the caller names one (chosen
  by measurement; absent: float32).
- `head_token_ids`: the model's output head covers only these tokens (`SubVocabHead`); q is zero
  elsewhere. The weights on disk stay a complete transformers model, so any other tool loads it.
Unknown keys are refused, so a typo cannot silently change how a model runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from edgespec.models.device import DTYPES

__all__ = ["CARD_FILE", "ModelCard", "read_card", "write_card"]

CARD_FILE = "edgespec.json"
FORMAT = "edgespec-model/1"


@dataclass(frozen=True)
class ModelCard:
    """What `edgespec.json` says (defaults when the file is absent)."""

    cpu_dtype: Optional[str] = None
    head_token_ids: Optional[tuple[int, ...]] = None

    def dtype(self, device: str | torch.device) -> torch.dtype:
        """The dtype to run in on `device` when the caller names none: the card's choice on a CPU, float32 otherwise."""
        if self.cpu_dtype is not None and torch.device(device).type == "cpu":
            return DTYPES[self.cpu_dtype]
        return torch.float32


def read_card(model_dir: Path) -> ModelCard:
    """The card of a model directory; ValueError naming the key when it is malformed."""
    path = Path(model_dir) / CARD_FILE
    if not path.exists():
        return ModelCard()
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path}: 'format' must be {FORMAT!r}")
    unknown = set(raw) - {"format", "cpu_dtype", "head_token_ids"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
    dtype = raw.get("cpu_dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"{path}: 'cpu_dtype' must be one of {sorted(DTYPES)}, got {dtype!r}")
    ids = raw.get("head_token_ids")
    if ids is not None and (not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise ValueError(f"{path}: 'head_token_ids' must be a non-empty list of token ids")
    return ModelCard(dtype, tuple(ids) if ids is not None else None)


def write_card(model_dir: Path, card: ModelCard) -> Path:
    body = {"format": FORMAT}
    if card.cpu_dtype is not None:
        body["cpu_dtype"] = card.cpu_dtype
    if card.head_token_ids is not None:
        body["head_token_ids"] = list(card.head_token_ids)
    path = Path(model_dir) / CARD_FILE
    path.write_text(json.dumps(body) + "\n")
    return path
