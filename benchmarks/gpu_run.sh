#!/usr/bin/env bash
# On the lent GPU machine, from the repository's root (the device call carries .whl/, made here by
# benchmarks/device_wheels.sh): PyAV from the carried wheels, then benchmarks/gpu_all.py with the
# arguments given, under a time limit that leaves the call's own limit room (GPU_TIMEOUT, default
# 540 s). Figures go to $OUT/gpu_figures.json after every section.
#   benchmarks/gpu_run.sh --sections e2e,encode
#   benchmarks/gpu_run.sh --sections e2e --e2e-sizes 640x480 --no-e2e-extras   # about 2 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
exec timeout "${GPU_TIMEOUT:-540}" python3 benchmarks/gpu_all.py "$@"
