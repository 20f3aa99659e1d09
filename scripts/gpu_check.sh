#!/usr/bin/env bash
# The GPU check (docs/gpu.md): on a machine with one NVIDIA GPU, Python 3.12, torch and transformers, in at most
# 8 minutes: the CUDA tests (runtime, CUDA graphs ≡ eager, greedy SD ≡ AD on the bundled pair, chi-square of sampled
# joint tokens on CUDA, `edgespec serve --device cuda` + two CPU drafter nodes over HTTP ≡ AD), t_forward profiles of
# the bundled target and 1B/7B Llama shapes (benchmarks/gpu_forward.py), `edgespec bench sd-vs-ad` on the GPU with
# and without CUDA graphs, and `edgespec profile --device cuda --quick`. Everything lands under $OUT (default
# ./gpu_out): logs/, profiles/, pytest.xml, env.json, stages.jsonl; the last lines are a table and one JSON object.
#
#   scripts/gpu_check.sh                 # on the GPU machine (.whl/ from scripts/fetch_gpu_wheels.sh next to it)
#   scripts/gpu_check.sh --cpu-smoke     # here: the same stages on the CPU with tiny shapes (CUDA tests skip)
# Exit status 0 when every stage passed. PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
SMOKE=0
[[ "${1:-}" == "--cpu-smoke" || "${EDGESPEC_GPU_CHECK_SMOKE:-0}" == "1" ]] && SMOKE=1
PY="${PYTHON:-python3}"
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT/logs" "$OUT/profiles"
OUT="$(cd "$OUT" && pwd)"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"   # stages end by then; install and summary take the rest of the 8 minutes
START_S=$(date +%s)
: > "$OUT/stages.jsonl"

# 0. dependencies: the shipped wheels this machine lacks go to /tmp/site; the project runs from src/
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" scripts/gpu_check.py install-wheels .whl /tmp/site || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="$ROOT/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

stage() {  # stage NAME LIMIT_S CMD...: run within the budget, log to $OUT/logs/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START_S) ))
  if (( left < 20 )); then
    echo "{\"stage\": \"$name\", \"rc\": -1, \"wall_s\": 0}" >> "$OUT/stages.jsonl"
    echo "--- $name: skipped (the check's time is spent)"
    return
  fi
  (( limit > left )) && limit=$left
  echo "--- $name (at most ${limit} s)"
  local t0=$(date +%s)
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"wall_s\": $(( $(date +%s) - t0 ))}" >> "$OUT/stages.jsonl"
  echo "    rc $rc in $(( $(date +%s) - t0 )) s; $("$PY" scripts/gpu_check.py last-line "$OUT/logs/$name.log")"
}

if (( SMOKE )); then
  MARK="gpu or slow"; DEV=cpu; SMOKE_FLAG=(--smoke); FWD=(--cpu-smoke)
  BENCH=(--device cpu --gammas 4 --max-tokens 8 --repeats 3); GRAPHS=(); EAGER=(); PROFILE=cpu_bundled_pair_quick.json; BENCH_S=150
else
  MARK="gpu"; DEV=cuda; SMOKE_FLAG=(); FWD=()
  BENCH=(--device cuda --gammas 2,3,4,5,6 --max-tokens 64 --repeats 6); GRAPHS=(--cuda-graphs); EAGER=(--no-cuda-graphs)
  PROFILE=gpu_bundled_pair_quick.json; BENCH_S=90
fi

stage preflight 60 "$PY" scripts/gpu_check.py preflight "$OUT" "${SMOKE_FLAG[@]}"
if [[ "$(tail -n 1 "$OUT/stages.jsonl")" != *'"rc": 0,'* ]]; then
  cat "$OUT/logs/preflight.log"
  "$PY" scripts/gpu_check.py summary "$OUT" "${SMOKE_FLAG[@]}" 2>/dev/null || true
  exit 1
fi
stage tests 240 "$PY" -m pytest -p no:xdist -p no:cacheprovider -q -m "$MARK" --junitxml="$OUT/pytest.xml" \
  tests/models/test_cuda.py tests/models/test_lossless_sampling.py tests/server/test_device_serving.py
stage forward 200 "$PY" benchmarks/gpu_forward.py --out "$OUT/profiles" "${FWD[@]}"
stage bench_graphs "$BENCH_S" "$PY" -m edgespec.cli bench sd-vs-ad "${BENCH[@]}" "${GRAPHS[@]}" --json
if (( ! SMOKE )); then
  stage bench_eager "$BENCH_S" "$PY" -m edgespec.cli bench sd-vs-ad "${BENCH[@]}" "${EAGER[@]}" --json
fi
stage profile 60 "$PY" -m edgespec.cli profile --quick --device "$DEV" --out "$OUT/profiles/$PROFILE" --json

echo "--- done in $(( $(date +%s) - START_S )) s; logs in $OUT/logs"
"$PY" scripts/gpu_check.py summary "$OUT" "${SMOKE_FLAG[@]}"
