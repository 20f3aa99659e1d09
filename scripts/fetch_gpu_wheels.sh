#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels scripts/gpu_check.sh needs on a bare GPU machine that has
# Python 3.12, torch and transformers (and with them numpy, safetensors, tokenizers) but nothing else:
# edgespec's other runtime dependencies and the test tools, each pinned to the version this repository's
# venv was tested with, for CPython 3.12 on x86-64 Linux. `--no-deps`: the list below is the closure of their
# Requires-Dist (minus what torch/transformers bring). See docs/gpu.md.
#
#   scripts/fetch_gpu_wheels.sh [DEST]        # DEST defaults to .whl
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
PY="${PYTHON:-python3}"

# name==version   # needed by
WHEELS=(
  scipy==1.17.1             # chi-square of the losslessness tests (numpy: from transformers)
  typer==0.29.2             # the CLI (serve, edge, bench, profile)
  pydantic==2.14.4          # typer
  pydantic-core==2.50.5     # pydantic
  annotated-types==0.8.0    # pydantic
  typing-inspection==0.4.5  # pydantic
  typing-extensions==4.16.0 # pydantic (>= 4.16: newer than torch may bring)
  annotated-doc==0.0.7      # typer
  shellingham==1.5.4        # typer
  click==8.5.1              # uvicorn
  rich==15.0.0              # tables
  markdown-it-py==4.3.0     # rich
  mdurl==0.1.2              # markdown-it-py
  pygments==2.21.0          # rich, pytest
  protobuf==7.36.2          # the wire protocol
  websockets==17.4          # verifier <-> drafter transport
  prometheus-client==0.26.0 # verifier metrics
  starlette==1.10.0         # drafter's OpenAI-compatible API
  anyio==4.16.0             # starlette
  idna==3.20                # anyio
  uvicorn==0.55.0           # drafter's HTTP server
  h11==0.16.0               # uvicorn
  pytest==9.2.0             # the CUDA tests
  iniconfig==2.3.1          # pytest
  pluggy==1.7.0             # pytest
  packaging==26.4           # pytest
  hypothesis==6.170.17      # property tests (collected with the suite)
  sortedcontainers==2.4.0   # hypothesis
)

mkdir -p "$DEST"
for spec in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$spec"
done
count=$(ls "$DEST"/*.whl | wc -l)
echo "$count wheels in $DEST ($(du -sh "$DEST" | cut -f1)); copy the repository with $DEST/ to the GPU machine and run scripts/gpu_check.sh"
