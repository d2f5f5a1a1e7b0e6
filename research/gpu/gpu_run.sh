#!/usr/bin/env bash
# The GPU session in one line for the device tool: unbuffered output (so the tool's output tail
# is current) and the device's python3; every argument goes to research/gpu/gpu_run.py.
#   bash research/gpu/gpu_run.sh --minutes 9.2 --out "$OUT"
#   bash research/gpu/gpu_run.sh --resume runs/p2 --call-minutes 9.2 --out "$OUT"   (paper 2, sessions 2, 3, ...)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" research/gpu/gpu_run.py "$@"
