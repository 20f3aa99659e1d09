"""GGUF model files as edgespec model inputs: a `.gguf` file is de-quantised once by transformers and cached as a transformers directory.

llama.cpp users hold their models as single `.gguf` files. `--target`/`--draft` (and
`CausalLM.load`, `SpeculativeDecoder.load`) accept such a file, or a directory holding exactly one,
as well as a transformers directory. The first use converts it: transformers reads the file
(`gguf_file=`, which needs the `gguf` package: `pip install edgespec[gguf]`), de-quantises every
tensor to float32 and the result is saved — safetensors, config, generation config, tokenizer with
its chat template — under the user's cache folder, named after the file and a hash of its content:

    $EDGESPEC_CACHE_DIR/models/<file stem>-<sha256[:12]>/      (default $XDG_CACHE_HOME/edgespec, ~/.cache/edgespec)

A conversion writes into a temporary folder beside its destination and renames it into place when
complete (`gguf_source.json` records the source), so an interrupted one leaves nothing half-made and
a later call converts again; a completed one is reused without reading the weights again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

__all__ = [
    "GGUFError", "cache_root", "models_cache", "is_gguf_file", "gguf_in_dir", "needs_conversion", "file_sha256",
    "converted_dir", "convert", "resolve_model_dir", "SOURCE_FILE",
]

GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "gguf_source.json"  # written last: its presence marks a complete conversion
Report = Callable[[str, int, int], None]  # (phase, done, total): see edgespec.progress


class GGUFError(ValueError):
    """A GGUF file that cannot be used: missing, corrupt, an architecture transformers cannot load, or the `gguf` package absent."""


# ---------------------------------------------------------------------- where things live


def cache_root() -> Path:
    """edgespec's cache folder: $EDGESPEC_CACHE_DIR, else $XDG_CACHE_HOME/edgespec, else ~/.cache/edgespec."""
    if os.environ.get("EDGESPEC_CACHE_DIR"):
        return Path(os.environ["EDGESPEC_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgespec"


def models_cache() -> Path:
    """Where converted models (and models built from them) are kept."""
    return cache_root() / "models"


# ---------------------------------------------------------------------- recognising GGUF inputs


def is_gguf_file(path: Path) -> bool:
    """True for a regular file named *.gguf or starting with the GGUF magic bytes."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def gguf_in_dir(path: Path) -> Optional[Path]:
    """The one .gguf file of a directory that is not a transformers directory (no config.json); None if it has none."""
    if (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise GGUFError(f"{path} holds several GGUF files ({names}); give the file itself")
    return found[0] if found else None


def needs_conversion(path: str | Path) -> Optional[Path]:
    """The GGUF file `path` names (a .gguf file or a directory holding one), or None for anything else."""
    path = Path(path).expanduser()
    if path.is_dir():
        return gguf_in_dir(path)
    return path if is_gguf_file(path) else None


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def converted_dir(gguf_path: Path, sha256: str) -> Path:
    """Cache folder of the conversion of `gguf_path` whose content hash is `sha256`."""
    return models_cache() / f"{gguf_path.stem}-{sha256[:12]}"


def is_complete(model_dir: Path) -> bool:
    return (model_dir / SOURCE_FILE).exists() and (model_dir / "config.json").exists() and any(model_dir.glob("*.safetensors"))


# ---------------------------------------------------------------------- checks before the heavy work


def _reader(gguf_path: Path):
    """A `gguf.GGUFReader` over the file, with clear errors for a missing package and a corrupt file."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise GGUFError(f"{gguf_path} is a GGUF file; reading GGUF needs the 'gguf' package: pip install 'edgespec[gguf]'") from None
    with gguf_path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{gguf_path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        return GGUFReader(gguf_path)
    except Exception as exc:  # noqa: BLE001 — the reader raises many kinds on a damaged file
        raise GGUFError(f"{gguf_path} is a corrupt or truncated GGUF file: {type(exc).__name__}: {exc}") from None


def _field(reader, key: str) -> Optional[str]:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else str(value)


def check_readable(gguf_path: Path) -> str:
    """The architecture a GGUF file declares, after checking that the file reads and what loading it needs is installed."""
    reader = _reader(gguf_path)
    architecture = _field(reader, "general.architecture")
    if architecture is None:
        raise GGUFError(f"{gguf_path} has no 'general.architecture' field; it is not a model GGUF file")
    try:
        import accelerate  # noqa: F401  (transformers needs it to load GGUF)
    except ImportError:
        raise GGUFError(f"loading {gguf_path} needs the 'accelerate' package: pip install 'edgespec[gguf]'") from None
    return architecture


def _unsupported(gguf_path: Path, architecture: str) -> GGUFError:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = ", ".join(sorted(GGUF_SUPPORTED_ARCHITECTURES))
    return GGUFError(f"{gguf_path}: transformers cannot load GGUF models of architecture {architecture!r} (it loads: {supported})")


# ---------------------------------------------------------------------- conversion


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temporary folder beside `dest`, removed on exit unless it was renamed to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dequantise_and_save(gguf_path: Path, architecture: str, out: Path) -> None:
    """Load the GGUF with transformers (de-quantised to float32) and save it as a plain transformers directory in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        if "not supported" in str(exc):
            raise _unsupported(gguf_path, architecture) from None
        raise GGUFError(f"transformers could not load {gguf_path}: {exc}") from None
    # the weights are now plain float32 tensors: drop the GGUF quantisation marker so they save as such
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def convert(gguf_path: str | Path, report: Optional[Report] = None) -> Path:
    """The cached transformers directory for a GGUF file, converting it on first use (idempotent).

    `report(phase, done, total)` follows the steps; by default a conversion draws rich progress bars on stderr.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise GGUFError(f"GGUF file not found: {gguf_path}")
    # 1. identify the content (a renamed copy maps to the same cache entry); a finished conversion is reused as it is
    sha256 = file_sha256(gguf_path)
    dest = converted_dir(gguf_path, sha256)
    if is_complete(dest):
        return dest
    if report is not None:
        return _convert(gguf_path, sha256, dest, report)
    from edgespec.progress import progress_bars

    with progress_bars() as bars:
        return _convert(gguf_path, sha256, dest, bars)


def _convert(gguf_path: Path, sha256: str, dest: Path, report: Report) -> Path:
    # 2. refuse a damaged file or missing packages before the heavy import
    architecture = check_readable(gguf_path)
    size_mb = round(gguf_path.stat().st_size / 1e6)
    phase = f"de-quantising {gguf_path.name[:40]} ({architecture}, {size_mb} MB)"
    report(phase, 0, 1)
    start = time.perf_counter()
    # 3. de-quantise and save into a staging folder; the source record goes last, then the folder is renamed into place
    with _staging(dest) as tmp:
        _dequantise_and_save(gguf_path, architecture, tmp)
        record = {"gguf_file": str(gguf_path), "gguf_bytes": gguf_path.stat().st_size, "sha256": sha256,
                  "architecture": architecture, "dtype": "float32", "converted_s": round(time.perf_counter() - start, 1)}
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if dest.exists():  # an incomplete leftover, or another process finished first
            if is_complete(dest):
                return dest
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    report(phase, 1, 1)
    return dest


def resolve_model_dir(path: str | Path, report: Optional[Report] = None) -> Path:
    """`path` itself for a transformers directory; the cached conversion for a .gguf file or a directory holding one."""
    gguf_path = needs_conversion(path)
    return convert(gguf_path, report) if gguf_path is not None else Path(path)
