"""GGUF inputs: clear errors for files that cannot be used, and a conversion cache that is reused, never half-made."""

import json
import os
import subprocess
import sys

import pytest

from edgespec.models import gguf
from edgespec.models.runtime import CausalLM, ModelLoadError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty edgespec cache for this test only."""
    monkeypatch.setenv("EDGESPEC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _gguf_with_architecture(path, architecture: str):
    """A well-formed GGUF file (metadata only) that declares `architecture`."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_name("not a real model")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGESPEC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.models_cache() == tmp_path / "xdg" / "edgespec" / "models"
    monkeypatch.setenv("EDGESPEC_CACHE_DIR", str(tmp_path / "mine"))
    assert gguf.models_cache() == tmp_path / "mine" / "models"


def test_a_file_that_is_not_gguf_is_refused(tmp_path, cache):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file" * 10)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        CausalLM.load(bad)
    assert not any(cache.glob("models/*"))


def test_a_truncated_gguf_is_refused_as_corrupt(tmp_path, cache):
    whole = _gguf_with_architecture(tmp_path / "whole.gguf", "llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated GGUF"):
        CausalLM.load(cut)


def test_an_architecture_transformers_cannot_load_is_named(tmp_path, cache):
    path = _gguf_with_architecture(tmp_path / "odd.gguf", "notamodel")
    with pytest.raises(ModelLoadError, match="cannot load GGUF models of architecture 'notamodel'.*llama"):
        CausalLM.load(path)
    assert not [p for p in cache.glob("models/*") if not p.name.startswith(".")]  # nothing half-made is left
    assert not list(cache.glob("models/.*"))


def test_a_missing_gguf_package_names_the_extra(tmp_path, cache, monkeypatch):
    path = _gguf_with_architecture(tmp_path / "m.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if `gguf` were not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'edgespec\[gguf\]'"):
        CausalLM.load(path)


def test_a_directory_with_several_gguf_files_asks_for_one(tmp_path, cache):
    for name in ("a.gguf", "b.gguf"):
        _gguf_with_architecture(tmp_path / name, "llama")
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        CausalLM.load(tmp_path)


def test_a_directory_with_neither_config_nor_gguf_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ModelLoadError, match="needs config.json and \\*.safetensors, or a .gguf file"):
        CausalLM.load(tmp_path)


def test_the_cli_reports_a_bad_gguf_in_one_line(tmp_path, cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    proc = subprocess.run([sys.executable, "-m", "edgespec.cli", "generate", "--prompt", "x", "--mode", "ad", "--target", str(bad)],
                          capture_output=True, text=True, env={**os.environ, "EDGESPEC_CACHE_DIR": str(cache)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error:") and "broken.gguf" in proc.stderr and "GGUF" in proc.stderr


# ---------------------------------------------------------------------- conversion and its cache


def test_a_gguf_file_loads_like_transformers_loads_it_and_is_cached_once(tmp_path, cache):
    import torch
    from transformers import AutoModelForCausalLM

    from edgespec.models.toy import make_toy_gguf

    path = make_toy_gguf(tmp_path / "toy.gguf")
    lm = CausalLM.load(path)
    # the cache holds a plain transformers directory named after the file and its content hash
    assert lm.path == gguf.converted_dir(path, gguf.file_sha256(path)) and lm.path.parent == cache / "models"
    assert gguf.is_complete(lm.path) and not (lm.path / "config.json").read_text().count("quantization_config")
    record = json.loads((lm.path / gguf.SOURCE_FILE).read_text())
    assert record["architecture"] == "llama" and record["sha256"] == gguf.file_sha256(path)
    # same logits as transformers' own GGUF loading
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="toy.gguf", dtype=torch.float32).eval()
    ids = [2, 7, 3, 9, 4]
    kv = lm.new_kv(1)
    ours = lm.forward(kv, [ids])
    with torch.no_grad():
        theirs = ref(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # a second load, of the file or of its directory, reuses the conversion without rewriting it
    weights = next(lm.path.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert CausalLM.load(path).path == lm.path and CausalLM.load(tmp_path).path == lm.path
    assert weights.stat().st_mtime_ns == stamp
    assert [p.name for p in (cache / "models").iterdir()] == [lm.path.name]  # no staging folder left behind


def test_an_interrupted_conversion_is_redone(tmp_path, cache):
    from edgespec.models.toy import make_toy_gguf

    path = make_toy_gguf(tmp_path / "toy.gguf")
    dest = gguf.converted_dir(path, gguf.file_sha256(path))
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{}")  # a leftover without its source record
    assert not gguf.is_complete(dest)
    lm = CausalLM.load(path)
    assert lm.path == dest and gguf.is_complete(dest) and lm.vocab_size == 64
