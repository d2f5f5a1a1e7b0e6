#!/usr/bin/env bash
# Score ablation arms on Set5, Set14 and Urban100 (PSNR-Y/SSIM-Y, `srkd eval`), one JSON per arm.
#
#   research/ablation_eval.sh SCALE RUN_DIR...      -> logs/eval/<run>-x<SCALE>.json
#
# Each arm is scored with the EMA weights its state.pt holds at its last step (the same step for
# every arm: no choice by validation score), exported by scripts/export_state.py.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?scale}; shift
SRKD=${SRKD:-.venv/bin/srkd}
B=../shared/data/benchmark
mkdir -p logs/eval runs/exports
for RUN in "$@"; do
  name=$(basename "$RUN")
  w=runs/exports/$name.safetensors
  .venv/bin/python scripts/export_state.py "$RUN/state.pt" "$w"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $SRKD eval --weights "$w" --data tests/data/Set5 --data $B/Set14 --data $B/Urban100 \
    --scale "$S" --backend torch --json "logs/eval/$name-x$S.json"
done
