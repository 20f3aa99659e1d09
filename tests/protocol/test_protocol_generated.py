"""The committed generated code is exactly what protoc makes from edgespec.proto (no hand edits, no stale copy)."""

import subprocess
import sys
from pathlib import Path

import pytest

import edgespec.protocol

SRC = Path(edgespec.protocol.__file__).resolve().parents[2]  # .../src
PROTO = "edgespec/protocol/edgespec.proto"
REGENERATE = f"python -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src src/{PROTO}"


def test_generated_code_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the test extra) regenerates edgespec_pb2.py")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{SRC}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", str(SRC / PROTO)]
    subprocess.run(cmd, check=True, capture_output=True)
    for name in ("edgespec_pb2.py", "edgespec_pb2.pyi"):
        fresh = (tmp_path / "edgespec" / "protocol" / name).read_bytes()
        committed = (SRC / "edgespec" / "protocol" / name).read_bytes()
        assert fresh == committed, f"{name} is stale or edited; regenerate from the repository root with: {REGENERATE}"
