#!/usr/bin/env bash
# The GPU session in one line for the device tool: unbuffered output (so the tool's output tail
# is current) and the device's python3; every argument goes to scripts/gpu_run.py.
#   bash scripts/gpu_run.sh --minutes 9.5 --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/gpu_run.py "$@"
