#!/usr/bin/env bash
# Issue 30: EDSR-T, paper 1's teacher, trained on the CPU in bf16 (--precision auto).
#
#   research/edsr_t.sh SCALE [TIME_LIMIT_S]
#
# x2 from scratch (25k steps); x3 and x4 from x2's weights, the bundled edsr-t-x2 (--init copies the
# head and body, the upsampler is new), 10k steps each. Validated on a 10-image slice held out of
# the training images (--val-split), Set5 only as a monitor. Runs (or resumes) $RUNS/edsr-t-x{SCALE}; stopped by the
# time limit or Ctrl-C, rerun the same line to continue. One run at a time: it takes both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?scale}; LIMIT=${2:-}
SRKD=${SRKD:-.venv/bin/srkd}
RUNS=${RUNS:-runs}
case $S in
  2) STEPS=25000; INIT=() ;;
  3|4) STEPS=10000; INIT=(--init "${X2:-edsr-t-x2}") ;;  # the bundled x2 (or X2=FILE)
  *) echo "scale: 2, 3 or 4" >&2; exit 2 ;;
esac
T=()
[ -n "$LIMIT" ] && T=(--time-limit "$LIMIT")
source research/lib/runs.sh
$SRKD train --arch edsr-t --scale "$S" "${HELD_OUT[@]}" --out "$RUNS/edsr-t-x$S" --steps "$STEPS" --batch 16 --patch 48 \
  --lr 2e-4 --seed 1 --threads 2 --val-every 2500 --ckpt-every 500 --log-every 50 --resume "${INIT[@]}" "${T[@]}"
