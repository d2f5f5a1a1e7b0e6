#!/usr/bin/env bash
# Issue 30 item 3: paper 1's experiment, SqueezeSR distilled from EDSR-T, as the paper ran it.
#
#   research/paper1_kd.sh SCALE ARM[,ARM...] [TIME_LIMIT_S]
#
# Several arms run one after another (a finished arm is skipped), sharing the time limit.
# From scratch (every arm the same steps, seed, schedule and patch stream):
#   l1    L1 only                       out   L1 + EDSR-T output KD (gamma 0.5)
#   feat  L1 + EDSR-T feature KD, T1..T3 <-> S1..S3 (paper 1's recipe)      both  feat + out
# Fine-tuning the bundled squeezesr-x{SCALE} (the same four, prefixed ft-), and ft-bsrn-out: BSRN
# as the output teacher beside EDSR-T.
# The teacher is $TEACHER (default: the bundled edsr-t-x{SCALE}, trained by research/edsr_t.sh). It
# runs on every patch (no cache: EDSR-T's features for the whole set would be 14-28 GB). Validated on
# the 10 held-out training images (--val-split), Set5 only as a monitor. Runs (or resumes)
# $RUNS/p1-x{SCALE}-{ARM}; rerun the same line to continue (STEPS=N overrides the steps: a smoke run).
# One run at a time: it takes both cores.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?scale}; ARMS=${2:?arm}; LIMIT=${3:-}
SRKD=${SRKD:-.venv/bin/srkd}
RUNS=${RUNS:-runs}
TEACHER=${TEACHER:-edsr-t-x$S}
case $S in 2|3|4) ;; *) echo "scale: 2, 3 or 4" >&2; exit 2 ;; esac
run_arm() {  # ARM [--time-limit S]
  local ARM=$1 N START CMD; shift
  case $ARM in
    l1|out|feat|both) N=${STEPS:-10000}; START=(--lr 1e-3) ;;
    ft-l1|ft-out|ft-feat|ft-both|ft-bsrn-out) N=${STEPS:-8000}; START=(--init "squeezesr-x$S" --lr 2e-4 --warmup 100) ;;
    *) echo "arm: l1 out feat both, or ft-l1 ft-out ft-feat ft-both ft-bsrn-out" >&2; return 2 ;;
  esac
  case ${ARM#ft-} in
    l1)       CMD=(train --arch squeezesr) ;;
    out)      CMD=(distill --student squeezesr --teacher "$TEACHER" --feat-weight 0 --out-weight 0.5) ;;
    feat)     CMD=(distill --student squeezesr --teacher "$TEACHER" --feat-weight 0.1 --out-weight 0) ;;
    both)     CMD=(distill --student squeezesr --teacher "$TEACHER" --feat-weight 0.1 --out-weight 0.5) ;;
    bsrn-out) CMD=(distill --student squeezesr --teacher "bsrn-x$S" --feat-weight 0 --out-weight 0.5) ;;
  esac
  $SRKD "${CMD[@]}" --scale "$S" "${HELD_OUT[@]}" \
    --out "$RUNS/p1-x$S-$ARM" --steps "$N" --batch 16 --patch 48 \
    --seed 1 --threads 2 --val-every 2000 --ckpt-every 500 --log-every 100 --resume "${START[@]}" "$@"
}

source research/lib/runs.sh
run_arms "$ARMS" "$LIMIT"
