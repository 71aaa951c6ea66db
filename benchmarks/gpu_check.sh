#!/usr/bin/env bash
# The prepared GPU check (issue 12): on one CUDA GPU, in under 8 minutes,
#   1. the CUDA unit tests (every test that runs only where CUDA is),
#   2. benchmarks/gpu_check.py: losses on CUDA vs the CPU and their cost over BCE, ResNet-50 at 224
#      under bf16 + channels-last (eager and compiled), full-pipeline vs model-only throughput, and
#      `dbloss train` end to end on the device.
# Usage: bash benchmarks/gpu_check.sh [extra gpu_check.py options]; figures go to runs/gpu_check/.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p runs/gpu_check
status=0
echo "== CUDA unit tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -k "cuda" tests 2>&1 | tail -15 || status=1
echo "== gpu_check.py"
timeout 330 "$PY" benchmarks/gpu_check.py --json runs/gpu_check/summary.json "$@" 2>&1 | tee runs/gpu_check/log.txt
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
