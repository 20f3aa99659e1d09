#!/usr/bin/env python3
"""Helpers of scripts/gpu_check.sh: install the shipped wheels a bare machine lacks, check the environment, and summarise every stage into a table and one JSON line.

  gpu_check.py install-wheels WHEEL_DIR TARGET   # stdlib only: runs before any dependency is there
  gpu_check.py preflight OUT [--smoke]
  gpu_check.py summary OUT [--smoke]
  gpu_check.py last-line LOG                     # the log's last line of text (not a table, not JSON), for progress
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

MODULES = ["torch", "transformers", "safetensors", "tokenizers", "numpy", "scipy", "typer", "rich", "google.protobuf", "websockets",
           "prometheus_client", "starlette", "uvicorn", "pytest"]


# ---------------------------------------------------------------- wheels


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", version))


def install_wheels(wheel_dir: Path, target: Path) -> int:
    """pip-install into `target` each wheel whose distribution is missing here or older than the wheel (never torch's own)."""
    from importlib.metadata import PackageNotFoundError, version

    chosen, kept = [], []
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, wheel_version = wheel.name.split("-")[:2]
        try:
            have = version(name.replace("_", "-"))
        except PackageNotFoundError:
            have = None
        if have is None or _version_key(have) < _version_key(wheel_version):
            chosen.append(wheel)
        else:
            kept.append(f"{name} {have}")
    print(f"wheels: installing {len(chosen)} into {target}; already here: {', '.join(kept) or 'none'}", flush=True)
    if not chosen:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
           "--target", str(target), *map(str, chosen)]
    return subprocess.call(cmd)


# ---------------------------------------------------------------- environment


def preflight(out: Path, smoke: bool) -> int:
    """Every module the check imports, the versions, and the GPU; non-zero when something is missing."""
    import importlib

    env, missing = {"python": sys.version.split()[0]}, []
    for mod in MODULES:
        try:
            m = importlib.import_module(mod)
            env[mod] = getattr(m, "__version__", "?")
        except Exception as exc:  # a broken install is as fatal as a missing one
            missing.append(f"{mod} ({type(exc).__name__}: {exc})")
    if "torch" in env:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    print(json.dumps(env))
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        return 1
    if not smoke and not env.get("cuda_available"):
        print("torch sees no CUDA GPU: run with --cpu-smoke to check the script on a CPU", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- summary


def _last_json(path: Path):
    try:
        lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, json.JSONDecodeError):
        return None


def _pytest_counts(xml_path: Path) -> dict:
    """Per test file: passed, failed, skipped; and the names of failed tests."""
    out: dict = {}
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return out
    for case in root.iter("testcase"):
        file = case.get("classname", "?").replace(".", "/") + ".py"
        row = out.setdefault(file, {"passed": 0, "failed": 0, "skipped": 0, "failures": []})
        if case.find("failure") is not None or case.find("error") is not None:
            row["failed"] += 1
            row["failures"].append(case.get("name"))
        elif case.find("skipped") is not None:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    return out


def _figures(out: Path) -> dict:
    figures: dict = {}
    fwd = _last_json(out / "logs" / "forward.log")
    if fwd:
        figures["profiles"] = [f for m in fwd["models"].values() for f in m["files"]]
        ctx = str(fwd["contexts"][0])
        for name, m in fwd["models"].items():
            figures[f"{name}_verify5_over_decode_ctx{ctx}"] = m["verify5_over_decode"].get(ctx, {})
        figures["llama7b_verify5_over_decode_batch32"] = fwd.get("llama7b_verify5_over_decode_batch32")
    for mode in ("graphs", "eager"):
        bench = _last_json(out / "logs" / f"bench_{mode}.log")
        if bench:
            rows = {r["gamma"]: r for r in bench["rows"]}
            best = rows[bench["best_gamma"]]
            figures[f"bundled_sd_vs_ad_{mode}"] = {"best_gamma": bench["best_gamma"], "speedup": bench["best_speedup"],
                                                   "ad_tokens_per_s": best["ad_tokens_per_s"], "sd_tokens_per_s": best["sd_tokens_per_s"],
                                                   "t_target_ms": round(best["t_target_s"] * 1e3, 3), "t_draft_ms": round(best["t_draft_s"] * 1e3, 3)}
    return figures


def summary(out: Path, smoke: bool) -> int:
    from rich.console import Console
    from rich.table import Table

    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines() if line.strip()]
    tests = _pytest_counts(out / "pytest.xml")
    figures = _figures(out)
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    table = Table(title=f"edgespec GPU check{' (CPU smoke run)' if smoke else ''}: {env.get('gpu', 'no GPU')}, torch {env.get('torch', '?')}")
    for col in ("stage", "result", "s", "detail"):
        table.add_column(col, justify="right" if col == "s" else "left")
    for st in stages:
        result = "skipped (time)" if st["rc"] == -1 else "pass" if st["rc"] == 0 else "timeout" if st["rc"] in (124, 130, 137) else f"FAIL (rc {st['rc']})"
        table.add_row(st["stage"], result, str(st["wall_s"]), _detail(st["stage"], tests, figures))
    console = Console(width=200, highlight=False)
    console.print(table)
    for file, row in tests.items():
        if row["failures"]:
            console.print(f"failed in {file}: {', '.join(row['failures'])}")
    ok = bool(stages) and all(st["rc"] == 0 for st in stages)
    print(json.dumps({"check": "gpu_check", "ok": ok, "smoke": smoke, "gpu": env.get("gpu"), "torch": env.get("torch"),
                      "stages": stages, "tests": tests, "figures": figures}))
    return 0 if ok else 1


def _detail(stage: str, tests: dict, figures: dict) -> str:
    if stage == "tests":
        return "; ".join(f"{Path(f).name}: {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped" for f, r in tests.items())
    if stage == "forward":
        ratio = figures.get("llama7b_verify5_over_decode_batch32")
        return f"{len(figures.get('profiles', []))} profiles" + (f"; 7B t(5)/t(1) at batch 32: {ratio}" if ratio else "")
    if stage.startswith("bench_"):
        b = figures.get(f"bundled_sd_vs_ad_{stage.removeprefix('bench_')}")
        return f"best γ {b['best_gamma']}: SD {b['speedup']:.2f}× AD ({b['ad_tokens_per_s']:.0f} → {b['sd_tokens_per_s']:.0f} tok/s)" if b else ""
    return ""


def last_line(log: Path) -> int:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    plain = [line.strip() for line in text if line.strip() and not line.startswith("{") and line.strip()[0] not in "│┃┏┡└┗╭╰━┌├"]
    print(plain[-1][:160] if plain else "")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "last-line":
        return last_line(Path(argv[1]))
    if len(argv) >= 3 and argv[0] == "install-wheels":
        return install_wheels(Path(argv[1]), Path(argv[2]))
    if len(argv) >= 2 and argv[0] in ("preflight", "summary"):
        smoke = "--smoke" in argv
        return (preflight if argv[0] == "preflight" else summary)(Path(argv[1]), smoke)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
