"""Where the bundled draft/target pair lives inside the installed package, and a clear error when it is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

BUNDLE_DIR = Path(__file__).resolve().parent / "bundled"


def bundled_path(role: str) -> Path:
    """Directory of the bundled "draft" or "target" model."""
    if role not in ("draft", "target"):
        raise ValueError(f"role must be 'draft' or 'target', got {role!r}")
    path = BUNDLE_DIR / role
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"the bundled {role} model is missing at {path}; rebuild it with "
            "`python scripts/train_bundled_pair.py --out src/edgespec/models/bundled`"
        )
    return path


def train_report() -> Optional[dict]:
    """The bundled pair's training report (sizes, losses, time), if present."""
    path = BUNDLE_DIR / "train_report.json"
    return json.loads(path.read_text()) if path.exists() else None
